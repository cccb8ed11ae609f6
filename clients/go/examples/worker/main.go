// Example worker: minimizes the Branin function on a bbo server with several goroutines, each
// asking, evaluating and telling trials as its own worker (as jobs on a cluster would).
//
//	worker [-workers 2] [-trials 12] [-initial 0] ADDRESS [STUDY]
//
// The API key comes from BBO_API_KEY when the server has authentication on. Prints one JSON line
// at the end: the study, how many trials each worker told, and the best trial.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"sync"

	"bbo/clients/go/bbo"
	pb "bbo/clients/go/bbov1"
)

func branin(x1, x2 float64) float64 {
	b, c, t := 5.1/(4*math.Pi*math.Pi), 5/math.Pi, 1/(8*math.Pi)
	return math.Pow(x2-b*x1*x1+c*x1-6, 2) + 10*(1-t)*math.Cos(x1) + 10
}

func evaluate(_ context.Context, p map[string]interface{}) (map[string]float64, error) {
	x1, err := bbo.Number(p, "x1")
	if err != nil {
		return nil, err
	}
	x2, err := bbo.Number(p, "x2")
	if err != nil {
		return nil, err
	}
	return map[string]float64{"branin": branin(x1, x2)}, nil
}

func main() {
	workers := flag.Int("workers", 2, "concurrent workers (goroutines)")
	trials := flag.Int("trials", 12, "trials in all, shared among the workers")
	initial := flag.Int("initial", 0, "size of the initial design (0 = the server's choice)")
	progress := flag.Bool("progress", false, "draw the first worker's progress bar on stderr")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: worker [-workers N] [-trials N] [-initial N] [-progress] ADDRESS [STUDY]")
		fmt.Fprintln(os.Stderr, "  ADDRESS  the bbo server (host:port); STUDY  a Branin study's name (default go-branin)")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() < 1 {
		flag.Usage()
		os.Exit(2)
	}
	name := "go-branin"
	if flag.NArg() > 1 {
		name = flag.Arg(1)
	}
	if err := run(flag.Arg(0), name, *workers, *trials, *initial, *progress); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(address, name string, workers, trials, initial int, progress bool) error {
	client, err := bbo.Dial(address, bbo.Options{})
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := context.Background()
	study, err := client.CreateStudy(ctx, name, &pb.StudySpec{
		Parameters: []*pb.ParameterSpec{
			bbo.FloatParam("x1", -5, 10),
			bbo.FloatParam("x2", 0, 15),
		},
		Objectives:  []*pb.Objective{bbo.Minimize("branin")},
		Algorithm:   &pb.AlgorithmOptions{NInitial: int32(initial)},
		Description: "Branin test function, minimized (example Go worker).",
	})
	if err != nil {
		return fmt.Errorf("create study: %w", err)
	}

	told := make(map[string]int, workers)
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		n := trials / workers
		if w < trials%workers {
			n++
		}
		id := fmt.Sprintf("go-worker-%d", w)
		opts := bbo.OptimizeOptions{WorkerID: id}
		if progress && w == 0 {
			opts.Progress = os.Stderr
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			counted := func(ctx context.Context, p map[string]interface{}) (map[string]float64, error) {
				m, err := evaluate(ctx, p)
				if err == nil {
					mu.Lock()
					told[id]++
					mu.Unlock()
				}
				return m, err
			}
			if err := study.OptimizeWith(ctx, counted, n, opts); err != nil {
				errs <- fmt.Errorf("%s: %w", id, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}

	res, err := study.BestResult(ctx)
	if err != nil {
		return fmt.Errorf("best: %w", err)
	}
	best := res.Trials
	out := map[string]interface{}{"study": study.Name, "workers": told, "selection": res.Selection}
	if e := res.GetEstimate(); e != nil {
		out["estimate"] = []float64{e.Value, e.Lower, e.Upper}
	}
	if len(best) > 0 {
		out["best"] = map[string]interface{}{
			"id": best[0].Id, "parameters": bbo.Params(best[0]),
			"branin": best[0].Metrics["branin"].GetValue(),
		}
	}
	line, err := json.Marshal(out)
	if err != nil {
		return err
	}
	fmt.Println(string(line))
	return nil
}
