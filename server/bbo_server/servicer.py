"""The BboService servicer: each RPC validates its request, calls the core and converts back."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import grpc
from google.protobuf.message_factory import GetMessageClass

from bbo.errors import BboError, NotFoundError, SpecError
from bbo.paging import cut_page, page_bounds, page_prefix, page_token, read_lazily
from bbo.registry import DEFAULT_TENANT, StudyRegistry, check_name, encode_page_token
from bbo.study import Study
from bbo.trial import TrialState
from bbo_client.v1 import service_pb2 as svc
from bbo_client.v1 import service_pb2_grpc
from bbo_client.v1 import study_pb2 as pb
from bbo_server import convert as C
from bbo_server.errors import status_for
from bbo_server.limits import TenantCalls
from bbo_server.logs import request_ids

log = logging.getLogger("bbo.server")

Authenticate = Callable[[grpc.ServicerContext, str], str]
"""(context, rpc method name) -> tenant; raises bbo_server.errors.Unauthenticated / PermissionDenied."""

MAX_ID_LEN = 128


def default_authenticate(context: grpc.ServicerContext, method: str) -> str:
    return DEFAULT_TENANT


def rpc(fn):
    """Authenticate, run, log; turn core errors into status codes (never INTERNAL for bad input).
    Once the tenant is known, the call counts against its ``--max-tenant-rpcs`` until it returns
    (:class:`bbo_server.limits.TenantCalls`)."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: BboServicer, request, context: grpc.ServicerContext):
        t0 = time.perf_counter()
        status = None
        try:
            tenant = self.authenticate(context, name)
            if isinstance(request, Undecodable):
                raise SpecError("request", request.message())
            if self.tenant_calls is None:
                return fn(self, request, context, tenant)
            with self.tenant_calls.hold(tenant, name):
                return fn(self, request, context, tenant)
        except BboError as e:
            status = status_for(e)
        except Exception as e:  # a bug: log it whole, tell the caller little
            log.exception(
                "rpc failed",
                extra={"rpc": name, **request_ids(request)},
            )
            status = status_for(e)
        finally:
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "rpc",
                    extra={
                        "rpc": name,
                        "ms": round(1e3 * (time.perf_counter() - t0), 3),
                        **request_ids(request),
                        "code": status.code.name if status else "OK",
                    },
                )
        if status.code != grpc.StatusCode.INTERNAL:
            log.info(
                "rpc refused",
                extra={
                    "rpc": name,
                    "code": status.code.name,
                    "detail": status.details,
                    **request_ids(request),
                },
            )
        context.abort_with_status(status)

    return wrapper


class Undecodable:
    """What a request's bytes that do not parse as its message stand for (a string field that is
    not UTF-8, bytes cut short). gRPC answered such a request INTERNAL ("Exception deserializing
    request!") and logged a traceback at error level, before authentication; with the lenient
    deserializers of :func:`add_to_server` it reaches the handler, which authenticates the call and
    refuses it INVALID_ARGUMENT. It has no request fields: logs and limits read none."""

    __slots__ = ("type_name", "error")

    def __init__(self, type_name: str, error: str):
        self.type_name, self.error = type_name, error

    def message(self) -> str:
        return (
            f"the request is not a valid {self.type_name} ({self.error}): a string field holds "
            "bytes that are not UTF-8, or the message is cut short or corrupt"
        )


def _lenient(cls) -> Callable[[bytes], object]:
    """``cls.FromString`` that never raises: bytes it cannot parse become an :class:`Undecodable`."""

    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except Exception as e:  # DecodeError, or whatever else the parser raises on bad bytes
            return Undecodable(cls.DESCRIPTOR.full_name, str(e)[:200] or type(e).__name__)

    return parse


_SERVICE = svc.DESCRIPTOR.services_by_name["BboService"]


def add_to_server(servicer: BboServicer, server: grpc.Server) -> None:
    """``service_pb2_grpc.add_BboServiceServicer_to_server``, with request deserializers that
    never raise (:class:`Undecodable`)."""
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, m.name),
            request_deserializer=_lenient(GetMessageClass(m.input_type)),
            response_serializer=GetMessageClass(m.output_type).SerializeToString,
        )
        for m in _SERVICE.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),)
    )
    register = getattr(server, "add_registered_method_handlers", None)
    if register is not None:  # grpcio >= 1.63: the generated code registers them too
        register(_SERVICE.full_name, handlers)


