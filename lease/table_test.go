package lease

import (
	"slices"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time               { return c.t }
func (c *fakeClock) advance(d time.Duration)      { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock                    { return &fakeClock{t: time.Unix(1_000_000, 0)} }
func (c *fakeClock) at(d time.Duration) time.Time { return time.Unix(1_000_000, 0).Add(d) }

// TestTableGrantAttachRevoke follows a lease through the table: granted,
// keys attached and detached, revoked with the keys it still holds.
func TestTableGrantAttachRevoke(t *testing.T) {
	clock := newFakeClock()
	tab := NewTable(Origin{Member: 1, Nonce: 7}, clock.now)
	tab.Grant(10, 5*time.Second)
	if !tab.Exists(10) || tab.Exists(11) {
		t.Fatal("Exists: want lease 10 only")
	}
	tab.Attach(10, "b")
	tab.Attach(10, "a")
	tab.Attach(11, "c") // no such lease: nothing
	tab.Detach(10, "b")
	info, ok := tab.Get(10)
	if !ok || info.TTL != 5*time.Second || !slices.Equal(info.Keys, []string{"a"}) || !info.HoldUntil.Equal(clock.at(5*time.Second)) {
		t.Fatalf("Get(10) = %+v, %v; want TTL 5s, keys [a], held until grant + TTL", info, ok)
	}
	tab.Attach(10, "c")
	keys, err := tab.Revoke(10)
	if err != nil || !slices.Equal(keys, []string{"a", "c"}) {
		t.Fatalf("Revoke(10) = %v, %v; want [a c]", keys, err)
	}
	if _, err := tab.Revoke(10); err != ErrNotFound {
		t.Fatalf("second Revoke(10): %v, want ErrNotFound", err)
	}
}

// TestTableWindows proves the rule the timing rests on: another process's
// window holds the lease on this member until the window's apply time here
// plus half its TTL plus its TTL; this process's own windows do not move
// holdUntil (it knows the keepalives it answered), but a snapshot holds
// the lease by them too.
func TestTableWindows(t *testing.T) {
	clock := newFakeClock()
	self := Origin{Member: 1, Nonce: 7}
	tab := NewTable(self, clock.now)
	tab.Grant(10, 4*time.Second) // held until 4s
	clock.advance(3 * time.Second)
	tab.Window(Origin{Member: 2, Nonce: 9}, []uint64{10, 99}) // 99 does not exist: skipped
	if info, _ := tab.Get(10); !info.HoldUntil.Equal(clock.at(3*time.Second + 2*time.Second + 4*time.Second)) {
		t.Fatalf("after another member's window at 3s: held until %v, want 9s", info.HoldUntil.Sub(clock.at(0)))
	}
	clock.advance(2 * time.Second)                        // 5s
	tab.Window(Origin{Member: 1, Nonce: 8}, []uint64{10}) // this member, an earlier process: foreign
	if info, _ := tab.Get(10); !info.HoldUntil.Equal(clock.at(11 * time.Second)) {
		t.Fatalf("after this member's earlier process's window at 5s: held until %v, want 11s", info.HoldUntil.Sub(clock.at(0)))
	}
	clock.advance(2 * time.Second) // 7s
	tab.Window(self, []uint64{10})
	if info, _ := tab.Get(10); !info.HoldUntil.Equal(clock.at(11 * time.Second)) {
		t.Fatalf("an own window moved holdUntil to %v", info.HoldUntil.Sub(clock.at(0)))
	}
	// A snapshot now holds it until the own window's end, 7+2+4 = 13s:
	// 6s from now.
	saved := tab.Save()
	if len(saved) != 1 || saved[0].ID != 10 || saved[0].TTL != 4*time.Second || saved[0].Hold != 6*time.Second {
		t.Fatalf("Save = %+v, want lease 10 held 6s", saved)
	}
	// A member that loads it later holds it 6s from then.
	clock.advance(time.Second)
	other := NewTable(Origin{Member: 3}, clock.now)
	other.Load(saved)
	if info, ok := other.Get(10); !ok || !info.HoldUntil.Equal(clock.at(14*time.Second)) || len(info.Keys) != 0 {
		t.Fatalf("loaded: %+v, want held until 14s, no keys yet", info)
	}
}
