package bbo

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/schollz/progressbar/v3"
)

// bestEvery is how often Optimize's bar reads the study's best (GetBest), besides once at the end.
const bestEvery = 2 * time.Second

// progress is Optimize's bar (schollz/progressbar): trials done of n, and as its description the
// study's best as GetBest reports it, as the Python and Node clients' bars show it.
type progress struct {
	study *Study
	bar   *progressbar.ProgressBar
	shown time.Time
}

func newProgress(s *Study, n int, w io.Writer) *progress {
	if w == nil {
		return nil
	}
	bar := progressbar.NewOptions(n,
		progressbar.OptionSetWriter(w),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionSetDescription(s.Name+": no feasible trial yet"),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
	)
	return &progress{study: s, bar: bar}
}

// done counts one trial; last: the loop's final one, whose note is read whatever the time.
func (p *progress) done(ctx context.Context, last bool) {
	if p == nil {
		return
	}
	if last || time.Since(p.shown) >= bestEvery {
		p.shown = time.Now()
		if note, err := p.note(ctx); err == nil { // the note is a courtesy: the loop reports errors
			p.bar.Describe(p.study.Name + ": " + note)
		}
	}
	_ = p.bar.Add(1)
}

// note is the study's best trial and its objective's value (with the model's estimate where the
// model chose it), or the size of the Pareto front.
func (p *progress) note(ctx context.Context) (string, error) {
	res, err := p.study.BestResult(ctx)
	if err != nil {
		return "", err
	}
	if len(res.Trials) == 0 {
		return "no feasible trial yet", nil
	}
	st, err := p.study.cachedInfo(ctx) // the objectives' names: read once
	if err != nil {
		return "", err
	}
	objectives := st.GetSpec().GetObjectives()
	if len(objectives) != 1 {
		return fmt.Sprintf("Pareto front: %d trials", len(res.Trials)), nil
	}
	t, name := res.Trials[0], objectives[0].GetName()
	note := fmt.Sprintf("best %s=%s (trial %d)", name, sig6(t.Metrics[name].GetValue()), t.Id)
	if e := res.GetEstimate(); e != nil {
		note += ", model estimate " + sig6(e.Value)
	}
	return note, nil
}

func sig6(x float64) string { return strconv.FormatFloat(x, 'g', 6, 64) }
