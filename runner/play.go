package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rlmrun/rlmrun/backends/client"
	"github.com/rlmrun/rlmrun/backends/protocol"
	"github.com/rlmrun/rlmrun/internal/tmpl"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/subllm/chatapi"
)

// A player plays a rollout: a script of cells, or a model. Each of its
// moves is one iteration: cells to run in order, or the end of the rollout.
type player interface {
	// next is the player's next move; shown is what the cells of its last
	// move showed (as the model sees them).
	next(ctx context.Context, shown []shownCell) (move, error)
}

// finisher is a player that makes one more move when the turns run out
// (the fenced format asks for a final answer).
type finisher interface {
	final(ctx context.Context, shown []shownCell) (answer string, ok bool, err error)
}

// move is one iteration of a player.
type move struct {
	cells []cell
	// stop, when set, ends the rollout after the cells (Stop* constants).
	stop string
	// answer is the final answer a stop carries (final_answer).
	answer *string
}

// cell is one piece of code to run.
type cell struct {
	code string
	// timeout, when set, is shorter than the spec's code_execution_timeout.
	timeout time.Duration
}

// shownCell is what a cell showed: its output as formatted for the model
// (Python's execution-time line included).
type shownCell struct {
	output string
}

// scriptPlayer plays a rollout's turns: one cell per move, then the end.
type scriptPlayer struct {
	turns []schema.Turn
	data  map[string]any
	index int // the rollout's position in the spec, for messages
	at    int
}

func (p *scriptPlayer) next(context.Context, []shownCell) (move, error) {
	if p.at >= len(p.turns) {
		return move{stop: StopEndOfScript}, nil
	}
	i, t := p.at, p.turns[p.at]
	p.at++
	where := fmt.Sprintf("rollouts[%d].turns[%d]", p.index, i)
	if t.IsStop() {
		mv := move{stop: t.Stop}
		if t.Answer != nil {
			a, err := tmpl.Render(where+".answer", *t.Answer, p.data)
			if err != nil {
				return move{}, fmt.Errorf("turn %d: %w", i, err)
			}
			mv.answer = &a
		}
		return mv, nil
	}
	code, err := tmpl.Render(where+".code", t.Code, p.data)
	if err != nil {
		return move{}, fmt.Errorf("turn %d: %w", i, err)
	}
	return move{cells: []cell{{code: code, timeout: t.Timeout.Duration}}}, nil
}

// play runs the rollout's moves until a stop: the player's, the answer
// becoming ready, max_iterations, or a failure.
func (ro *rollout) play(ctx context.Context, p player) {
	maxIter := ro.env.spec.REPL.MaxIterations
	var shown []shownCell
	for iter := 0; ; iter++ {
		if ctx.Err() != nil {
			ro.fail("interrupted before turn %d", len(ro.res.Turns))
			ro.stop(StopError)
			return
		}
		if iter >= maxIter {
			ro.stop(StopMaxIterations)
			if f, ok := p.(finisher); ok {
				answer, ok, err := f.final(ctx, shown)
				if err != nil {
					ro.warn("ask for a final answer: %v", err)
				} else if ok && !ro.answer.Ready {
					ro.finalAnswer(answer)
				}
			}
			return
		}
		mv, err := p.next(ctx, shown)
		if err != nil {
			ro.modelFailed(err)
			return
		}
		shown = shown[:0]
		for _, c := range mv.cells {
			if ro.sess == nil {
				if err := ro.startAgent(ctx); err != nil {
					ro.fail("start: %v", err)
					ro.res.Volatile.InfraError = ctx.Err() == nil
					ro.stop(StopError)
					return
				}
			}
			out, stop := ro.turn(ctx, c)
			shown = append(shown, out)
			if stop != "" {
				ro.stop(stop)
				return
			}
		}
		if mv.stop != "" {
			if mv.answer != nil {
				ro.finalAnswer(*mv.answer)
			}
			ro.stop(mv.stop)
			return
		}
	}
}

// stop records why the rollout stopped and the status that gives, unless a
// failure already set it.
func (ro *rollout) stop(reason string) {
	if ro.res.StopReason == "" {
		ro.res.StopReason = reason
	}
	if ro.res.Status == "" {
		ro.res.Status = statusOf(reason)
	}
}

// finalAnswer makes text the rollout's answer: the model said it in words,
// not through the REPL.
func (ro *rollout) finalAnswer(text string) {
	ro.answer = answerOf(text)
	ro.answerFinal = true
}

// answerOf is a final answer given in words, cut at the REPL answer's limit.
func answerOf(text string) protocol.Answer {
	a := protocol.Answer{Ready: true, Content: text}
	if len(text) > protocol.MaxAnswerBytes {
		a.Content = strings.ToValidUTF8(text[:protocol.MaxAnswerBytes], "")
		a.Truncated = true
	}
	return a
}

// player is who plays the rollout: its script, or the model.
func (ro *rollout) player() (player, error) {
	r := ro.inst.Rollout
	if r.Scripted {
		return &scriptPlayer{turns: r.Turns, data: ro.data, index: r.Index}, nil
	}
	if ro.env.models.root == nil {
		return nil, fmt.Errorf("rollout %s has no turns and the run has no model", r.ID)
	}
	return ro.env.models.root.player(ro)
}

// modelFailed ends a rollout whose player could not move: the context is
// full (a stop of its own), or the model, its server or a script failed.
func (ro *rollout) modelFailed(err error) {
	if errors.Is(err, chatapi.ErrContextLength) {
		ro.warn("%v", err)
		ro.stop(StopContextLength)
		return
	}
	ro.fail("%v", err)
	ro.res.Volatile.InfraError = errors.Is(err, chatapi.ErrTransport) || errors.Is(err, client.ErrAgentGone)
	ro.stop(StopError)
}
