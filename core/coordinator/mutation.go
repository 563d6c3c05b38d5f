package coordinator

// Mutation selects a deliberately broken variant of the machine. It exists
// for verification only: the deterministic simulator (package sim) runs
// each mutation and must catch it violating a guarantee, which shows that
// its checks can fail. Never set it outside such tests.
type Mutation int

const (
	// MutationNone is the correct machine.
	MutationNone Mutation = iota
	// MutationConnectEarly connects a quiescing epoch without waiting for
	// the survivors' quiesce acknowledgements (breaks G3).
	MutationConnectEarly
	// MutationTrustStoreExpiry counts a departed member stopped as soon as
	// the store says its lease is gone, instead of TTL·(1+ρ)+margin after
	// the coordinator saw it gone (breaks G4 when the store revokes early
	// or the member's clock runs slow).
	MutationTrustStoreExpiry
)

func (m Mutation) String() string {
	switch m {
	case MutationNone:
		return "none"
	case MutationConnectEarly:
		return "connect-early"
	case MutationTrustStoreExpiry:
		return "trust-store-expiry"
	}
	return "Mutation(?)"
}
