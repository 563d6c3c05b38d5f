package guard

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/idc-dev/idc/internal/scripttest"
	"github.com/idc-dev/idc/proto"
	"github.com/idc-dev/idc/token"
)

// TestScripts runs the interaction scripts in testdata/*.txt; each file's
// header says which rule or guarantee it shows. Regenerate expectations
// with
//
//	go test ./core/guard/ -run TestScripts -rewrite
//
// and read the diff: every line is the state's real output.
//
// Commands (each ends with a status line per group "> g: floor=N
// members=... [writer=ID] pending=N applying=N older=N drained=BOOL"):
//
//	fence [group=g] epoch=N members=a/1,b/2 [writer=a]   (prints the tickets aborted)
//	admit t=NAME [group=g] epoch=N domain=a/1 [write]    (prints ok or the error)
//	begin t=NAME [group=g epoch=N domain=a/1 [write]]    (a ticket not admitted needs its token)
//	end t=NAME                                           (prints "drained" when the last older apply ended)
//	cancel t=NAME
//
// Besides comparing output, the driver checks G5 after every command from
// its own record of the fences: an apply begins only with a token of its
// group's floor epoch from a member of it; a group reported drained has no
// apply of an older epoch under way; a ticket reported aborted was
// admitted and is of an older epoch than the fence that aborted it.
func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		d := &driver{s: New(), tickets: map[string]*Ticket{}, fences: map[string]Fence{}, applying: map[*Ticket]uint64{}}
		datadriven.RunTest(t, path, d.run)
	})
}

type driver struct {
	s        *State
	tickets  map[string]*Ticket
	names    map[*Ticket]string
	fences   map[string]Fence   // the latest fence applied per group
	applying map[*Ticket]uint64 // begun, not ended: the token's epoch
}

func (d *driver) run(t *testing.T, td *datadriven.TestData) string {
	if d.names == nil {
		d.names = map[*Ticket]string{}
	}
	var out strings.Builder
	switch td.Cmd {
	case "fence":
		group := arg(td, "group", "g")
		f := Fence{Epoch: scripttest.Uint(t, td, "epoch"), Writer: arg(td, "writer", "")}
		for _, m := range scripttest.MembersArg(t, td, "members", nil) {
			f.Members = append(f.Members, m.Ref())
		}
		aborted, err := d.s.Fence(group, f, nil)
		if err != nil {
			fmt.Fprintf(&out, "err: %v\n", err)
			break
		}
		if f.Epoch >= d.fences[group].Epoch {
			d.fences[group] = f
		}
		var names []string
		for _, a := range aborted {
			if a.Token.Epoch >= f.Epoch || a.state != tIdle {
				t.Fatalf("ticket %s of epoch %d aborted by the fence of %d", d.names[a], a.Token.Epoch, f.Epoch)
			}
			names = append(names, d.names[a])
		}
		if len(names) > 0 {
			fmt.Fprintf(&out, "aborted %s\n", strings.Join(names, ","))
		}
	case "admit":
		tk := d.ticket(t, td, true)
		fmt.Fprintln(&out, result(d.s.Admit(tk)))
	case "begin":
		tk := d.ticket(t, td, td.HasArg("epoch"))
		err := d.s.Begin(tk)
		if err == nil {
			f := d.fences[tk.Token.Group]
			if tk.Token.Epoch != f.Epoch || !slices.Contains(f.Members, proto.Ref{ID: tk.Token.Domain, Incarnation: tk.Token.Incarnation}) {
				t.Fatalf("G5 violated: ticket %s (%s) began its apply under the fence of %d", td.CmdArgs[0].Vals[0], tk.Token, f.Epoch)
			}
			d.applying[tk] = tk.Token.Epoch
		}
		fmt.Fprintln(&out, result(err))
	case "end":
		tk := d.ticket(t, td, false)
		drained, err := d.s.End(tk)
		delete(d.applying, tk)
		switch {
		case err != nil:
			fmt.Fprintln(&out, result(err))
		case drained:
			fmt.Fprintln(&out, "drained")
		default:
			fmt.Fprintln(&out, "ok")
		}
	case "cancel":
		d.s.Cancel(d.ticket(t, td, false))
		fmt.Fprintln(&out, "ok")
	default:
		t.Fatalf("unknown command %q", td.Cmd)
	}
	for _, g := range d.s.Groups() {
		f, _ := d.s.Floor(g)
		p, a, o := d.s.InFlight(g)
		drained := d.s.Drained(g)
		if drained {
			for tk, e := range d.applying {
				if tk.Token.Group == g && e < f.Epoch {
					t.Fatalf("G5 violated: group %s drained at %d with ticket %s of epoch %d applying", g, f.Epoch, d.names[tk], e)
				}
			}
		}
		var ms []string
		for _, m := range f.Members {
			ms = append(ms, m.String())
		}
		fmt.Fprintf(&out, "> %s: floor=%d members=%s", g, f.Epoch, strings.Join(ms, ","))
		if f.Writer != "" {
			fmt.Fprintf(&out, " writer=%s", f.Writer)
		}
		fmt.Fprintf(&out, " pending=%d applying=%d older=%d drained=%v\n", p, a, o, drained)
	}
	return out.String()
}

// ticket returns the ticket the command names, setting its token from the
// command's arguments if withToken.
func (d *driver) ticket(t *testing.T, td *datadriven.TestData, withToken bool) *Ticket {
	name := arg(td, "t", "")
	tk := d.tickets[name]
	if tk == nil {
		tk = &Ticket{}
		d.tickets[name], d.names[tk] = tk, name
	}
	if withToken {
		ref := scripttest.Ref(t, td, arg(td, "domain", ""))
		tk.Token = token.Token{Group: arg(td, "group", "g"), Epoch: scripttest.Uint(t, td, "epoch"), Domain: ref.ID, Incarnation: ref.Incarnation}
		tk.Write = td.HasArg("write")
	}
	return tk
}

func result(err error) string {
	if err == nil {
		return "ok"
	}
	if errors.Is(err, ErrRefused) {
		return fmt.Sprintf("refused %s: %v", Reason(err), err)
	}
	return fmt.Sprintf("err: %v", err)
}

func arg(td *datadriven.TestData, key, def string) string {
	for _, a := range td.CmdArgs {
		if a.Key == key && len(a.Vals) > 0 {
			return a.Vals[0]
		}
	}
	return def
}
