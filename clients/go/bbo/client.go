// Package bbo is a small Go client for the bbo Bayesian-optimization service, over the gRPC code
// generated from proto/bbo/v1 (package bbov1). It adds what a worker needs around the raw stub:
// an API key on every call (the Stub's too), retries of UNAVAILABLE with jittered exponential
// backoff (asks carry a request id, so a retry never creates trials twice; a repeated tell is
// recorded once), waiting out a rate limit's RetryInfo, leases kept alive by heartbeats, and an
// Optimize loop.
package bbo

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "bbo/clients/go/bbov1"
)

// Options tune a Client. The zero value of each field means its default.
type Options struct {
	APIKey      string                           // sent as "authorization: Bearer KEY"; default env BBO_API_KEY
	Credentials credentials.TransportCredentials // ready TLS credentials (overrides the TLS fields below)
	// TLS as the Python and Node clients: TLSCA, a PEM file of roots to trust (env BBO_TLS_CA);
	// TLSCert / TLSKey, a client certificate for mutual TLS (env BBO_CLIENT_CERT / BBO_CLIENT_KEY);
	// TLS, TLS with the system's roots; TLSServerName, the name to check the server's certificate
	// against instead of the address's host. None set: plaintext.
	TLS           bool
	TLSCA         string
	TLSCert       string
	TLSKey        string
	TLSServerName string
	Timeout       time.Duration // per call (default 2 min)
	AskTimeout    time.Duration // per Ask (default 10 min: a batch over a wide space fits for minutes)
	Retries       int           // UNAVAILABLE retries per call (default 8; < 0 = none)
	Backoff       time.Duration // first retry delay (default 100 ms), doubled up to MaxBackoff
	MaxBackoff    time.Duration // default 5 s
	RatePatience  time.Duration // how long to keep honouring RetryInfo (default 2 min)
}

// Client is a connection to a bbo server. Safe for concurrent use by several goroutines.
type Client struct {
	address string
	conn    *grpc.ClientConn
	Stub    pb.BboServiceClient // the generated stub, for calls the wrapper does not cover (API key sent; no retries)
	opts    Options
}

// Dial connects to address ("host:port"). The connection is made lazily, so a server that is not
// up yet is retried by the first call rather than failing here.
func Dial(address string, opts Options) (*Client, error) {
	if opts.APIKey == "" {
		opts.APIKey = os.Getenv("BBO_API_KEY")
	}
	opts.APIKey = strings.TrimSpace(opts.APIKey) // a key read from a file ends in a newline
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Minute
	}
	if opts.AskTimeout == 0 {
		opts.AskTimeout = 10 * time.Minute
	}
	if opts.Retries == 0 {
		opts.Retries = 8
	}
	if opts.Backoff == 0 {
		opts.Backoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	if opts.RatePatience == 0 {
		opts.RatePatience = 2 * time.Minute
	}
	if opts.TLSCA == "" {
		opts.TLSCA = os.Getenv("BBO_TLS_CA")
	}
	if opts.TLSCert == "" {
		opts.TLSCert = os.Getenv("BBO_CLIENT_CERT")
	}
	if opts.TLSKey == "" {
		opts.TLSKey = os.Getenv("BBO_CLIENT_KEY")
	}
	if opts.Credentials == nil && (opts.TLS || opts.TLSCA != "" || opts.TLSCert != "" || opts.TLSKey != "") {
		creds, err := tlsCredentials(opts)
		if err != nil {
			return nil, err
		}
		opts.Credentials = creds
	}
	dial := []grpc.DialOption{grpc.WithInsecure()}
	if opts.Credentials != nil {
		dial = []grpc.DialOption{grpc.WithTransportCredentials(opts.Credentials)}
	}
	if key := opts.APIKey; key != "" { // on every call, the Stub's own included
		dial = append(dial, grpc.WithUnaryInterceptor(func(ctx context.Context, method string,
			req, reply interface{}, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
			return invoker(ctx, method, req, reply, cc, o...)
		}))
	}
	conn, err := grpc.Dial(address, dial...)
	if err != nil {
		return nil, err
	}
	return &Client{address: address, conn: conn, Stub: pb.NewBboServiceClient(conn), opts: opts}, nil
}

