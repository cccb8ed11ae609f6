package bbo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "bbo/clients/go/bbov1"
)

// Optimize's errors say what failed and keep the call's gRPC status: with fmt.Errorf's wrapping,
// status.Code read Unknown on the grpc-go Debian ships (it does not unwrap).
func TestWithContextKeepsTheStatus(t *testing.T) {
	st, err := status.New(codes.ResourceExhausted, "rate limit").WithDetails(
		&errdetails.RetryInfo{RetryDelay: durationpb.New(2e9)})
	if err != nil {
		t.Fatal(err)
	}
	got := withContext("ask", st.Err())
	if status.Code(got) != codes.ResourceExhausted {
		t.Fatalf("code %v, want ResourceExhausted", status.Code(got))
	}
	if msg := status.Convert(got).Message(); msg != "ask: rate limit" {
		t.Fatalf("message %q", msg)
	}
	if len(status.Convert(got).Details()) != 1 {
		t.Fatalf("details lost: %v", status.Convert(got).Details())
	}
	plain := withContext("tell trial 3", errors.New("boom"))
	if !strings.HasPrefix(plain.Error(), "tell trial 3: boom") || status.Code(plain) != codes.Unknown {
		t.Fatalf("plain error %v", plain)
	}
}

// A paused trial continued by promotion keeps its creation time: its lease (and Optimize's
// heartbeat tick, a third of it) runs from the ask that handed it out again.
func TestLeaseOfAContinuedTrialRunsFromItsAsk(t *testing.T) {
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	asked := created.Add(2 * time.Hour)
	trial := &pb.Trial{
		CreateTime:      timestamppb.New(created),
		UpdateTime:      timestamppb.New(asked),
		LeaseExpireTime: timestamppb.New(asked.Add(time.Minute)),
	}
	if got := LeaseOf(trial); got != time.Minute {
		t.Fatalf("LeaseOf = %v, want 1m0s", got)
	}
	trial.UpdateTime = nil // an older server: from the creation time
	trial.CreateTime = timestamppb.New(asked)
	if got := LeaseOf(trial); got != time.Minute {
		t.Fatalf("LeaseOf without an update time = %v, want 1m0s", got)
	}
}

// fakeStudy is a test fixture: a BboService answering Ask with a new pending trial and recording
// every Tell, over a real gRPC connection on a loopback port.
type fakeStudy struct {
	pb.UnimplementedBboServiceServer
	mu    sync.Mutex
	asked int64
	tells []*pb.TellRequest
	away  int           // the next calls (Ask or Tell) to refuse with UNAVAILABLE: the server restarting
	busy  int           // the next calls to refuse as gRPC does past a server's concurrent calls
	limit int           // the next calls to refuse as a rate limit does (with a RetryInfo of 5 ms)
	slow  bool          // Ask answers only when its call ends (a model fit outlasting the caller)
	left  time.Duration // the last Ask's time to its deadline
	sent  []string      // the request id of every Tell that arrived, answered or not

	deleted     bool       // the fake's one study is gone
	deleteLost  codes.Code // the next DeleteStudy deletes, then fails with this code (OK: answers)
	deleteCalls int
}

// gone answers UNAVAILABLE while the fake is away (f.mu held).
func (f *fakeStudy) gone() error {
	if f.away > 0 {
		f.away--
		return status.Error(codes.Unavailable, "restarting")
	}
	if f.busy > 0 {
		f.busy--
		return status.Error(codes.ResourceExhausted, grpcConcurrencyRefusal)
	}
	if f.limit > 0 {
		f.limit--
		st, _ := status.New(codes.ResourceExhausted, "rate limit").WithDetails(
			&errdetails.RetryInfo{RetryDelay: durationpb.New(5 * time.Millisecond)})
		return st.Err()
	}
	return nil
}

func (f *fakeStudy) Ask(ctx context.Context, req *pb.AskRequest) (*pb.AskResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.slow {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if err := f.gone(); err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		f.left = time.Until(d)
	}
	f.asked++
	return &pb.AskResponse{Trials: []*pb.Trial{{Id: f.asked, StudyUid: "u", Budget: 9}}}, nil
}