def _check_id(value: str, field: str) -> str:
    if len(value) > MAX_ID_LEN:
        raise SpecError(field, f"at most {MAX_ID_LEN} characters")
    return value


class BboServicer(service_pb2_grpc.BboServiceServicer):
    def __init__(
        self,
        registry: StudyRegistry,
        authenticate: Authenticate | None = None,
        tenant_calls: TenantCalls | None = None,
    ):
        self.registry = registry
        self.authenticate = authenticate or default_authenticate
        self.tenant_calls = tenant_calls  # None: no bound on one tenant's calls at once

    def _study(self, name: str, tenant: str) -> Study:
        if not name:
            raise SpecError("study", "study name is required")
        return self.registry.get_study(name, tenant)

    # ---- studies --------------------------------------------------------------------------------
    @rpc
    def CreateStudy(self, request: svc.CreateStudyRequest, context, tenant):
        if not request.HasField("spec"):
            raise SpecError("spec", "spec is required")
        check_name(request.name)
        with C.spec_field("spec"):  # limits checked on the dict, before anything is built from it
            study, created = self.registry.create_study(
                request.name,
                C.spec_dict_from_pb(request.spec),
                tenant,
                wait_s=context.time_remaining(),  # None: the caller set no deadline
            )
        return svc.CreateStudyResponse(study=C.study_to_pb(study.info()), created=created)

    @rpc
    def GetStudy(self, request: svc.GetStudyRequest, context, tenant):
        return C.study_to_pb(self._study(request.name, tenant).info())

    @rpc
    def ListStudies(self, request: svc.ListStudiesRequest, context, tenant):
        studies, nxt = self.registry.list_studies(tenant, request.page_size, request.page_token)
        read = 0

        def described():
            """``(study, message)`` of each study listed that is still there, converted as the
            page fills: one deleted since it was listed is left out (its NOT_FOUND failed the
            whole listing)."""
            nonlocal read
            for st in studies:
                try:
                    message = C.study_to_pb(st.info())
                except NotFoundError:
                    continue
                read += 1
                yield st, message

        out = page_prefix(described(), lambda pair: pair[1].ByteSize())
        if len(out) < read:  # the page's bytes ran out before its studies
            nxt = encode_page_token(out[-1][0].record)
        return svc.ListStudiesResponse(studies=[p for _, p in out], next_page_token=nxt)

    @rpc
    def DeleteStudy(self, request: svc.DeleteStudyRequest, context, tenant):
        if not request.name:
            raise SpecError("name", "study name is required")
        return svc.DeleteStudyResponse(deleted=self.registry.delete_study(request.name, tenant))

    # ---- ask / tell -----------------------------------------------------------------------------
    @rpc
    def Ask(self, request: svc.AskRequest, context, tenant):
        study = self._study(request.study, tenant)
        res = study.ask(
            count=request.count,
            worker_id=_check_id(request.worker_id, "worker_id"),
            request_id=_check_id(request.request_id, "request_id"),
            lease_seconds=request.lease_seconds,
            alive=context.is_active,
            wait_s=context.time_remaining(),  # None: the caller set no deadline
        )
        return svc.AskResponse(trials=[C.trial_to_pb(t, study) for t in res.trials], note=res.note)

    @rpc
    def Tell(self, request: svc.TellRequest, context, tenant):
        study = self._study(request.study, tenant)
        state = (
            None
            if request.state == pb.TRIAL_STATE_UNSPECIFIED
            else C.trial_state_from_pb(request.state, "state")
        )
        res = study.tell(
            request.trial_id,
            C.metrics_from_pb(request.metrics),
            state=state,
            reason=request.reason,
            request_id=_check_id(request.request_id, "request_id"),
            study_uid=request.study_uid,
            budget=request.budget or None,
        )
        return svc.TellResponse(trial=C.trial_to_pb(res.trial, study), duplicate=res.duplicate)

    @rpc
    def AddTrial(self, request: svc.AddTrialRequest, context, tenant):
        study = self._study(request.study, tenant)
        state = (
            TrialState.COMPLETED
            if request.state == pb.TRIAL_STATE_UNSPECIFIED
            else C.trial_state_from_pb(request.state, "state")
        )
        t = study.add_trial(
            C.params_from_pb(request.parameters),
            C.metrics_from_pb(request.metrics),
            state=state,
            request_id=_check_id(request.request_id, "request_id"),
            budget=request.budget or None,
        )
        return C.trial_to_pb(t, study)

    @rpc
    def GetTrial(self, request: svc.GetTrialRequest, context, tenant):
        study = self._study(request.study, tenant)
        return C.trial_to_pb(study.get_trial(request.trial_id), study)

    @rpc
    def ListTrials(self, request: svc.ListTrialsRequest, context, tenant):
        study = self._study(request.study, tenant)
        # each distinct state once (the first index names a bad one): a filter repeating a state
        # a million times (4 MiB of request) became as many SQL parameters, and INTERNAL
        first: dict[int, int] = {}
        for i, s in enumerate(request.states):
            first.setdefault(s, i)
        states = [C.trial_state_from_pb(s, f"states[{i}]") for s, i in first.items()]
        scope = f"trials|{study.uid}|{sorted(s.value for s in states)}"
        size, after = page_bounds(
            request.page_size, request.page_token, default=1000, maximum=10000, scope=scope
        )
        # read as the page fills: a page of 10,000 trials of hundreds of metrics each was read
        # whole (hundreds of MB) to send 2 MiB of it
        trials = read_lazily(
            lambda a, n: study.trials(states, after=a, limit=n),
            after,
            size + 1,
            key=lambda t: t.id,
            max_chunk=512,
        )
        out, more = cut_page(
            trials, size, lambda t: (t, C.trial_to_pb(t, study)), lambda p: p[1].ByteSize()
        )
        return svc.ListTrialsResponse(
            trials=[p for _, p in out],
            next_page_token=page_token(out[-1][0].id, scope) if more else "",
        )

    @rpc
    def GetBest(self, request: svc.GetBestRequest, context, tenant):
        study = self._study(request.study, tenant)
        b = study.best()
        shown = page_prefix((C.trial_to_pb(t, study) for t in b.trials), lambda m: m.ByteSize())
        return svc.GetBestResponse(
            trials=shown,
            best_count=len(b.trials),
            state=C.STUDY_STATE_TO_PB.get(b.state, pb.STUDY_STATE_ACTIVE),
            state_reason=b.state_reason,
            selection=b.selection,
            estimate=None if b.estimate is None else svc.Estimate(**b.estimate._asdict()),
        )

    @rpc
    def ReportIntermediate(self, request: svc.ReportIntermediateRequest, context, tenant):
        study = self._study(request.study, tenant)
        stop, reason = study.report_intermediate(
            request.trial_id,
            request.step,
            request.value,
            study_uid=request.study_uid,
            budget=request.budget or None,
        )
        return svc.ReportIntermediateResponse(should_stop=stop, reason=reason)

    @rpc
    def Heartbeat(self, request: svc.HeartbeatRequest, context, tenant):
        study = self._study(request.study, tenant)
        return svc.HeartbeatResponse(
            trial=C.trial_to_pb(
                study.heartbeat(
                    request.trial_id, request.lease_seconds, study_uid=request.study_uid
                ),
                study,
            )
        )

    @rpc
    def ListLlmCalls(self, request: svc.ListLlmCallsRequest, context, tenant):
        study = self._study(request.study, tenant)
        purpose = request.purpose or None
        scope = f"llm_calls|{study.uid}|{purpose or ''}"
        size, after = page_bounds(
            request.page_size, request.page_token, default=100, maximum=1000, scope=scope
        )
        # a call holds up to a 1 MiB answer: read 16 at a time as the page fills, not 1,001
        calls = read_lazily(
            lambda a, n: study.llm_calls(purpose, after=a, limit=n),
            after,
            size + 1,
            key=lambda c: c.number,
        )
        out, more = cut_page(
            calls, size, lambda c: (c, C.llm_call_to_pb(c)), lambda p: p[1].ByteSize()
        )
        return svc.ListLlmCallsResponse(
            calls=[p for _, p in out],
            next_page_token=page_token(out[-1][0].number, scope) if more else "",
        )
