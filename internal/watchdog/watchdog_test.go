package watchdog

import "testing"

func TestCheck(t *testing.T) {
	for _, c := range []struct {
		heard     bool
		want      Verdict
		heardThen bool
	}{
		{heard: true, want: AskProgress, heardThen: false},
		{heard: false, want: Hung, heardThen: false},
	} {
		heard := c.heard
		if got := Check(&heard); got != c.want || heard != c.heardThen {
			t.Errorf("heard %v: Check = %v, heard then %v; want %v, heard then %v", c.heard, got, heard, c.want, c.heardThen)
		}
	}
}

// TestCheckSequence runs checks over a watch that delivers (true) or not
// (false) between them, starting heard as a new watch is.
func TestCheckSequence(t *testing.T) {
	for _, c := range []struct {
		name     string
		delivers []bool // between checks i-1 and i
		want     []Verdict
	}{
		{"live", []bool{true, true, true}, []Verdict{AskProgress, AskProgress, AskProgress}},
		{"silent from the start", []bool{false, false}, []Verdict{AskProgress, Hung}},
		{"falls silent", []bool{true, true, false}, []Verdict{AskProgress, AskProgress, Hung}},
	} {
		heard := true
		for i, d := range c.delivers {
			if d {
				heard = true
			}
			if got := Check(&heard); got != c.want[i] {
				t.Errorf("%s: check %d = %v, want %v", c.name, i, got, c.want[i])
			}
		}
	}
}