func (f *fakeStudy) Tell(ctx context.Context, req *pb.TellRequest) (*pb.TellResponse, error) {
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, req.RequestId)
	if err := f.gone(); err != nil {
		return nil, err
	}
	f.tells = append(f.tells, req)
	return &pb.TellResponse{Trial: &pb.Trial{Id: req.TrialId, State: req.State}}, nil
}

func serveFake(t *testing.T) (*fakeStudy, *Study) {
	return serveFakeWith(t, Options{})
}

func serveFakeWith(t *testing.T, opts Options) (*fakeStudy, *Study) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, fake := grpc.NewServer(), &fakeStudy{}
	pb.RegisterBboServiceServer(srv, fake)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	c, err := Dial(lis.Addr().String(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return fake, c.Study("s")
}

// When Optimize's context ends, the trial under way is told, not left PENDING for its lease (the
// tell used the ended context and failed): ABANDONED where the objective gave up, its metrics
// where it finished. Optimize returns the context's error and asks no more.
func TestOptimizeTellsTheTrialUnderWayWhenItsContextEnds(t *testing.T) {
	for _, finished := range []bool{false, true} {
		fake, study := serveFake(t)
		ctx, cancel := context.WithCancel(context.Background())
		fn := func(ctx context.Context, _ map[string]interface{}) (map[string]float64, error) {
			cancel()
			if finished {
				return map[string]float64{"f": 1.5}, nil
			}
			<-ctx.Done()
			return nil, ctx.Err()
		}
		err := study.Optimize(ctx, fn, 5, "w")
		if !strings.Contains(fmt.Sprint(err), "context canceled") {
			t.Fatalf("finished=%v: err %v, want the context's", finished, err)
		}
		fake.mu.Lock()
		tells, asked := fake.tells, fake.asked
		fake.mu.Unlock()
		want := pb.TrialState_TRIAL_STATE_ABANDONED
		if finished {
			want = pb.TrialState_TRIAL_STATE_COMPLETED
		}
		if asked != 1 || len(tells) != 1 || tells[0].TrialId != 1 || tells[0].State != want {
			t.Fatalf("finished=%v: %d asks, tells %v; want one tell %v", finished, asked, tells, want)
		}
		if finished && tells[0].Metrics["f"].GetValue() != 1.5 {
			t.Fatalf("metrics %v", tells[0].Metrics)
		}
	}
}

// A server away for longer than a call's retries (a restart) does not end Optimize or lose the
// result under way: its asks and tells are retried for TellPatience, as Python's tell_patience.
// Before, the tell gave up after Options.Retries and the objective's metrics were lost.
func TestOptimizeKeepsItsResultWhileTheServerIsAway(t *testing.T) {
	fake, study := serveFakeWith(t, Options{Retries: 2, Backoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	fn := func(ctx context.Context, _ map[string]interface{}) (map[string]float64, error) {
		fake.mu.Lock()
		fake.away = 20 // the tell of this result, then the next ask, meet the server away
		fake.mu.Unlock()
		return map[string]float64{"f": 2.5}, nil
	}
	if err := study.Optimize(context.Background(), fn, 2, "w"); err != nil {
		t.Fatalf("Optimize: %v", err)
	}
	fake.mu.Lock()
	tells := fake.tells
	fake.away = 5 // outside Optimize, a call still gives up after its retries (no patience)
	fake.mu.Unlock()
	if len(tells) != 2 || tells[0].Metrics["f"].GetValue() != 2.5 {
		t.Fatalf("tells %v, want both trials' metrics", tells)
	}
	if _, err := study.Ask(context.Background(), 1, "w"); status.Code(err) != codes.Unavailable {
		t.Fatalf("Ask: %v, want UNAVAILABLE after 2 retries", err)
	}
}

// GetStudy answers with the authorization the call carried, as the study's name.
func (f *fakeStudy) GetStudy(ctx context.Context, req *pb.GetStudyRequest) (*pb.Study, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	return &pb.Study{Name: strings.Join(md.Get("authorization"), ",")}, nil
}

// An Ask runs under AskTimeout (10 min, as Python's ask_timeout), other calls under Timeout: a
// batch over a wide mixed space takes minutes, and its Ask timed out at 2 min.
func TestAnAskHasItsOwnDeadline(t *testing.T) {
	fake, study := serveFake(t)
	if _, err := study.Ask(context.Background(), 1, "w"); err != nil {
		t.Fatal(err)
	}
	if fake.left < 9*time.Minute {
		t.Fatalf("the ask's deadline was %v away; want about 10 min", fake.left)
	}
}

// Calls through Client.Stub (those the wrapper does not cover: GetStudy, DeleteStudy,
// ReportIntermediate...) carry the API key too: they were UNAUTHENTICATED on a server with --auth.
func TestTheStubCarriesTheAPIKey(t *testing.T) {
	_, study := serveFakeWith(t, Options{APIKey: "k1\n"})
	st, err := study.Client.Stub.GetStudy(context.Background(), &pb.GetStudyRequest{Name: "s"})
	if err != nil || st.Name != "Bearer k1" {
		t.Fatalf("GetStudy through the stub: %v, authorization %q; want \"Bearer k1\"", err, st.GetName())
	}
	err = study.Client.call(context.Background(), func(ctx context.Context) (err error) {
		st, err = study.Client.Stub.GetStudy(ctx, &pb.GetStudyRequest{Name: "s"})
		return err
	})
	if err != nil || st.Name != "Bearer k1" { // the wrapper's calls: once, not twice
		t.Fatalf("GetStudy through the wrapper: %v, authorization %q", err, st.GetName())
	}
}

// ReportIntermediate says stop from step 2 on.
func (f *fakeStudy) ReportIntermediate(ctx context.Context, req *pb.ReportIntermediateRequest) (*pb.ReportIntermediateResponse, error) {
	if req.Step >= 2 {
		return &pb.ReportIntermediateResponse{ShouldStop: true, Reason: "below the median"}, nil
	}
	return &pb.ReportIntermediateResponse{}, nil
}

// Inside Optimize the objective sees its trial (a fidelity study's budget) and reports its
// learning curve; once the pruning policy says stop, Report returns ErrPruned and the trial is
// told PRUNED at the last budget reported, as Python's and Node's optimize do (the Go objective
// could neither read its budget nor report).
func TestOptimizePrunesThroughReports(t *testing.T) {
	fake, study := serveFake(t)
	var budgets []float64
	fn := func(ctx context.Context, _ map[string]interface{}) (map[string]float64, error) {
		tr := RunningTrial(ctx)
		budgets = append(budgets, tr.Trial.Budget)
		for step := int64(0); step < 5; step++ {
			if err := tr.Report(ctx, step, 10-float64(step), float64(step+1)); err != nil {
				return nil, err
			}
		}
		return map[string]float64{"f": 5}, nil
	}
	if err := study.Optimize(context.Background(), fn, 1, "w"); err != nil {
		t.Fatalf("Optimize: %v", err)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(budgets) != 1 || budgets[0] != 9 {
		t.Fatalf("the objective saw budgets %v, want [9]", budgets)
	}
	if len(fake.tells) != 1 {
		t.Fatalf("tells %v", fake.tells)
	}
	tell := fake.tells[0]
	if tell.State != pb.TrialState_TRIAL_STATE_PRUNED || tell.Budget != 3 || tell.Reason != "below the median" {
		t.Fatalf("tell %v, want PRUNED at budget 3 with the policy's reason", tell)
	}
	if RunningTrial(context.Background()) != nil {
		t.Fatal("RunningTrial outside Optimize")
	}
}

// A context that ends while Optimize's Ask is in flight (or waits out the server's absence) makes
// Optimize return the context's error, as documented: errors.Is(err, context.Canceled) held only
// when it ended during an evaluation (the Ask's own CANCELED status came back instead).
func TestOptimizeReturnsTheContextsErrorWhenItEndsDuringAnAsk(t *testing.T) {
	for _, slow := range []bool{true, false} {
		fake, study := serveFakeWith(t, Options{Backoff: 20 * time.Millisecond})
		fake.slow, fake.away = slow, 1000
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		err := study.Optimize(ctx, func(context.Context, map[string]interface{}) (map[string]float64, error) {
			return nil, errors.New("not reached")
		}, 3, "w")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("slow=%v: Optimize: %v, want the context's error", slow, err)
		}
	}
}

// A client certificate without its key is refused by Dial, naming both, before any call.
func TestDialRefusesACertificateWithoutItsKey(t *testing.T) {
	_, err := Dial("127.0.0.1:1", Options{TLSCert: "client.pem"})
	if err == nil || !strings.Contains(err.Error(), "both TLSCert and TLSKey") {
		t.Fatalf("Dial with TLSCert alone: %v", err)
	}
}

// Optimize refuses a negative trial count or a nil objective with INVALID_ARGUMENT naming the
// argument, before any call, as Python's optimize does: -1 ran nothing in silence, and a nil
// objective panicked inside the first trial it asked for.
func TestOptimizeRefusesBadArgumentsBeforeAnyCall(t *testing.T) {
	fake, study := serveFake(t)
	ok := func(context.Context, map[string]interface{}) (map[string]float64, error) {
		return map[string]float64{"f": 1}, nil
	}
	for _, c := range []struct {
		fn    Objective
		n     int
		field string
	}{{ok, -1, "n"}, {nil, 1, "fn"}} {
		err := study.Optimize(context.Background(), c.fn, c.n, "w")
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), c.field+": ") {
			t.Fatalf("Optimize(n=%d): %v, want INVALID_ARGUMENT naming %s", c.n, err, c.field)
		}
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if fake.asked != 0 || len(fake.tells) != 0 {
		t.Fatalf("%d asks, %d tells before the refusal; want none", fake.asked, len(fake.tells))
	}
}

// gRPC's own refusal past a server's concurrent calls (no RetryInfo) is retried for RatePatience,
// as a rate limit's and as Python's client does, not just Retries times: a burst of workers gave
// up after 8 retries, some 16 s. Inside Optimize a rate limit is waited out for TellPatience.
func TestBusyRefusalsAreRetriedForRatePatience(t *testing.T) {
	opts := Options{Retries: 1, Backoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}
	fake, study := serveFakeWith(t, opts)
	fake.busy = 10
	if _, err := study.Ask(context.Background(), 1, "w"); err != nil {
		t.Fatalf("Ask after 10 busy refusals: %v", err)
	}
	opts.RatePatience = time.Millisecond // past RatePatience, the refusal comes back
	fake, study = serveFakeWith(t, opts)
	fake.busy = 1000
	if _, err := study.Ask(context.Background(), 1, "w"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("Ask: %v, want RESOURCE_EXHAUSTED past RatePatience", err)
	}
	fake.mu.Lock()
	fake.busy, fake.limit = 0, 10 // Optimize waits a rate limit out for its TellPatience
	fake.mu.Unlock()
	ok := func(context.Context, map[string]interface{}) (map[string]float64, error) {
		return map[string]float64{"f": 1}, nil
	}
	if err := study.Optimize(context.Background(), ok, 1, "w"); err != nil {
		t.Fatalf("Optimize under a rate limit: %v", err)
	}
}

// DeleteStudy deletes the fake's one study (NOT_FOUND once it is gone); refused first while the
// fake is away; with deleteLost set, the delete runs and its answer is lost (that code instead).
func (f *fakeStudy) DeleteStudy(ctx context.Context, req *pb.DeleteStudyRequest) (*pb.DeleteStudyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleteCalls++
	if f.away > 0 {
		f.away--
		return nil, status.Error(codes.ResourceExhausted, grpcConcurrencyRefusal) // never ran
	}
	if f.deleted {
		return nil, status.Errorf(codes.NotFound, "study '%s' not found", req.Name)
	}
	f.deleted = true
	if code := f.deleteLost; code != codes.OK {
		f.deleteLost = codes.OK
		return nil, status.Error(code, "the answer was lost")
	}
	return &pb.DeleteStudyResponse{Deleted: true}, nil
}

// A delete whose answer was lost (UNAVAILABLE: the connection cut; DEADLINE_EXCEEDED) is sent
// again, and the NOT_FOUND answering it means the first deleted the study: true, as the Python and
// Node clients. A first attempt's NOT_FOUND, or one after a refusal that never ran, is an error.
func TestDeleteStudyReadsARetrysNotFoundByWhatCameBefore(t *testing.T) {
	cases := []struct {
		lost    codes.Code
		away    int
		missing bool
		ok      bool
		calls   int
	}{
		{lost: codes.Unavailable, ok: true, calls: 2},
		{lost: codes.DeadlineExceeded, ok: true, calls: 2},
		{ok: true, calls: 1},
		{missing: true, calls: 1},
		{missing: true, away: 1, calls: 2},
		{away: 1, ok: true, calls: 2},
	}
	for _, c := range cases {
		fake, study := serveFakeWith(t, Options{Backoff: time.Millisecond})
		fake.deleteLost, fake.away, fake.deleted = c.lost, c.away, c.missing
		deleted, err := study.Client.DeleteStudy(context.Background(), "s")
		if c.ok && (err != nil || !deleted) {
			t.Fatalf("%+v: DeleteStudy = %v, %v; want true", c, deleted, err)
		}
		if !c.ok && (status.Code(err) != codes.NotFound || deleted) {
			t.Fatalf("%+v: DeleteStudy = %v, %v; want NOT_FOUND", c, deleted, err)
		}
		if fake.deleteCalls != c.calls || !fake.deleted {
			t.Fatalf("%+v: %d calls, deleted %v", c, fake.deleteCalls, fake.deleted)
		}
	}
}

// A Tell carries its trial's budget (a continued trial's result equal to the one that paused it
// is then not taken for that tell repeated) and one request id however often it is retried.
func TestATellCarriesItsBudgetAndOneRequestIDOverItsRetries(t *testing.T) {
	fake, study := serveFakeWith(t, Options{Backoff: time.Millisecond})
	fake.away = 2
	trial := &pb.Trial{Id: 7, StudyUid: "u", Budget: 3}
	if _, err := study.Tell(context.Background(), trial, map[string]float64{"f": 1}); err != nil {
		t.Fatal(err)
	}
	if len(fake.sent) != 3 || fake.sent[0] == "" || fake.sent[1] != fake.sent[0] || fake.sent[2] != fake.sent[0] {
		t.Fatalf("request ids %q, want one id three times", fake.sent)
	}
	if len(fake.tells) != 1 || fake.tells[0].Budget != 3 {
		t.Fatalf("tells %v, want one at budget 3", fake.tells)
	}
}

// TellWith sends the caller's request id, budget and standard errors, the same request on every
// retry, and retries for its Patience where the client's Retries would have given up.
func TestTellWithKeepsItsRequestOverRetriesForItsPatience(t *testing.T) {
	fake, study := serveFakeWith(t, Options{Backoff: time.Millisecond, MaxBackoff: time.Millisecond, Retries: -1})
	fake.away = 3
	trial := &pb.Trial{Id: 7, StudyUid: "u", Budget: 3}
	opts := TellOptions{Sem: map[string]float64{"f": 0.5}, RequestID: "mine", Budget: 2, Patience: time.Minute}
	res, err := study.TellWith(context.Background(), trial, map[string]float64{"f": 1}, opts)
	if err != nil || res.Trial.Id != 7 {
		t.Fatalf("TellWith: %v, %v", res, err)
	}
	if len(fake.sent) != 4 || fake.sent[0] != "mine" || fake.sent[3] != "mine" {
		t.Fatalf("request ids %q, want mine four times", fake.sent)
	}
	got := fake.tells[0]
	if got.Budget != 2 || got.Metrics["f"].GetValue() != 1 || got.Metrics["f"].GetSem() != 0.5 {
		t.Fatalf("told %v, want f = 1 with sem 0.5 at budget 2", got)
	}
	fake.away = 1
	if _, err := study.TellWith(context.Background(), trial, nil, TellOptions{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("TellWith without patience, no retries: %v, want UNAVAILABLE", err)
	}
}
