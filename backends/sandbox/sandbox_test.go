package sandbox

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/backends"
)

// failingProvider fails every Create.
type failingProvider struct {
	err   error
	calls int
}

func (p *failingProvider) Name() string { return "failing" }
func (p *failingProvider) Create(context.Context, CreateRequest) (Sandbox, error) {
	p.calls++
	return nil, p.err
}
func (p *failingProvider) List(context.Context, map[string]string) ([]Info, error) { return nil, nil }
func (p *failingProvider) Remove(context.Context, string) error                    { return nil }
func (p *failingProvider) Close() error                                            { return nil }

func TestCreateRetries(t *testing.T) {
	cases := []struct {
		name      string
		err       error
		retries   int
		wantCalls int
		wantWaits int
	}{
		{"retried, then given up", errors.New("quota exceeded"), 3, 4, 3},
		{"no retries", errors.New("quota exceeded"), 0, 1, 0},
		{"not installed is not retried", ErrNotInstalled, 5, 1, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := &failingProvider{err: tc.err}
			var waits []time.Duration
			ex, err := NewExecutor(Options{Provider: p, Settings: Settings{CreateRetries: tc.retries}, Sleep: func(_ context.Context, d time.Duration) error {
				waits = append(waits, d)
				return nil
			}})
			if err != nil {
				t.Fatal(err)
			}
			_, facts, err := ex.Start(context.Background(), backends.StartRequest{RunID: "r", RolloutID: "x"})
			if err == nil || !strings.Contains(err.Error(), tc.err.Error()) {
				t.Fatalf("err = %v", err)
			}
			if p.calls != tc.wantCalls || len(waits) != tc.wantWaits || facts.CreateAttempts != tc.wantCalls {
				t.Fatalf("calls %d, waits %v, attempts %d", p.calls, waits, facts.CreateAttempts)
			}
			for i := 1; i < len(waits); i++ {
				if waits[i] < waits[i-1] {
					t.Errorf("back-off shrank: %v", waits)
				}
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	for n, base := range map[int]time.Duration{1: 500 * time.Millisecond, 2: time.Second, 3: 2 * time.Second, 7: 30 * time.Second, 20: 30 * time.Second} {
		d := Backoff(n)
		if d < base || d > base+base/4 {
			t.Errorf("Backoff(%d) = %v, want %v plus up to 25%% jitter", n, d, base)
		}
	}
}

func TestOwnerAlive(t *testing.T) {
	me, err := OwnerLabels()
	if err != nil {
		t.Fatal(err)
	}
	if !OwnerAlive(me) {
		t.Fatal("this process is not alive?")
	}
	dead := map[string]string{LabelOwnerPID: me[LabelOwnerPID], LabelOwnerStart: "1", LabelOwnerHost: me[LabelOwnerHost]}
	if OwnerAlive(dead) {
		t.Fatal("a reused pid with another start time counted as alive")
	}
	elsewhere := map[string]string{LabelOwnerPID: "1", LabelOwnerStart: "1", LabelOwnerHost: "another-host"}
	if !OwnerAlive(elsewhere) {
		t.Fatal("another host's sandbox must be left alone")
	}
	elsewhere[LabelExpired] = "true"
	if OwnerAlive(elsewhere) {
		t.Fatal("another host's sandbox past its lifetime must be removable")
	}
}
