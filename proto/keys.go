package proto

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// DefaultPrefix is the key prefix under which idc keeps everything.
const DefaultPrefix = "/idc"

// Kinds of keys under a group (the path element after the group name).
const (
	KindEpoch     = "epoch"
	KindMembers   = "members"
	KindAcks      = "acks"
	KindFaults    = "faults"
	KindLeft      = "left"
	KindResources = "resources"
	KindFenceAcks = "fenceacks"
	KindConfig    = "config"
)

// ErrBadName is returned for a group, domain or resource name that idc
// cannot use as a key element.
var ErrBadName = errors.New("bad name")

// MaxNameLen bounds group, domain and resource names.
const MaxNameLen = 128

// CheckName validates a group, domain or resource name: 1 to MaxNameLen
// characters from [A-Za-z0-9._-], not starting with a dot.
func CheckName(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: %s is empty", ErrBadName, what)
	}
	if len(s) > MaxNameLen {
		return fmt.Errorf("%w: %s %q is longer than %d bytes", ErrBadName, what, s[:16]+"…", MaxNameLen)
	}
	if s[0] == '.' {
		return fmt.Errorf("%w: %s %q starts with a dot", ErrBadName, what, s)
	}
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("%w: %s %q has %q; use letters, digits, '.', '_' and '-'", ErrBadName, what, s, c)
		}
	}
	return nil
}

// Keys lays out idc's records under a prefix. The zero value uses
// DefaultPrefix.
//
//	<prefix>/groups/<group>/epoch                         EpochRecord (CAS)
//	<prefix>/groups/<group>/members/<domain>              Member (member's lease)
//	<prefix>/groups/<group>/acks/<epoch>/<domain>         Ack (member's lease)
//	<prefix>/groups/<group>/faults/<epoch>/<rep>/<sus>    FaultReport (reporter's lease)
//	<prefix>/groups/<group>/left/<domain>                 Left
//	<prefix>/groups/<group>/config                        GroupConfig
//	<prefix>/groups/<group>/resources/<name>              Resource
//	<prefix>/groups/<group>/fenceacks/<epoch>/<name>      FenceAck
//	<prefix>/election/                                    coordinator election
//
// Epoch numbers in keys are zero-padded to 20 digits so that key order is
// numeric order and "every epoch before n" is one key range.
type Keys struct {
	Prefix string
}

func (k Keys) prefix() string {
	if k.Prefix == "" {
		return DefaultPrefix
	}
	return strings.TrimSuffix(k.Prefix, "/")
}

// Groups is the prefix of every group's keys.
func (k Keys) Groups() string { return k.prefix() + "/groups/" }

// Group is the prefix of one group's keys.
func (k Keys) Group(g string) string { return k.Groups() + g + "/" }

// Epoch is the key of a group's epoch record.
func (k Keys) Epoch(g string) string { return k.Group(g) + KindEpoch }

// Members is the prefix of a group's member records.
func (k Keys) Members(g string) string { return k.Group(g) + KindMembers + "/" }

// Member is the key of one member record.
func (k Keys) Member(g, id string) string { return k.Members(g) + id }

// Acks is the prefix of a group's quiesce acknowledgements.
func (k Keys) Acks(g string) string { return k.Group(g) + KindAcks + "/" }

// Ack is the key of one quiesce acknowledgement.
func (k Keys) Ack(g string, epoch uint64, id string) string {
	return k.Acks(g) + EpochKey(epoch) + "/" + id
}

// Faults is the prefix of a group's fault reports.
func (k Keys) Faults(g string) string { return k.Group(g) + KindFaults + "/" }

// Fault is the key of one fault report.
func (k Keys) Fault(g string, epoch uint64, reporter, suspect string) string {
	return k.Faults(g) + EpochKey(epoch) + "/" + reporter + "/" + suspect
}

// LeftPrefix is the prefix of a group's graceful-leave markers.
func (k Keys) LeftPrefix(g string) string { return k.Group(g) + KindLeft + "/" }

// Left is the key of one graceful-leave marker.
func (k Keys) Left(g, id string) string { return k.LeftPrefix(g) + id }

// Resources is the prefix of a group's resource registrations.
func (k Keys) Resources(g string) string { return k.Group(g) + KindResources + "/" }

// Config is the key of a group's configuration.
func (k Keys) Config(g string) string { return k.Group(g) + KindConfig }

// Resource is the key of one guarded resource's registration.
func (k Keys) Resource(g, name string) string { return k.Resources(g) + name }

// FenceAcks is the prefix of a group's fence acknowledgements.
func (k Keys) FenceAcks(g string) string { return k.Group(g) + KindFenceAcks + "/" }

// FenceAck is the key of one fence acknowledgement.
func (k Keys) FenceAck(g string, epoch uint64, resource string) string {
	return k.FenceAcks(g) + EpochKey(epoch) + "/" + resource
}

// Election is the prefix of the coordinator election.
func (k Keys) Election() string { return k.prefix() + "/election/" }

// EpochKey formats an epoch number as a key element.
func EpochKey(n uint64) string { return fmt.Sprintf("%020d", n) }

// Parsed is a key taken apart by Keys.Parse.
type Parsed struct {
	Group string
	Kind  string
	// Epoch is set for acks, faults and fence acks.
	Epoch uint64
	// Name is the domain (members, acks, left), reporter (faults) or
	// resource (resources, fence acks).
	Name string
	// Suspect is set for faults.
	Suspect string
}

// Parse takes apart a key under Groups. It reports false for keys it does
// not know, which callers ignore.
func (k Keys) Parse(key string) (Parsed, bool) {
	rest, ok := strings.CutPrefix(key, k.Groups())
	if !ok {
		return Parsed{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) < 2 || parts[0] == "" {
		return Parsed{}, false
	}
	p := Parsed{Group: parts[0], Kind: parts[1]}
	epoch := func(s string) bool {
		n, err := strconv.ParseUint(s, 10, 64)
		p.Epoch = n
		return err == nil
	}
	switch {
	case (p.Kind == KindEpoch || p.Kind == KindConfig) && len(parts) == 2:
		return p, true
	case (p.Kind == KindMembers || p.Kind == KindLeft || p.Kind == KindResources) && len(parts) == 3:
		p.Name = parts[2]
		return p, true
	case (p.Kind == KindAcks || p.Kind == KindFenceAcks) && len(parts) == 4:
		p.Name = parts[3]
		return p, epoch(parts[2])
	case p.Kind == KindFaults && len(parts) == 5:
		p.Name, p.Suspect = parts[3], parts[4]
		return p, epoch(parts[2])
	}
	return Parsed{}, false
}
