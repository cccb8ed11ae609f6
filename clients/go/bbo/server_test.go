package bbo

import (
	"context"
	"fmt"
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

// serverStudy creates a fresh study of spec on the real server for t.
func serverStudy(t *testing.T, c *Client, spec *pb.StudySpec) *Study {
	study, err := c.CreateStudy(context.Background(), testStudyName(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	return study
}

// TellWith, as Python's tell: a metric's standard error is stored, the answer says whether the
// tell was a duplicate, the request id is the caller's (reused for another tell: refused), and
// State / Reason finish a trial otherwise; a standard error of no metric is refused before any call.
func TestServerTellWith(t *testing.T) {
	c := realServer(t)
	ctx := context.Background()
	study := serverStudy(t, c, &pb.StudySpec{
		Parameters: []*pb.ParameterSpec{FloatParam("x", 0, 1)},
		Objectives: []*pb.Objective{Minimize("loss")},
	})
	asked, err := study.Ask(ctx, 2, "w")
	if err != nil {
		t.Fatal(err)
	}
	id := "go-tell-" + requestID()
	opts := TellOptions{Sem: map[string]float64{"loss": 0.25}, RequestID: id}
	first, err := study.TellWith(ctx, asked[0], map[string]float64{"loss": 0.5}, opts)
	if err != nil || first.Duplicate || first.Trial.State != pb.TrialState_TRIAL_STATE_COMPLETED {
		t.Fatalf("TellWith: %+v, %v; want COMPLETED, not a duplicate", first, err)
	}
	if m := first.Trial.Metrics["loss"]; m.GetValue() != 0.5 || m.Sem == nil || *m.Sem != 0.25 {
		t.Fatalf("told metric %v, want value 0.5 with sem 0.25", m)
	}
	again, err := study.TellWith(ctx, asked[0], map[string]float64{"loss": 0.5}, opts)
	if err != nil || !again.Duplicate || again.Trial.Id != asked[0].Id {
		t.Fatalf("the same tell again: %+v, %v; want the trial, a duplicate", again, err)
	}
	_, err = study.TellWith(ctx, asked[1], map[string]float64{"loss": 0.7}, TellOptions{RequestID: id})
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), id) {
		t.Fatalf("another tell under request id %s: %v, want FAILED_PRECONDITION naming it", id, err)
	}
	_, err = study.TellWith(ctx, asked[1], map[string]float64{"loss": 0.7}, TellOptions{Sem: map[string]float64{"acc": 1}})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), `sem["acc"]`) {
		t.Fatalf("a sem of no metric: %v, want INVALID_ARGUMENT naming sem[\"acc\"]", err)
	}
	res, err := study.TellWith(ctx, asked[1], nil, TellOptions{State: pb.TrialState_TRIAL_STATE_FAILED, Reason: "oom"})
	if err != nil || res.Duplicate || res.Trial.State != pb.TrialState_TRIAL_STATE_FAILED || res.Trial.Reason != "oom" {
		t.Fatalf("TellWith FAILED: %+v, %v; want FAILED, reason oom", res, err)
	}
}

// TellOptions.Budget is what the metrics were measured at (a study with a fidelity): a completed
// result short of the full budget is refused; a pruned trial is stored at the budget told.
func TestServerTellBudget(t *testing.T) {
	c := realServer(t)
	ctx := context.Background()
	study := serverStudy(t, c, &pb.StudySpec{
		Parameters: []*pb.ParameterSpec{FloatParam("x", 0, 1)},
		Objectives: []*pb.Objective{Minimize("loss")},
		Fidelity:   &pb.Fidelity{Name: "epochs", Min: 1, Max: 9},
	})
	asked, err := study.Ask(ctx, 2, "w")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := study.TellWith(ctx, asked[0], map[string]float64{"loss": 1}, TellOptions{Budget: 0.5}); status.Code(err) == codes.OK {
		t.Fatalf("a COMPLETED tell at budget 0.5 of a study at 1 to 9: no error")
	}
	if _, err := study.Report(ctx, asked[1], 1, 2, 3); err != nil {
		t.Fatal(err)
	}
	res, err := study.TellWith(ctx, asked[1], map[string]float64{"loss": 2},
		TellOptions{State: pb.TrialState_TRIAL_STATE_PRUNED, Reason: "slow", Budget: 3})
	if err != nil || res.Trial.State != pb.TrialState_TRIAL_STATE_PRUNED || res.Trial.Budget != 3 {
		t.Fatalf("TellWith PRUNED at budget 3: %+v, %v; want PRUNED at 3", res, err)
	}
}

