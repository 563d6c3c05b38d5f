//go:build !idc_mutation

package mutation

// Enabled reports whether this build can switch mutations on.
const Enabled = false

// On reports whether variant k is switched on: never, in this build.
func On(Kind) bool { return false }

// Set is not available without the idc_mutation build tag.
func Set(k Kind) (restore func()) {
	panic("mutation: " + k.String() + " needs a build with -tags idc_mutation")
}
