package coordinator

import (
	"fmt"

	"github.com/idc-dev/idc/proto"
)

// Policy is topology determination: given the valid fault reports against
// members of the current epoch, it decides which members to drop. It must
// be a pure function of its arguments.
type Policy interface {
	// Drop returns the incarnations to drop, each with a reason for people.
	Drop(members []proto.Member, reports []proto.FaultReport) map[proto.Ref]string
}

// DropSuspect is the default policy: the suspect of a report is dropped;
// when two members report each other, the one of higher Priority stays
// (equal priorities: the smaller ID stays).
type DropSuspect struct{}

// Drop implements Policy.
func (DropSuspect) Drop(members []proto.Member, reports []proto.FaultReport) map[proto.Ref]string {
	out := map[proto.Ref]string{}
	reported := map[[2]string]bool{}
	for _, r := range reports {
		reported[[2]string{r.Reporter, r.Suspect}] = true
	}
	for _, r := range reports {
		sus, ok := proto.Find(members, r.Suspect)
		rep, isMember := proto.Find(members, r.Reporter)
		if !ok || !isMember {
			continue // only a member's report about a member counts (DESIGN §4)
		}
		if reported[[2]string{r.Suspect, r.Reporter}] {
			if outranks(sus, rep) {
				continue // the reporter loses this pair; its own report names it
			}
			out[sus.Ref()] = fmt.Sprintf("%s and %s reported each other; %s has lower priority", r.Reporter, r.Suspect, r.Suspect)
			continue
		}
		if _, dup := out[sus.Ref()]; !dup {
			out[sus.Ref()] = fmt.Sprintf("%s reported losing %s", r.Reporter, r.Suspect)
		}
	}
	return out
}

// outranks reports whether a stays when a and b report each other.
func outranks(a, b proto.Member) bool {
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	return a.ID < b.ID
}