// HeartbeatLease renews a trial's lease to the length asked, as Python's heartbeat(trial,
// lease_seconds); Heartbeat then keeps that length.
func TestServerHeartbeatLease(t *testing.T) {
	c := realServer(t)
	ctx := context.Background()
	study := serverStudy(t, c, &pb.StudySpec{
		Parameters: []*pb.ParameterSpec{FloatParam("x", 0, 1)},
		Objectives: []*pb.Objective{Minimize("loss")},
	})
	asked, err := study.AskWith(ctx, 1, AskOptions{WorkerID: "w", Lease: 37 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := study.HeartbeatLease(ctx, asked[0], 93*time.Second)
	if err != nil || LeaseOf(renewed).Round(time.Second) != 93*time.Second {
		t.Fatalf("HeartbeatLease(93s): lease %v, %v; want 93s", LeaseOf(renewed), err)
	}
	kept, err := study.Heartbeat(ctx, asked[0])
	if err != nil || LeaseOf(kept).Round(time.Second) != 93*time.Second {
		t.Fatalf("Heartbeat after HeartbeatLease(93s): lease %v, %v; want 93s kept", LeaseOf(kept), err)
	}
}

// LlmCalls reads every page of a study's LLM exchanges, oldest first, or those of one purpose, as
// Python's llm_calls. tests/test_go_client.py logs 230 calls (more than two pages) of the study
// BBO_TEST_LLM_STUDY: response "a<i>", purposes warmstart, priors, proposal in turn, i tokens.
func TestServerLlmCalls(t *testing.T) {
	c := realServer(t)
	name := os.Getenv("BBO_TEST_LLM_STUDY")
	if name == "" {
		t.Skip("BBO_TEST_LLM_STUDY is not set: no study with LLM calls to read")
	}
	ctx := context.Background()
	all, err := c.Study(name).LlmCalls(ctx, "")
	if err != nil || len(all) != 230 {
		t.Fatalf("LlmCalls: %d calls, %v; want 230", len(all), err)
	}
	for i, call := range all {
		if want := fmt.Sprintf("a%d", i); call.Response != want {
			t.Fatalf("call %d: response %q, want %q", i, call.Response, want)
		}
	}
	priors, err := c.Study(name).LlmCalls(ctx, "priors")
	if err != nil || len(priors) != 77 {
		t.Fatalf("LlmCalls(priors): %d calls, %v; want 77", len(priors), err)
	}
	for i, call := range priors {
		if call.Purpose != "priors" || call.PromptTokens != int32(3*i+1) {
			t.Fatalf("priors call %d: %s with %d tokens, want priors with %d", i, call.Purpose, call.PromptTokens, 3*i+1)
		}
	}
}

// AddTrialWith, as Python's add_trial: a FAILED point, standard errors, and a request id under
// which a repeat is answered with the trial the first added.
func TestServerAddTrialWith(t *testing.T) {
	c := realServer(t)
	ctx := context.Background()
	study := serverStudy(t, c, &pb.StudySpec{
		Parameters: []*pb.ParameterSpec{FloatParam("x", 0, 1)},
		Objectives: []*pb.Objective{Minimize("loss")},
	})
	bad, err := study.AddTrialWith(ctx, map[string]interface{}{"x": 0.9}, nil, AddTrialOptions{Failed: true})
	if err != nil || bad.State != pb.TrialState_TRIAL_STATE_FAILED {
		t.Fatalf("AddTrialWith(Failed): %v, %v; want FAILED", bad, err)
	}
	opts := AddTrialOptions{Sem: map[string]float64{"loss": 0.125}, RequestID: "go-add-" + requestID()}
	params, metrics := map[string]interface{}{"x": 0.25}, map[string]float64{"loss": 1.5}
	added, err := study.AddTrialWith(ctx, params, metrics, opts)
	if m := added.GetMetrics()["loss"]; err != nil || added.State != pb.TrialState_TRIAL_STATE_COMPLETED ||
		m.GetValue() != 1.5 || m.Sem == nil || *m.Sem != 0.125 {
		t.Fatalf("AddTrialWith(Sem): %v, %v; want COMPLETED, loss 1.5 with sem 0.125", added, err)
	}
	again, err := study.AddTrialWith(ctx, params, metrics, opts)
	if err != nil || again.Id != added.Id {
		t.Fatalf("AddTrialWith repeated under its request id: %v, %v; want trial %d again", again, err, added.Id)
	}
	all, err := study.Trials(ctx)
	if err != nil || len(all) != 2 {
		t.Fatalf("trials %v, %v; want the 2 added", all, err)
	}
	_, err = study.AddTrialWith(ctx, params, metrics, AddTrialOptions{Sem: map[string]float64{"acc": 1}})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), `sem["acc"]`) {
		t.Fatalf("a sem of no metric: %v, want INVALID_ARGUMENT naming sem[\"acc\"]", err)
	}
}

