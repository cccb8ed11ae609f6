package bbo

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "bbo/clients/go/bbov1"
)

// realServer dials the bbo server at BBO_TEST_ADDRESS (tests/test_go_client.py starts one and
// sets it); without it the test is skipped.
func realServer(t *testing.T) *Client {
	address := os.Getenv("BBO_TEST_ADDRESS")
	if address == "" {
		t.Skip("BBO_TEST_ADDRESS is not set: no bbo server to test against")
	}
	c, err := Dial(address, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testStudyName(t *testing.T) string {
	return strings.ReplaceAll(t.Name(), "/", "-") + "-" + requestID()[:6]
}

// The study lifecycle and reads of Python's client: WaitReady, GetStudy / Info, ListStudies,
// AddTrial, Trial, DeleteStudy / Delete (the Go client could only reach them through the raw Stub,
// without retries).
func TestServerStudyLifecycle(t *testing.T) {
	c := realServer(t)
	ctx := context.Background()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.WaitReady(wctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	name := testStudyName(t)
	study, err := c.CreateStudy(ctx, name, &pb.StudySpec{
		Parameters: []*pb.ParameterSpec{FloatParam("x", 0, 1), IntParam("n", 1, 9), CategoricalParam("k", "a", "b")},
		Objectives: []*pb.Objective{Minimize("loss")},
	})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Study(name).Info(ctx)
	if err != nil || info.Name != name || info.Spec.Objectives[0].Name != "loss" {
		t.Fatalf("Info: %v, %v", info, err)
	}
	params := map[string]interface{}{"x": 0.25, "n": 3, "k": "b"}
	added, err := study.AddTrial(ctx, params, map[string]float64{"loss": 1.5})
	if err != nil {
		t.Fatalf("AddTrial: %v", err)
	}
	got, err := study.Trial(ctx, added.Id)
	if err != nil || got.State != pb.TrialState_TRIAL_STATE_COMPLETED || got.Metrics["loss"].GetValue() != 1.5 {
		t.Fatalf("Trial(%d): %v, %v", added.Id, got, err)
	}
	if p := Params(got); p["x"] != 0.25 || p["n"] != int64(3) || p["k"] != "b" {
		t.Fatalf("the added trial's params %v, want %v", p, params)
	}
	_, err = study.AddTrial(ctx, map[string]interface{}{"x": true}, nil)
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), `params["x"]`) {
		t.Fatalf("AddTrial with a bool: %v, want INVALID_ARGUMENT naming params[\"x\"]", err)
	}
	if _, err := study.Trial(ctx, added.Id+100); status.Code(err) != codes.NotFound {
		t.Fatalf("Trial of an unknown id: %v, want NOT_FOUND", err)
	}
	studies, err := c.ListStudies(ctx)
	listed := false
	for _, s := range studies {
		listed = listed || s.Name == name
	}
	if err != nil || !listed {
		t.Fatalf("ListStudies: %d studies without %s, %v", len(studies), name, err)
	}
	if deleted, err := study.Delete(ctx); !deleted || err != nil {
		t.Fatalf("Delete: %v, %v", deleted, err)
	}
	if _, err := c.DeleteStudy(ctx, name); status.Code(err) != codes.NotFound {
		t.Fatalf("DeleteStudy of a deleted study: %v, want NOT_FOUND", err)
	}
	if _, err := c.GetStudy(ctx, name); status.Code(err) != codes.NotFound {
		t.Fatalf("GetStudy of a deleted study: %v, want NOT_FOUND", err)
	}
}

// WaitReady gives up with UNAVAILABLE, naming the address, when no server answers before ctx ends.
func TestServerWaitReadyGivesUp(t *testing.T) {
	realServer(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0") // a port sure to be free once closed
	if err != nil {
		t.Fatal(err)
	}
	address := lis.Addr().String()
	_ = lis.Close()
	c, err := Dial(address, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err = c.WaitReady(ctx)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), address) {
		t.Fatalf("WaitReady with no server: %v, want UNAVAILABLE naming %s", err, address)
	}
}

// A single-objective study takes a bare value, as Python's tell(trial, 0.5) and an objective
// returning a number: TellValue and OptimizeValue. With several objectives both are refused
// INVALID_ARGUMENT naming them, OptimizeValue before it asks for any trial.
func TestServerBareValues(t *testing.T) {
	c := realServer(t)
	ctx := context.Background()
	spec := func(objectives ...*pb.Objective) *pb.StudySpec {
		return &pb.StudySpec{Parameters: []*pb.ParameterSpec{FloatParam("x", 0, 1)}, Objectives: objectives}
	}
	one, err := c.CreateStudy(ctx, testStudyName(t)+"-one", spec(Minimize("loss")))
	if err != nil {
		t.Fatal(err)
	}
	asked, err := one.Ask(ctx, 1, "w")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := one.TellValue(ctx, asked[0], 0.5); err != nil {
		t.Fatalf("TellValue: %v", err)
	}
	square := func(_ context.Context, p map[string]interface{}) (float64, error) {
		x, err := Number(p, "x")
		return x * x, err
	}
	// a handle that has not read the study yet: OptimizeValue reads its objective's name
	if err := c.Study(one.Name).OptimizeValue(ctx, square, 2, OptimizeOptions{WorkerID: "w"}); err != nil {
		t.Fatalf("OptimizeValue: %v", err)
	}
	done, err := one.Trials(ctx, pb.TrialState_TRIAL_STATE_COMPLETED)
	if err != nil || len(done) != 3 || done[0].Metrics["loss"].GetValue() != 0.5 {
		t.Fatalf("completed trials %v, %v; want 3, the first with loss 0.5", done, err)
	}
	for _, tr := range done[1:] {
		x := tr.Parameters["x"].GetNumber()
		if tr.Metrics["loss"].GetValue() != x*x {
			t.Fatalf("trial %d: metrics %v, want loss = x*x", tr.Id, tr.Metrics)
		}
	}

	two, err := c.CreateStudy(ctx, testStudyName(t)+"-two", spec(Minimize("loss"), Maximize("acc")))
	if err != nil {
		t.Fatal(err)
	}
	asked, err = two.Ask(ctx, 1, "w")
	if err != nil {
		t.Fatal(err)
	}
	refused := func(what string, err error) {
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "(loss, acc)") {
			t.Fatalf("%s with two objectives: %v, want INVALID_ARGUMENT naming them", what, err)
		}
	}
	_, err = two.TellValue(ctx, asked[0], 0.5)
	refused("TellValue", err)
	refused("OptimizeValue", two.OptimizeValue(ctx, square, 2, OptimizeOptions{WorkerID: "w"}))
	all, err := two.Trials(ctx)
	if err != nil || len(all) != 1 || all[0].State != pb.TrialState_TRIAL_STATE_PENDING {
		t.Fatalf("trials %v, %v; want only the one asked, still PENDING", all, err)
	}
}