// tlsCredentials builds TLS credentials from the Options' TLS fields (see Options).
func tlsCredentials(opts Options) (credentials.TransportCredentials, error) {
	cfg := &tls.Config{ServerName: opts.TLSServerName}
	if opts.TLSCA != "" {
		pem, err := os.ReadFile(opts.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("TLSCA: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLSCA: no PEM certificate in %s", opts.TLSCA)
		}
	}
	if (opts.TLSCert == "") != (opts.TLSKey == "") {
		return nil, errors.New("a client certificate needs both TLSCert and TLSKey")
	}
	if opts.TLSCert != "" {
		pair, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("TLSCert / TLSKey: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(cfg), nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// WaitReady waits until the server accepts connections, as Python's wait_ready: an UNAVAILABLE
// status error once ctx ends first (bound it with context.WithTimeout).
func (c *Client) WaitReady(ctx context.Context) error {
	for {
		state := c.conn.GetState()
		if state == connectivity.Ready {
			return nil
		}
		if state == connectivity.Idle { // a newer grpc-go idles a channel: start connecting
			if conn, ok := interface{}(c.conn).(interface{ Connect() }); ok {
				conn.Connect()
			}
		}
		if !c.conn.WaitForStateChange(ctx, state) {
			return status.Errorf(codes.Unavailable, "no bbo server answered at %s: %v", c.address, ctx.Err())
		}
	}
}

// retryAfter is the delay a refusal's google.rpc.RetryInfo asks for, if it carries one.
func retryAfter(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.RetryDelay != nil {
			d := ri.GetRetryDelay() // getters: the old and the new Duration type both have them
			return time.Duration(d.GetSeconds())*time.Second + time.Duration(d.GetNanos()), true
		}
	}
	return 0, false
}

// grpcConcurrencyRefusal is gRPC's own refusal past a server's maximum_concurrent_rpcs (bbo's
// backstop behind --max-concurrent-rpcs): no RetryInfo, yet the call passes once the burst is over.
const grpcConcurrencyRefusal = "Concurrent RPC limit exceeded!"

// retryable: the same call may pass later without a named delay (the server away, or gRPC's
// refusal past its concurrent calls).
func retryable(err error) bool {
	return status.Code(err) == codes.Unavailable || busy(err)
}

// busy: gRPC's refusal past the server's concurrent calls (a refusal for load, as a rate limit's).
func busy(err error) bool {
	st := status.Convert(err)
	return st.Code() == codes.ResourceExhausted && st.Message() == grpcConcurrencyRefusal
}

// call runs fn with the API key and a deadline, retrying UNAVAILABLE (Retries times, with backoff)
// and refusals for load: gRPC's concurrency refusal (backoff) and those that name a retry delay,
// both within RatePatience, as Python's client. Other errors are returned as the gRPC status errors
// they are: status.Code(err) gives the code, status.Convert(err).Message() the server's words.
func (c *Client) call(ctx context.Context, fn func(ctx context.Context) error) error {
	return c.callFor(ctx, 0, fn)
}

// callFor is call; with patience > 0, every retryable refusal is retried for that long instead
// of Retries times (Optimize: a server restarting must not lose a result).
func (c *Client) callFor(ctx context.Context, patience time.Duration, fn func(ctx context.Context) error) error {
	return c.callWithin(ctx, c.opts.Timeout, patience, fn)
}

// callWithin is callFor with each attempt's deadline (Ask's is AskTimeout).
func (c *Client) callWithin(ctx context.Context, timeout, patience time.Duration, fn func(ctx context.Context) error) error {
	return c.attempts(ctx, timeout, patience, retryable, fn)
}

// answerLost: the call may have run on the server with its answer lost: the connection broke
// (UNAVAILABLE; also when the call never left, which cannot be told apart) or its deadline passed.
// A retry's answer then says what became of it (see DeleteStudy).
func answerLost(err error) bool {
	code := status.Code(err)
	return code == codes.Unavailable || code == codes.DeadlineExceeded
}

// attempts is callWithin, retrying with backoff the errors again(err) says may pass later.
func (c *Client) attempts(ctx context.Context, timeout, patience time.Duration, again func(error) bool, fn func(ctx context.Context) error) error {
	delay := c.opts.Backoff
	start := time.Now()
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		err := fn(cctx)
		cancel()
		if err == nil {
			return nil
		}
		var wait time.Duration
		if after, ok := retryAfter(err); ok {
			wait = time.Duration(float64(after) * (1 + 0.2*mrand.Float64()))
			if time.Since(start)+wait > c.opts.RatePatience && time.Since(start)+wait > patience {
				return err
			}
		} else if again(err) && (attempt < c.opts.Retries || time.Since(start)+delay/2 < patience ||
			(busy(err) && time.Since(start)+delay/2 < c.opts.RatePatience)) {
			wait = time.Duration(float64(delay) * (0.5 + mrand.Float64()))
			delay *= 2
			if delay > c.opts.MaxBackoff {
				delay = c.opts.MaxBackoff
			}
		} else {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

// orNewID is id, or a new request id where it is empty (a caller's request id, else one of its own).
func orNewID(id string) string {
	if id != "" {
		return id
	}
	return requestID()
}

func requestID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // the OS's random source is gone: nothing sensible to do
	}
	return hex.EncodeToString(b)
}

// Study is a handle on one study of the server.
type Study struct {
	Client  *Client
	Name    string
	Created bool // false when CreateStudy returned an existing study with the same spec

	mu   sync.Mutex
	info *pb.Study // the study as last read (CreateStudy, Info): its spec does not change
}

// CreateStudy creates the study, or reattaches to it when one of that name has the same spec
// (ALREADY_EXISTS when its spec differs).
func (c *Client) CreateStudy(ctx context.Context, name string, spec *pb.StudySpec) (*Study, error) {
	var res *pb.CreateStudyResponse
	err := c.call(ctx, func(ctx context.Context) (err error) {
		res, err = c.Stub.CreateStudy(ctx, &pb.CreateStudyRequest{Name: name, Spec: spec})
		return err
	})
	if err != nil {
		return nil, err
	}
	return &Study{Client: c, Name: res.Study.Name, Created: res.Created, info: res.Study}, nil
}

// DeleteStudy deletes the study name and everything of it; true once it is gone, NOT_FOUND where
// no study has that name. Retried as every call is, and past a deadline too: an attempt that
// failed UNAVAILABLE or DEADLINE_EXCEEDED may have deleted the study with its answer lost, so a
// NOT_FOUND answering a retry after one means it did (true, nil), not an error (as the Python and
// Node clients; docs/operations.md, "Retried calls").
func (c *Client) DeleteStudy(ctx context.Context, name string) (bool, error) {
	var res *pb.DeleteStudyResponse
	lost := false
	err := c.attempts(ctx, c.opts.Timeout, 0, func(err error) bool {
		if answerLost(err) && ctx.Err() == nil {
			lost = true
			return true
		}
		return retryable(err)
	}, func(ctx context.Context) (err error) {
		res, err = c.Stub.DeleteStudy(ctx, &pb.DeleteStudyRequest{Name: name})
		return err
	})
	if status.Code(err) == codes.NotFound && lost {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return res.Deleted, nil
}

// Study is a handle on a study, checking nothing: a study that is not there is NOT_FOUND at the
// handle's first call. OpenStudy is Python's client.study(name), which checks.
func (c *Client) Study(name string) *Study { return &Study{Client: c, Name: name} }

// OpenStudy is a handle on an existing study, its info read (NOT_FOUND where there is none), as
// Python's client.study(name).
func (c *Client) OpenStudy(ctx context.Context, name string) (*Study, error) {
	s := c.Study(name)
	if _, err := s.Info(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// GetStudy reads a study: its spec, state and trial counts (NOT_FOUND where there is none).
func (c *Client) GetStudy(ctx context.Context, name string) (*pb.Study, error) {
	var res *pb.Study
	err := c.call(ctx, func(ctx context.Context) (err error) {
		res, err = c.Stub.GetStudy(ctx, &pb.GetStudyRequest{Name: name})
		return err
	})
	return res, err
}

// ListStudies lists the studies (of the API key's tenant), all pages.
func (c *Client) ListStudies(ctx context.Context) ([]*pb.Study, error) {
	var out []*pb.Study
	err := c.pages(ctx, func(ctx context.Context, token string) (string, error) {
		res, err := c.Stub.ListStudies(ctx, &pb.ListStudiesRequest{PageToken: token})
		if err != nil {
			return "", err
		}
		out = append(out, res.Studies...)
		return res.NextPageToken, nil
	})
	return out, err
}

// pages reads a list page by page: page fetches the page at token (each attempt retried as call
// retries), keeps its items and returns the next page's token, "" after the last.
func (c *Client) pages(ctx context.Context, page func(ctx context.Context, token string) (string, error)) error {
	token := ""
	for {
		var next string
		err := c.call(ctx, func(ctx context.Context) (err error) {
			next, err = page(ctx, token)
			return err
		})
		if err != nil {
			return err
		}
		if token = next; token == "" {
			return nil
		}
	}
}

// Info reads the study (Client.GetStudy), NOT_FOUND where there is none.
func (s *Study) Info(ctx context.Context) (*pb.Study, error) {
	st, err := s.Client.GetStudy(ctx, s.Name)
	if err == nil {
		s.mu.Lock()
		s.info = st
		s.mu.Unlock()
	}
	return st, err
}

// cachedInfo is the study as last read, read now if it never was (its spec is what matters).
func (s *Study) cachedInfo(ctx context.Context) (*pb.Study, error) {
	s.mu.Lock()
	st := s.info
	s.mu.Unlock()
	if st != nil {
		return st, nil
	}
	return s.Info(ctx)
}

// Delete deletes the study (Client.DeleteStudy).
func (s *Study) Delete(ctx context.Context) (bool, error) { return s.Client.DeleteStudy(ctx, s.Name) }

// Ask returns count new pending trials for workerID. The request id is the same on every retry,
// so the server replays the first answer instead of creating trials twice.
func (s *Study) Ask(ctx context.Context, count int, workerID string) ([]*pb.Trial, error) {
	return s.AskWith(ctx, count, AskOptions{WorkerID: workerID})
}

// AskOptions tune AskWith, as the keywords of Python's ask. The zero value of each field means its
// default.
type AskOptions struct {
	WorkerID string
	// Lease: how long each trial may go without a heartbeat before the server ABANDONS it (0: the
	// server's default), as Python's lease_seconds
	Lease time.Duration
	// RequestID: the ask's id (default a new one), the same on every retry: the server answers a
	// repeat with the trials it gave the first
	RequestID string
	// Patience: retry a failure that may pass later (server away, rate limit) for this long instead
	// of Options.Retries times
	Patience time.Duration
}

// AskWith is Ask with options (AskOptions: the worker id, the lease, the request id, patience).
func (s *Study) AskWith(ctx context.Context, count int, opts AskOptions) ([]*pb.Trial, error) {
	req := &pb.AskRequest{
		Study: s.Name, Count: int32(count), WorkerId: opts.WorkerID, RequestId: orNewID(opts.RequestID),
		LeaseSeconds: opts.Lease.Seconds(),
	}
	var res *pb.AskResponse
	err := s.Client.callWithin(ctx, s.Client.opts.AskTimeout, opts.Patience, func(ctx context.Context) (err error) {
		res, err = s.Client.Stub.Ask(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	return res.Trials, nil
}

// Tell finishes trial as COMPLETED with metrics. The trial's study uid goes with it, so a tell
// never reaches a study deleted and created again under the same name (that is NOT_FOUND), and
// its budget (a study with a fidelity), so a continued trial's result equal to the one that paused
// it is not taken for that result told again. Its request id is the same on every retry: the
// server answers a retry whose first answer was lost as the tell it repeats.
func (s *Study) Tell(ctx context.Context, trial *pb.Trial, metrics map[string]float64) (*pb.Trial, error) {
	return trialOf(s.TellWith(ctx, trial, metrics, TellOptions{}))
}

// TellOptions tune TellWith, as the keywords of Python's tell. The zero value of each field means
// its default.
type TellOptions struct {
	// Sem: a metric's standard error (its observation noise, >= 0) by the metric's name, as
	// Python's {name: (value, sem)}; a metric not named here is told without one
	Sem map[string]float64
	// State: COMPLETED (default), FAILED, ABANDONED or PRUNED (Python's failed, abandoned,
	// pruned), with Reason
	State  pb.TrialState
	Reason string
	// Budget (a study with a fidelity): what the metrics were measured at; 0: the trial's budget
	// as asked when COMPLETED, else none (PRUNED: the largest budget it reported)
	Budget float64
	// RequestID: the tell's id (default a new one), the same on every retry: the server answers a
	// repeat under it as the tell it repeats, whatever became of the trial since
	RequestID string
	// Patience: retry a failure that may pass later (server away, rate limit) for this long instead
	// of Options.Retries times
	Patience time.Duration
}

// TellResult is a tell's answer, as Python's TellResult: the trial as stored, and Duplicate, true
// where this tell had already been recorded (the answer to a repeat).
type TellResult struct {
	Trial     *pb.Trial
	Duplicate bool
}

// TellWith is Tell with options (TellOptions: standard errors, the state and reason, the budget,
// the request id, patience), returning whether the server had already recorded it.
func (s *Study) TellWith(ctx context.Context, trial *pb.Trial, metrics map[string]float64, opts TellOptions) (*TellResult, error) {
	if err := checkSem(metrics, opts.Sem); err != nil {
		return nil, err
	}
	req := s.tellRequest(trial, metrics, opts) // built once: each retry repeats it, request id included
	var res *pb.TellResponse
	err := s.Client.callFor(ctx, opts.Patience, func(ctx context.Context) (err error) {
		res, err = s.Client.Stub.Tell(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &TellResult{Trial: res.Trial, Duplicate: res.Duplicate}, nil
}

// trialOf is a tell's trial, for the calls that return only that.
func trialOf(res *TellResult, err error) (*pb.Trial, error) {
	if err != nil {
		return nil, err
	}
	return res.Trial, nil
}

// TellValue is Tell of a single-objective study's value, as Python's tell(trial, 0.5): refused
// INVALID_ARGUMENT, naming the objectives, in a study with several.
func (s *Study) TellValue(ctx context.Context, trial *pb.Trial, value float64) (*pb.Trial, error) {
	name, err := s.objectiveName(ctx)
	if err != nil {
		return nil, err
	}
	return s.Tell(ctx, trial, map[string]float64{name: value})
}

// objectiveName is the name of the study's one objective, for a bare value; INVALID_ARGUMENT
// naming the objectives where it has several.
func (s *Study) objectiveName(ctx context.Context) (string, error) {
	st, err := s.cachedInfo(ctx)
	if err != nil {
		return "", err
	}
	objectives := st.GetSpec().GetObjectives()
	if len(objectives) != 1 {
		names := make([]string, len(objectives))
		for i, o := range objectives {
			names[i] = o.GetName()
		}
		return "", invalidArgument("metrics", fmt.Sprintf("a bare value is only accepted for a "+
			"single-objective study: pass a map {name: value} with each of the %d objectives (%s)",
			len(objectives), strings.Join(names, ", ")))
	}
	return objectives[0].GetName(), nil
}

// tellRequest is the request of every tell (Tell, Fail, Abandon, Prune, Optimize's), built once so
// that each retry repeats it under one request id.
func (s *Study) tellRequest(trial *pb.Trial, metrics map[string]float64, opts TellOptions) *pb.TellRequest {
	state, budget := opts.State, opts.Budget
	if state == pb.TrialState_TRIAL_STATE_UNSPECIFIED {
		state = pb.TrialState_TRIAL_STATE_COMPLETED
	}
	if budget == 0 && state == pb.TrialState_TRIAL_STATE_COMPLETED {
		budget = trial.Budget
	}
	return &pb.TellRequest{
		Study: s.Name, TrialId: trial.Id, Metrics: metricValues(metrics, opts.Sem), State: state,
		Reason: opts.Reason, RequestId: orNewID(opts.RequestID), StudyUid: trial.StudyUid, Budget: budget,
	}
}

// Fail finishes trial as FAILED with a reason.
func (s *Study) Fail(ctx context.Context, trial *pb.Trial, reason string) (*pb.Trial, error) {
	return trialOf(s.TellWith(ctx, trial, nil, failed(reason, 0)))
}

// failed, abandoned and pruned are the TellOptions of those tells (patience: as TellOptions').
func failed(reason string, patience time.Duration) TellOptions {
	return TellOptions{State: pb.TrialState_TRIAL_STATE_FAILED, Reason: reason, Patience: patience}
}

func abandoned(reason string, patience time.Duration) TellOptions {
	return TellOptions{State: pb.TrialState_TRIAL_STATE_ABANDONED, Reason: reason, Patience: patience}
}

func pruned(reason string, budget float64, patience time.Duration) TellOptions {
	return TellOptions{State: pb.TrialState_TRIAL_STATE_PRUNED, Reason: reason, Budget: budget, Patience: patience}
}

// Abandon finishes trial as ABANDONED (no result came back) with a reason, so that its point is
// suggested again now rather than when its lease runs out.
func (s *Study) Abandon(ctx context.Context, trial *pb.Trial, reason string) (*pb.Trial, error) {
	return trialOf(s.TellWith(ctx, trial, nil, abandoned(reason, 0)))
}

// metricValues is metrics as the request's map, each with its standard error in sem if it has one.
func metricValues(metrics, sem map[string]float64) map[string]*pb.MetricValue {
	m := make(map[string]*pb.MetricValue, len(metrics))
	for k, v := range metrics {
		m[k] = &pb.MetricValue{Value: v}
		if e, ok := sem[k]; ok {
			m[k].Sem = &e
		}
	}
	return m
}

// checkSem refuses a standard error for a metric not told (INVALID_ARGUMENT naming it), which
// metricValues would otherwise drop in silence.
func checkSem(metrics, sem map[string]float64) error {
	for k := range sem {
		if _, ok := metrics[k]; !ok {
			return invalidArgument(fmt.Sprintf("sem[%q]", k), "a standard error for a metric with no value")
		}
	}
	return nil
}

// Report records the first objective's value at step of trial's learning curve (measured at
// budget in a study with a fidelity; 0 = step) and returns the pruning policy's advice:
// ShouldStop (then Prune the trial) and its Reason.
func (s *Study) Report(ctx context.Context, trial *pb.Trial, step int64, value, budget float64) (*pb.ReportIntermediateResponse, error) {
	return s.report(ctx, trial, step, value, budget, 0)
}

func (s *Study) report(ctx context.Context, trial *pb.Trial, step int64, value, budget float64, patience time.Duration) (*pb.ReportIntermediateResponse, error) {
	req := &pb.ReportIntermediateRequest{
		Study: s.Name, TrialId: trial.Id, Step: step, Value: value, Budget: budget, StudyUid: trial.StudyUid,
	}
	var res *pb.ReportIntermediateResponse
	err := s.Client.callFor(ctx, patience, func(ctx context.Context) (err error) {
		res, err = s.Client.Stub.ReportIntermediate(ctx, req)
		return err
	})
	return res, err
}

// Prune finishes trial as PRUNED (stopped early) with a reason, its last metrics if given (nil:
// it keeps its last reported value), at budget (0: the largest it reported).
func (s *Study) Prune(ctx context.Context, trial *pb.Trial, reason string, metrics map[string]float64, budget float64) (*pb.Trial, error) {
	return trialOf(s.TellWith(ctx, trial, metrics, pruned(reason, budget, 0)))
}

// Heartbeat extends a pending trial's lease by as long as the lease it holds.
func (s *Study) Heartbeat(ctx context.Context, trial *pb.Trial) (*pb.Trial, error) {
	return s.HeartbeatLease(ctx, trial, 0)
}

// HeartbeatLease renews a pending trial's lease to lease from now (0: as long as the lease it
// holds), as Python's heartbeat(trial, lease_seconds): a worker that learns its evaluation runs
// longer asks for more.
func (s *Study) HeartbeatLease(ctx context.Context, trial *pb.Trial, lease time.Duration) (*pb.Trial, error) {
	req := &pb.HeartbeatRequest{
		Study: s.Name, TrialId: trial.Id, StudyUid: trial.StudyUid, LeaseSeconds: lease.Seconds(),
	}
	var res *pb.HeartbeatResponse
	err := s.Client.call(ctx, func(ctx context.Context) (err error) {
		res, err = s.Client.Stub.Heartbeat(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	return res.Trial, nil
}

// Trial reads one trial of the study (NOT_FOUND where there is none).
func (s *Study) Trial(ctx context.Context, id int64) (*pb.Trial, error) {
	var res *pb.Trial
	err := s.Client.call(ctx, func(ctx context.Context) (err error) {
		res, err = s.Client.Stub.GetTrial(ctx, &pb.GetTrialRequest{Study: s.Name, TrialId: id})
		return err
	})
	return res, err
}

// AddTrial attaches a point evaluated elsewhere (origin "user"), COMPLETED with metrics. params'
// values are float64 (or float32), an integer type, or string, as Params gives them. A retry
// carries the same request id, so the point is never added twice.
func (s *Study) AddTrial(ctx context.Context, params map[string]interface{}, metrics map[string]float64) (*pb.Trial, error) {
	return s.AddTrialWith(ctx, params, metrics, AddTrialOptions{})
}

// AddTrialOptions tune AddTrialWith, as the keywords of Python's add_trial. The zero value of each
// field means its default.
type AddTrialOptions struct {
	Failed bool               // add the point FAILED (metrics optional) instead of COMPLETED
	Sem    map[string]float64 // a metric's standard error by its name, as TellOptions.Sem
	// RequestID: the add's id (default a new one), the same on every retry: the server answers a
	// repeat under it with the trial the first added
	RequestID string
}

// AddTrialWith is AddTrial with options (AddTrialOptions: failed, standard errors, the request id).
func (s *Study) AddTrialWith(ctx context.Context, params map[string]interface{}, metrics map[string]float64, opts AddTrialOptions) (*pb.Trial, error) {
	if err := checkSem(metrics, opts.Sem); err != nil {
		return nil, err
	}
	state := pb.TrialState_TRIAL_STATE_COMPLETED
	if opts.Failed {
		state = pb.TrialState_TRIAL_STATE_FAILED
	}
	req := &pb.AddTrialRequest{
		Study: s.Name, Parameters: make(map[string]*pb.ParameterValue, len(params)),
		Metrics: metricValues(metrics, opts.Sem), State: state, RequestId: orNewID(opts.RequestID),
	}
	for k, v := range params {
		pv, err := parameterValue(v)
		if err != nil {
			return nil, invalidArgument(fmt.Sprintf("params[%q]", k), err.Error())
		}
		req.Parameters[k] = pv
	}
	var res *pb.Trial
	err := s.Client.call(ctx, func(ctx context.Context) (err error) {
		res, err = s.Client.Stub.AddTrial(ctx, req)
		return err
	})
	return res, err
}

// parameterValue is v as a ParameterValue (the inverse of Params).
func parameterValue(v interface{}) (*pb.ParameterValue, error) {
	switch x := v.(type) {
	case float64:
		return &pb.ParameterValue{Kind: &pb.ParameterValue_Number{Number: x}}, nil
	case float32:
		return &pb.ParameterValue{Kind: &pb.ParameterValue_Number{Number: float64(x)}}, nil
	case int:
		return &pb.ParameterValue{Kind: &pb.ParameterValue_Integer{Integer: int64(x)}}, nil
	case int32:
		return &pb.ParameterValue{Kind: &pb.ParameterValue_Integer{Integer: int64(x)}}, nil
	case int64:
		return &pb.ParameterValue{Kind: &pb.ParameterValue_Integer{Integer: x}}, nil
	case string:
		return &pb.ParameterValue{Kind: &pb.ParameterValue_Category{Category: x}}, nil
	default:
		return nil, fmt.Errorf("a parameter value is a float64, an integer or a string, got %T %v", v, v)
	}
}

// Trials lists the study's trials (all pages), or only those in states.
func (s *Study) Trials(ctx context.Context, states ...pb.TrialState) ([]*pb.Trial, error) {
	var out []*pb.Trial
	err := s.Client.pages(ctx, func(ctx context.Context, token string) (string, error) {
		res, err := s.Client.Stub.ListTrials(ctx, &pb.ListTrialsRequest{Study: s.Name, States: states, PageToken: token})
		if err != nil {
			return "", err
		}
		out = append(out, res.Trials...)
		return res.NextPageToken, nil
	})
	return out, err
}

// LlmCalls lists the study's exchanges with the LLM module, oldest first (all pages), or only
// those for purpose ("warmstart", "priors", "proposal", "related"; "": all), as Python's llm_calls.
func (s *Study) LlmCalls(ctx context.Context, purpose string) ([]*pb.LlmCall, error) {
	var out []*pb.LlmCall
	err := s.Client.pages(ctx, func(ctx context.Context, token string) (string, error) {
		res, err := s.Client.Stub.ListLlmCalls(ctx, &pb.ListLlmCallsRequest{Study: s.Name, Purpose: purpose, PageToken: token})
		if err != nil {
			return "", err
		}
		out = append(out, res.Calls...)
		return res.NextPageToken, nil
	})
	return out, err
}

// Best returns the best feasible trial (one objective) or the feasible Pareto front.
func (s *Study) Best(ctx context.Context) ([]*pb.Trial, error) {
	res, err := s.BestResult(ctx)
	if err != nil {
		return nil, err
	}
	return res.Trials, nil
}

// BestResult returns GetBest's whole answer: on a noisy objective the trial with the server's best
// posterior mean, Selection saying so, and Estimate (value, lower, upper in the objective's units)
// its model's value for that trial.
func (s *Study) BestResult(ctx context.Context) (*pb.GetBestResponse, error) {
	var res *pb.GetBestResponse
	err := s.Client.call(ctx, func(ctx context.Context) (err error) {
		res, err = s.Client.Stub.GetBest(ctx, &pb.GetBestRequest{Study: s.Name})
		return err
	})
	return res, err
}

// LeaseOf is the lease the server granted trial (both ends on its clock), or 600 s when unknown.
// It runs from the trial's last update (its ask): a paused trial continued by promotion was
// created rungs earlier.
func LeaseOf(trial *pb.Trial) time.Duration {
	from := trial.UpdateTime
	if from == nil {
		from = trial.CreateTime
	}
	if trial.LeaseExpireTime != nil && from != nil {
		if d := trial.LeaseExpireTime.AsTime().Sub(from.AsTime()); d > 0 {
			return d
		}
	}
	return 600 * time.Second
}

// Objective evaluates one trial's parameters and returns its metrics, or an error that fails it.
// RunningTrial(ctx) gives it the trial (a fidelity study's Budget and ResumeBudget) and Report.
type Objective func(ctx context.Context, params map[string]interface{}) (map[string]float64, error)

// ValueObjective is an Objective of a single-objective study that returns its objective's value
// (OptimizeValue), as Python's objective may return a bare number.
type ValueObjective func(ctx context.Context, params map[string]interface{}) (float64, error)

// ErrPruned is what Running.Report returns once the study's pruning policy says to stop: an
// objective that returns it (or wraps it) has its trial told PRUNED, and Optimize goes on.
var ErrPruned = errors.New("trial pruned")

// Running is the trial an Objective evaluates inside Optimize (see RunningTrial).
type Running struct {
	Trial    *pb.Trial
	study    *Study
	patience time.Duration
	reported bool    // Report was called: returning no metrics then means stopped early
	budget   float64 // the last report's budget
	reason   string  // the pruning policy's, once it said stop
}

type runningKey struct{}

// RunningTrial is the trial under way in Optimize's objective (ctx is the objective's), or nil.
func RunningTrial(ctx context.Context) *Running {
	r, _ := ctx.Value(runningKey{}).(*Running)
	return r
}

// Report records the objective's value at step (measured at budget; 0 = step), as Study.Report,
// and returns ErrPruned once the pruning policy says to stop the trial.
func (r *Running) Report(ctx context.Context, step int64, value, budget float64) error {
	res, err := r.study.report(ctx, r.Trial, step, value, budget, r.patience)
	if err != nil {
		return err
	}
	r.reported, r.budget = true, budget
	if res.ShouldStop {
		if r.reason = res.Reason; r.reason == "" {
			r.reason = "pruned"
		}
		return fmt.Errorf("%w: %s", ErrPruned, r.reason)
	}
	return nil
}

// OptimizeOptions tune OptimizeWith. The zero value of each field means its default.
type OptimizeOptions struct {
	WorkerID string        // the trials' worker id
	Lease    time.Duration // each trial's lease, as AskOptions.Lease (0: the server's default)
	Progress io.Writer     // where to draw a progress bar (e.g. os.Stderr); nil: none
	// TellPatience: how long asks and tells (a result, a failure) are retried while the server is
	// away, so that a restart neither ends the loop nor loses a result (default 10 min)
	TellPatience time.Duration
}

// Optimize asks, evaluates and tells n trials one after another as workerID, renewing each trial's
// lease at a third of the lease granted while fn runs. Its asks and tells are retried while the
// server is away, for up to OptimizeOptions.TellPatience. An error from fn fails that trial and the
// loop goes on; metrics the server refuses (INVALID_ARGUMENT) fail it too. Other errors stop it.
// When ctx ends, the trial under way is still told (for up to StopGrace): its metrics if fn
// returned them, else ABANDONED (a trial asked as ctx ended is not started); Optimize then
// returns ctx's error.
func (s *Study) Optimize(ctx context.Context, fn Objective, n int, workerID string) error {
	return s.OptimizeWith(ctx, fn, n, OptimizeOptions{WorkerID: workerID})
}

// OptimizeWith is Optimize with options: with Progress, a bar of the trials done and the study's
// best (GetBest, read at most every 2 s and after the last trial).
func (s *Study) OptimizeWith(ctx context.Context, fn Objective, n int, opts OptimizeOptions) error {
	if err := optimizeArgs(n, fn != nil); err != nil {
		return err
	}
	bar := newProgress(s, n, opts.Progress)
	workerID := opts.WorkerID
	if opts.TellPatience == 0 {
		opts.TellPatience = 10 * time.Minute
	}
	for i := 0; i < n; i++ {
		trials, err := s.AskWith(ctx, 1, AskOptions{WorkerID: workerID, Lease: opts.Lease, Patience: opts.TellPatience})
		if cerr := ended(ctx); err != nil && cerr != nil { // ended during the ask: as documented
			return withContext("optimize stopped", cerr)
		}
		if err != nil {
			return withContext("ask", err)
		}
		for _, t := range trials {
			if err := s.runTrial(ctx, fn, t, opts.TellPatience); err != nil {
				return err
			}
		}
		if ctx.Err() != nil {
			return withContext("optimize stopped", ctx.Err())
		}
		bar.done(ctx, i == n-1)
	}
	return nil
}

// OptimizeBest is OptimizeWith returning the study's best once the loop is done, as Python's
// optimize returns best(): GetBest's answer (BestResult), on a noisy objective the model's pick
// with its estimate, not the best value observed.
func (s *Study) OptimizeBest(ctx context.Context, fn Objective, n int, opts OptimizeOptions) (*pb.GetBestResponse, error) {
	if err := s.OptimizeWith(ctx, fn, n, opts); err != nil {
		return nil, err
	}
	return s.BestResult(ctx)
}

// OptimizeValue is OptimizeWith for an objective that returns a bare value: the study's one
// objective's. A study with several objectives is refused INVALID_ARGUMENT before any trial.
func (s *Study) OptimizeValue(ctx context.Context, fn ValueObjective, n int, opts OptimizeOptions) error {
	if err := optimizeArgs(n, fn != nil); err != nil {
		return err
	}
	name, err := s.objectiveName(ctx)
	if err != nil {
		return err
	}
	return s.OptimizeWith(ctx, func(ctx context.Context, params map[string]interface{}) (map[string]float64, error) {
		v, err := fn(ctx, params)
		if err != nil {
			return nil, err
		}
		return map[string]float64{name: v}, nil
	}, n, opts)
}

// optimizeArgs refuses Optimize's arguments before any call: a negative n ran nothing in silence,
// a nil objective panicked inside the first trial.
func optimizeArgs(n int, haveFn bool) error {
	if n < 0 {
		return invalidArgument("n", fmt.Sprintf("the number of trials must be >= 0, got %d", n))
	}
	if !haveFn {
		return invalidArgument("fn", "the objective is nil")
	}
	return nil
}

// StopGrace bounds the tell of the trial under way once Optimize's context has ended.
var StopGrace = 30 * time.Second

// runTrial evaluates t and tells what came of it (see Optimize), on a context of its own of
// StopGrace where ctx has ended: a trial left PENDING would hold its point for a whole lease.
func (s *Study) runTrial(ctx context.Context, fn Objective, t *pb.Trial, patience time.Duration) error {
	var metrics map[string]float64
	run := &Running{Trial: t, study: s, patience: patience}
	evalErr := ctx.Err() // asked as ctx ended: not started
	if evalErr == nil {
		metrics, evalErr = s.evaluate(context.WithValue(ctx, runningKey{}, run), fn, t)
	}
	tctx := ctx
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		tctx, cancel = context.WithTimeout(context.Background(), StopGrace)
		defer cancel()
	}
	var err error
	what := fmt.Sprintf("tell trial %d (metrics %v)", t.Id, metrics)
	switch {
	case run.reason != "" || errors.Is(evalErr, ErrPruned) || (evalErr == nil && metrics == nil && run.reported):
		// stopped early (told to, or no result after reporting): PRUNED at the last budget reported
		reason := run.reason
		if reason == "" {
			reason = "stopped by the objective"
		}
		_, err = s.TellWith(tctx, t, metrics, pruned(reason, run.budget, patience))
	case evalErr != nil && ctx.Err() != nil: // no result came back
		_, err = s.TellWith(tctx, t, nil, abandoned("optimize stopped: "+evalErr.Error(), patience))
	case evalErr != nil:
		what = fmt.Sprintf("tell trial %d (failed: %v)", t.Id, evalErr)
		_, err = s.TellWith(tctx, t, nil, failed(evalErr.Error(), patience))
	default:
		_, err = s.TellWith(tctx, t, metrics, TellOptions{Patience: patience})
		if status.Code(err) == codes.InvalidArgument {
			reason := "metrics refused: " + status.Convert(err).Message()
			_, err = s.TellWith(tctx, t, nil, failed(reason, patience))
		}
	}
	if err != nil {
		return withContext(what, err)
	}
	return nil
}

// ended is ctx's error, also in the instant after its deadline passed and before its timer set
// ctx.Err(): a call under that deadline can fail DEADLINE_EXCEEDED first.
func ended(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

// invalidArgument is an INVALID_ARGUMENT status error naming field (a BadRequest detail, as the
// server's own refusals carry), for an argument refused before any call.
func invalidArgument(field, msg string) error {
	st := status.New(codes.InvalidArgument, field+": "+msg)
	bad := &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
		{Field: field, Description: msg},
	}}
	if withBad, err := st.WithDetails(bad); err == nil {
		st = withBad
	}
	return st.Err()
}

// withContext puts what was being done before err's message and keeps its gRPC status (code
// and details), so that status.Code(err) still gives the code: the grpc-go Debian ships reads a
// status by a type assertion, which an fmt.Errorf wrapping hides (Optimize's errors read Unknown).
func withContext(what string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", what, err)
	}
	p := st.Proto()
	p.Message = what + ": " + p.Message
	return status.ErrorProto(p)
}

func (s *Study) evaluate(ctx context.Context, fn Objective, t *pb.Trial) (map[string]float64, error) {
	done := make(chan struct{})
	defer close(done)
	go func() { // keep the lease alive while fn runs
		tick := time.NewTicker(LeaseOf(t) / 3)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
				_, _ = s.Heartbeat(ctx, t) // a missed beat is retried on the next tick
			}
		}
	}()
	return fn(ctx, Params(t))
}

// Params turns a trial's parameter values into Go values: float64, int64 or string.
func Params(t *pb.Trial) map[string]interface{} {
	out := make(map[string]interface{}, len(t.Parameters))
	for k, v := range t.Parameters {
		switch x := v.Kind.(type) {
		case *pb.ParameterValue_Number:
			out[k] = x.Number
		case *pb.ParameterValue_Integer:
			out[k] = x.Integer
		case *pb.ParameterValue_Category:
			out[k] = x.Category
		}
	}
	return out
}

// Number is a numeric parameter of params as a float64 (an integer value converted).
func Number(params map[string]interface{}, name string) (float64, error) {
	switch v := params[name].(type) {
	case float64:
		return v, nil
	case int64:
		return float64(v), nil
	case nil:
		return 0, fmt.Errorf("no parameter %q", name)
	default:
		return 0, fmt.Errorf("parameter %q is %T, not a number", name, v)
	}
}

// FloatParam, IntParam, CategoricalParam: search-space entries for a StudySpec.
func FloatParam(name string, low, high float64) *pb.ParameterSpec {
	return &pb.ParameterSpec{Name: name, Kind: &pb.ParameterSpec_Float{
		Float: &pb.FloatParameter{Low: low, High: high},
	}}
}

func IntParam(name string, low, high int64) *pb.ParameterSpec {
	return &pb.ParameterSpec{Name: name, Kind: &pb.ParameterSpec_Int{
		Int: &pb.IntParameter{Low: low, High: high},
	}}
}

func CategoricalParam(name string, choices ...string) *pb.ParameterSpec {
	return &pb.ParameterSpec{Name: name, Kind: &pb.ParameterSpec_Categorical{
		Categorical: &pb.CategoricalParameter{Choices: choices},
	}}
}

// Minimize and Maximize: objectives for a StudySpec.
func Minimize(name string) *pb.Objective {
	return &pb.Objective{Name: name, Goal: pb.Goal_GOAL_MINIMIZE}
}

func Maximize(name string) *pb.Objective {
	return &pb.Objective{Name: name, Goal: pb.Goal_GOAL_MAXIMIZE}
}

// LogFloatParam and LogIntParam are FloatParam and IntParam searched on a log scale (low > 0), as
// Python's Float(name, low, high, log=True) and Int(..., log=True): a learning rate, a layer width.
func LogFloatParam(name string, low, high float64) *pb.ParameterSpec {
	p := FloatParam(name, low, high)
	p.GetFloat().Scale = pb.Scale_SCALE_LOG
	return p
}

func LogIntParam(name string, low, high int64) *pb.ParameterSpec {
	p := IntParam(name, low, high)
	p.GetInt().Scale = pb.Scale_SCALE_LOG
	return p
}

// OrdinalParam: ordered numeric values, ascending (batch sizes 16, 32, 64), as Python's Ordinal; a
// trial's value is an int64 when every value is whole, else a float64. LogOrdinalParam: on a log
// scale (Ordinal(..., log=True)).
func OrdinalParam(name string, values ...float64) *pb.ParameterSpec {
	return &pb.ParameterSpec{Name: name, Kind: &pb.ParameterSpec_Ordinal{
		Ordinal: &pb.OrdinalParameter{Values: values},
	}}
}

func LogOrdinalParam(name string, values ...float64) *pb.ParameterSpec {
	p := OrdinalParam(name, values...)
	p.GetOrdinal().Scale = pb.Scale_SCALE_LOG
	return p
}

// FixedParam: a parameter held at value (float64, an integer or a string, as AddTrial's params),
// passed to the objective and not searched, as Python's Fixed. A value of another type is sent
// empty, which CreateStudy's server refuses INVALID_ARGUMENT naming the parameter.
func FixedParam(name string, value interface{}) *pb.ParameterSpec {
	v, err := parameterValue(value)
	if err != nil {
		v = &pb.ParameterValue{}
	}
	return &pb.ParameterSpec{Name: name, Kind: &pb.ParameterSpec_Fixed{Fixed: &pb.FixedParameter{Value: v}}}
}

// Constraint: a black-box constraint on a reported metric, op "<=" or ">=", as Python's
// Constraint("latency_ms", "<=", 200) (StudySpec.OutcomeConstraints). Another op is sent as an
// unknown value, which CreateStudy's server refuses INVALID_ARGUMENT naming the field.
func Constraint(metric, op string, bound float64) *pb.OutcomeConstraint {
	ops := map[string]pb.ConstraintOp{
		"<=": pb.ConstraintOp_CONSTRAINT_OP_LESS_EQUAL, ">=": pb.ConstraintOp_CONSTRAINT_OP_GREATER_EQUAL,
	}
	o, ok := ops[op]
	if !ok {
		o = -1
	}
	return &pb.OutcomeConstraint{Metric: metric, Op: o, Bound: bound}
}

// Prior: a belief that a numeric parameter's optimum lies near mean (std > 0, the parameter's
// units), with confidence in (0, 1] (0: 0.5), as Python's Prior(parameter, mean=, std=,
// confidence=) (StudySpec.Priors). ChoicePrior: a categorical parameter's probabilities.
func Prior(parameter string, mean, std, confidence float64) *pb.ParameterPrior {
	return &pb.ParameterPrior{Parameter: parameter, Mean: &mean, Std: &std, Confidence: confidence}
}

func ChoicePrior(parameter string, probabilities map[string]float64, confidence float64) *pb.ParameterPrior {
	return &pb.ParameterPrior{Parameter: parameter, Probabilities: probabilities, Confidence: confidence}
}