// The builders of Python's Float(log=True), Int(log=True), Ordinal, Fixed, Constraint and Prior
// make a spec the server stores as built and asks from; a Constraint's unknown op and a
// FixedParam of another type are refused by the server naming the field.
func TestServerBuilders(t *testing.T) {
	c := realServer(t)
	ctx := context.Background()
	study := serverStudy(t, c, &pb.StudySpec{
		Parameters: []*pb.ParameterSpec{
			LogFloatParam("lr", 1e-4, 1e-1), LogIntParam("width", 8, 512), OrdinalParam("batch", 16, 32, 64),
			LogOrdinalParam("decay", 0.001, 0.01, 0.1), FixedParam("seed", 7), FixedParam("mode", "fast"),
			FloatParam("x", 0, 1), CategoricalParam("k", "a", "b"),
		},
		Objectives:         []*pb.Objective{Minimize("loss")},
		OutcomeConstraints: []*pb.OutcomeConstraint{Constraint("latency", "<=", 200), Constraint("acc", ">=", 0.5)},
		Priors:             []*pb.ParameterPrior{Prior("x", 0.3, 0.1, 0.8), ChoicePrior("k", map[string]float64{"a": 0.9, "b": 0.1}, 0)},
	})
	info, err := study.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ps := info.Spec.Parameters
	if ps[0].GetFloat().GetScale() != pb.Scale_SCALE_LOG || ps[1].GetInt().GetScale() != pb.Scale_SCALE_LOG ||
		ps[2].GetOrdinal().GetScale() != pb.Scale_SCALE_LINEAR || ps[3].GetOrdinal().GetScale() != pb.Scale_SCALE_LOG ||
		ps[4].GetFixed().GetValue().GetInteger() != 7 || ps[5].GetFixed().GetValue().GetCategory() != "fast" {
		t.Fatalf("stored parameters %v", ps)
	}
	oc := info.Spec.OutcomeConstraints
	if len(oc) != 2 || oc[0].Op != pb.ConstraintOp_CONSTRAINT_OP_LESS_EQUAL || oc[0].Bound != 200 ||
		oc[1].Op != pb.ConstraintOp_CONSTRAINT_OP_GREATER_EQUAL || oc[1].Metric != "acc" {
		t.Fatalf("stored outcome constraints %v", oc)
	}
	pr := info.Spec.Priors
	if len(pr) != 2 || pr[0].GetMean() != 0.3 || pr[0].GetStd() != 0.1 || pr[0].Confidence != 0.8 ||
		pr[1].Probabilities["a"] != 0.9 {
		t.Fatalf("stored priors %v", pr)
	}
	asked, err := study.Ask(ctx, 1, "w")
	if err != nil {
		t.Fatal(err)
	}
	p := Params(asked[0])
	if b := p["batch"]; b != int64(16) && b != int64(32) && b != int64(64) {
		t.Fatalf("batch %v (%T), want an int64 of 16, 32, 64", b, b)
	}
	if p["seed"] != int64(7) || p["mode"] != "fast" {
		t.Fatalf("fixed parameters %v, want seed 7, mode fast", p)
	}
	refused := func(spec *pb.StudySpec, field string) {
		_, err := c.CreateStudy(ctx, testStudyName(t)+"-bad", spec)
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), field) {
			t.Fatalf("CreateStudy: %v, want INVALID_ARGUMENT naming %s", err, field)
		}
	}
	refused(&pb.StudySpec{
		Parameters: []*pb.ParameterSpec{FloatParam("x", 0, 1)}, Objectives: []*pb.Objective{Minimize("loss")},
		OutcomeConstraints: []*pb.OutcomeConstraint{Constraint("latency", "<", 200)},
	}, "outcome_constraints[0].op")
	refused(&pb.StudySpec{
		Parameters: []*pb.ParameterSpec{FloatParam("x", 0, 1), FixedParam("on", true)},
		Objectives: []*pb.Objective{Minimize("loss")},
	}, "parameters[1].fixed.value")
}