// As Python's client: OpenStudy checks the study is there (client.study(name); Study(name) checks
// nothing), AskWith and OptimizeOptions set the trials' lease (lease_seconds), and OptimizeBest
// returns the study's best as GetBest reads it (optimize returns best()).
func TestServerPythonParity(t *testing.T) {
	c := realServer(t)
	ctx := context.Background()
	name := testStudyName(t)
	if s, err := c.OpenStudy(ctx, name); s != nil || status.Code(err) != codes.NotFound {
		t.Fatalf("OpenStudy of a missing study: %v, %v; want NOT_FOUND", s, err)
	}
	if _, err := c.CreateStudy(ctx, name, &pb.StudySpec{
		Parameters: []*pb.ParameterSpec{FloatParam("x", 0, 1)},
		Objectives: []*pb.Objective{Minimize("loss")},
	}); err != nil {
		t.Fatal(err)
	}
	study, err := c.OpenStudy(ctx, name)
	if err != nil || study.Name != name || study.info == nil {
		t.Fatalf("OpenStudy: %v, %v; want the handle, its info read", study, err)
	}
	asked, err := study.AskWith(ctx, 1, AskOptions{WorkerID: "w", Lease: 37 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if got := LeaseOf(asked[0]).Round(time.Second); got != 37*time.Second || asked[0].WorkerId != "w" {
		t.Fatalf("AskWith: lease %v, worker %q; want 37s, w", got, asked[0].WorkerId)
	}
	if _, err := study.Tell(ctx, asked[0], map[string]float64{"loss": 0.5}); err != nil {
		t.Fatal(err)
	}
	var leases []time.Duration
	fn := func(ctx context.Context, p map[string]interface{}) (map[string]float64, error) {
		leases = append(leases, LeaseOf(RunningTrial(ctx).Trial).Round(time.Second))
		x, err := Number(p, "x")
		return map[string]float64{"loss": x}, err
	}
	best, err := study.OptimizeBest(ctx, fn, 2, OptimizeOptions{WorkerID: "w", Lease: 41 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 2 || leases[0] != 41*time.Second || leases[1] != 41*time.Second {
		t.Fatalf("Optimize's trials' leases %v, want 41s each", leases)
	}
	want, err := study.BestResult(ctx)
	if err != nil || len(best.Trials) != 1 || best.Trials[0].Id != want.Trials[0].Id ||
		best.Selection != want.Selection {
		t.Fatalf("OptimizeBest: %v; want GetBest's %v (%v)", best, want, err)
	}
}
