package idc

// Crash stops d as if its process had died: no leave marker, no lease
// revocation, no fence; its lease simply stops being renewed. For tests.
func Crash(d *Membership) {
	d.d.Crash()
	d.st.release()
}
