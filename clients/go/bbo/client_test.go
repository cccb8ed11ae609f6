package bbo

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
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
