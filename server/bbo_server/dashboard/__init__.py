"""The read-only web dashboard of ``bbo serve --dashboard-port``: a Starlette app run by uvicorn
on a thread of the server process, reading through the core's public objects only.

Starlette + uvicorn rather than Flask + waitress: both are small and well kept, but anyio and h11
(their dependencies) are already in the environment, sync endpoints run on a thread pool (the core
is blocking), and uvicorn can serve a socket bound in advance (a taken port fails ``bbo serve``
at start-up with a clear message) and be stopped from another thread.

Routes (GET only; there is no write path):

- ``/`` and ``/static/*``: the page, its script and style, and plotly.min.js from the installed
  ``plotly`` package (no CDN). They hold no data and are the same for everyone.
- ``/api/session``: the caller's tenant; ``/api/studies?after=TOKEN&limit=N``: a page of the
  tenant's studies (at most ``limit``, default :data:`DEFAULT_STUDY_PAGE`, maximum
  :data:`MAX_STUDY_PAGE`; ``next`` is the next page's ``after``).
- ``/api/studies/{name}``: a study's summary, bounded whatever the study's size: its spec, state,
  trial counts by state, and its best trials (as GetBest: with how they were chosen and, where by
  the model, its estimate of the objective; at most :data:`MAX_BEST` of them, ``best_count``
  says how many there are). Its trials and curves come in pages:
- ``/api/studies/{name}/trials?after=ID&limit=N``: the trials numbered above ``after``, by id, at
  most ``limit`` (default and maximum :data:`MAX_TRIAL_PAGE`). Each says whether it is ``open``
  (pending, paused, or abandoned by a lapsed lease: its state may still change); the page
  re-reads from its first open trial and keeps the rest (ids only grow, finished trials stay).
- ``/api/studies/{name}/intermediates?after=ID&after_step=S&limit=N``: reported intermediate
  values as ``[trial, step, value]`` by trial and step, at most ``limit`` (default and maximum
  :data:`MAX_POINT_PAGE`): those of the trials above ``after``, or with ``after_step`` those
  after that step of trial ``after`` (the last point of a page is the next page's cursor).
- ``/api/studies/{name}/llm_calls?after=ID&limit=N``: its LLM call log, oldest first, at most
  ``limit`` (default 100, maximum :data:`MAX_LLM_PAGE`).

Every page also ends early past :data:`bbo.paging.PAGE_BYTES` (as the gRPC List calls' pages do)
and says with ``more`` whether to ask for what follows it. A query argument out of range is 400,
naming it and its range.

With ``--rate-limit``, each tenant's ``/api`` requests are held to the API's rate and burst in
a bucket of their own; a request over it is 429 with a Retry-After (the page waits and retries).
The endpoints run on :data:`THREADS` threads shared by every tenant; one tenant has at most
:data:`TENANT_REQUESTS` (half) of them at once, and with several tenants busy each has at most
its share (:meth:`bbo_server.limits.TenantCalls.bound`: the threads divided among them and one
more); a request past that is 429 too, so the busy tenants' slow requests (summaries waiting on
their studies' running asks) leave threads free and another tenant's page is answered.

With API keys on (the gRPC API's ``--auth``), every ``/api`` request needs a key (``x-api-key``
or ``Authorization: Bearer``), else 401; the page asks for it once and keeps it in the tab's
sessionStorage. Another tenant's study is 404, as NOT_FOUND is in the API.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import math
import socket
import ssl
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, NoReturn

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bbo.errors import LimitError, NotFoundError, SpecError
from bbo.paging import cut_page, page_prefix, read_lazily
from bbo.registry import DEFAULT_TENANT, StudyRegistry
from bbo.study import Study
from bbo.study_trials import late
from bbo.trial import Trial, TrialState
from bbo_server.auth import is_loopback
from bbo_server.limits import TenantCalls, default_tenant_rpcs

log = logging.getLogger("bbo.dashboard")

STATIC = Path(__file__).resolve().parent / "static"
MAX_LLM_PAGE = 200
MAX_TRIAL_PAGE = 1000  # trials per /trials page
MAX_POINT_PAGE = 10_000  # intermediate values per /intermediates page (one trial's default max)
MAX_BEST = 1000  # best trials in a summary (a many-objective Pareto front may hold more)
# threads running the endpoints (anyio's pool for Starlette's sync endpoints, sized at start-up),
# shared by the tenants, and how many of them one tenant's requests hold at once (alone; less with
# several busy): without a bound 40 requests of one tenant, each waiting on its study's running
# ask, held them all and every other tenant's page waited
THREADS = 40
TENANT_REQUESTS = default_tenant_rpcs(THREADS)

# The page loads nothing from elsewhere; plotly injects <style> elements, hence 'unsafe-inline'
# for styles only.
_HEADERS = [
    (
        b"content-security-policy",
        (
            b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            b"img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
            b"base-uri 'none'; form-action 'none'"
        ),
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def plotly_js() -> Path:
    """plotly.min.js as the ``plotly`` package ships it (package data, served as a file)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the dashboard needs the 'plotly' package: pip install plotly")
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise RuntimeError(f"plotly.min.js not found at {path}: reinstall the 'plotly' package")
    return path


class _SecurityHeaders:
    """ASGI middleware: the same protective headers on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + _HEADERS
            await send(message)

        return await self.app(scope, receive, send_with_headers)


class _LoopbackHost:
    """ASGI middleware for a dashboard without API keys (served on a loopback address only): a
    request whose ``Host`` names anything but a loopback address is refused (400). A web page on
    another site whose name an attacker re-points at 127.0.0.1 (DNS rebinding) is same-origin to
    the browser and could otherwise read every study; its requests carry that site's name."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1").strip()
        host = raw[1 : raw.find("]")] if raw.startswith("[") else raw.rsplit(":", 1)[0]
        if is_loopback(host):
            return await self.app(scope, receive, send)
        response = JSONResponse(
            {
                "error": f"Host {raw[:100]!r} is not a loopback address: without API keys the "
                "dashboard answers only requests addressed to 127.0.0.1, ::1 or localhost",
                "status": 400,
            },
            status_code=400,
            headers={"cache-control": "no-store"},
        )
        return await response(scope, receive, send)


def key_from_headers(request: Request) -> str | None:
    """The API key of ``x-api-key`` or ``Authorization: Bearer`` (as the gRPC gate reads it);
    "" when an Authorization header is not a bearer token, None when no key is sent."""
    key = request.headers.get("x-api-key")
    if key is not None:
        return key.strip()
    auth = request.headers.get("authorization")
    if auth is None:
        return None
    parts = auth.strip().split(None, 1)
    return parts[1].strip() if len(parts) == 2 and parts[0].lower() == "bearer" else ""


def _seconds(t: float | None) -> float | None:
    return round(t, 3) if t else None


def trial_json(t: Trial, spec, required: list[str] | None = None) -> dict[str, Any]:
    """A trial for the page; ``required``: ``spec.required_metrics``, computed once per study."""
    values = {k: m.value for k, m in t.metrics.items()}
    required = spec.required_metrics if required is None else required
    done = t.state is TrialState.COMPLETED and all(m in values for m in required)
    return {
        "id": t.id,
        "state": t.state.value,
        "origin": t.origin,
        "worker": t.worker_id,
        "params": t.params,
        "metrics": values,
        "sems": {k: m.sem for k, m in t.metrics.items() if m.sem is not None},
        "feasible": bool(done and spec.is_feasible(values)),
        "reason": t.reason,
        "rationale": t.rationale,
        "created": _seconds(t.created_at),
        "updated": _seconds(t.updated_at),
        # its state (and curve) may still change: the page reads it again
        "open": t.state in (TrialState.PENDING, TrialState.PAUSED) or late(t),
    }


def _json_size(item: Any) -> int:
    return len(json.dumps(item, separators=(",", ":")).encode())


def study_json(study: Study, info=None, description: bool = True) -> dict[str, Any]:
    """A study's summary; the study list leaves out the description (up to
    ``--max-description-bytes`` each, and the list shows none)."""
    info = study.info() if info is None else info
    out = {
        "name": info.name,
        "uid": info.uid,
        "state": info.state,
        "state_reason": info.state_reason,
        "created": _seconds(info.created_at),
        "trial_count": info.trial_count,
        "completed_count": info.completed_count,
        "objectives": [{"name": o.name, "goal": o.goal} for o in info.spec.objectives],
    }
    if description:
        out["description"] = info.spec.description
    return out


def _api(endpoint):
    """An ``/api`` endpoint, called with the caller's tenant (:meth:`Dashboard.tenant`) as one of
    at most :data:`TENANT_REQUESTS` requests of that tenant running at once, fewer with other
    tenants busy (429 with a Retry-After past it). A study deleted while the request reads it is
    404, as one deleted before it (the core says NotFoundError; uncaught, it was a 500 and a
    logged traceback)."""

    @functools.wraps(endpoint)
    def wrapper(self, request: Request):
        tenant = self.tenant(request)
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.calls.serving(tenant, _busy(tenant)))
            except LimitError as e:
                raise _retry_later(e) from None
            try:
                return endpoint(self, request, tenant)
            except NotFoundError:
                raise _missing(request.path_params.get("name", "")) from None

    return wrapper


def _busy(tenant: str) -> str:
    """The refusal of a request past the tenant's bound (``{n}``: its count, ``{share}``: the
    tenants busy, with several)."""
    return (
        f"tenant '{tenant}' has {{n}} dashboard requests running, the most one tenant may hold "
        f"of the dashboard's {THREADS} threads{{share}}; retry later"
    )


def _retry_later(e: LimitError) -> HTTPException:
    """429 for a request over one of its tenant's limits, with when to retry."""
    wait = getattr(e, "retry_after", 1.0) or 1.0
    return HTTPException(429, str(e), headers={"Retry-After": str(max(1, math.ceil(wait)))})


def _missing(name: str) -> HTTPException:
    """404 for a study ``name`` (cut as the core's message cuts it: a 100 KB name in the URL was
    echoed whole)."""
    return HTTPException(404, f"study '{name[:140]}' not found")


class Dashboard:
    """The app's endpoints over one registry; ``keys`` (a KeyStore) None = no authentication.

    A study's page polls its summary every few seconds. The summary is kept per study and sent
    again while the study's state and its trial counts by state (counted by the database) are
    unchanged: the best trials, found among all completed ones (GetBest's cost, which a model fit
    may dominate), change only when those do, so an idle tab costs no best-trial search. Its
    trials and curves are read in bounded pages.
    """

    CACHED_STUDIES = 32

    def __init__(
        self,
        registry: StudyRegistry,
        keys=None,
        default_tenant: str = DEFAULT_TENANT,
        limits=None,
    ):
        self.registry, self.keys, self.default_tenant = registry, keys, default_tenant
        self.limits = limits  # the API gate's LimitChecker (--rate-limit), or None
        self._cache: OrderedDict[tuple, tuple[tuple, bytes]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.calls = TenantCalls(TENANT_REQUESTS, THREADS)  # each tenant's requests at once

    def tenant(self, request: Request) -> str:
        """The caller's tenant (401 without a valid key), within the tenant's rate (429 with a
        Retry-After over it: every ``/api`` request calls this once)."""
        tenant = self._authenticate(request)
        if self.limits is not None:
            try:
                self.limits.check_dashboard(tenant)
            except LimitError as e:
                from bbo_server import metrics as M

                M.LIMIT_REFUSALS.labels(limit="rate").inc()
                raise _retry_later(e) from None
        return tenant

    def _authenticate(self, request: Request) -> str:
        if self.keys is None:
            return self.default_tenant
        from bbo_server import metrics as M

        key = key_from_headers(request)
        if key is None:
            M.AUTH_FAILURES.labels(reason="missing").inc()
            self._refuse(
                "missing API key: send 'x-api-key: <key>' or 'Authorization: Bearer <key>' "
                "(create one with `bbo keys create --tenant NAME`)"
            )
        tenant = self.keys.verify(key) if key else None
        if tenant is None:
            M.AUTH_FAILURES.labels(reason="invalid").inc()
            self._refuse("invalid API key (unknown, malformed or revoked)")
        return tenant

    @staticmethod
    def _refuse(message: str) -> NoReturn:
        raise HTTPException(401, message, headers={"WWW-Authenticate": 'Bearer realm="bbo"'})

    def study(self, request: Request, tenant: str) -> Study:
        name = request.path_params["name"]
        try:
            return self.registry.get_study(name, tenant)
        except NotFoundError:
            raise _missing(name) from None

    # ---- endpoints (sync: Starlette runs them on its thread pool) ------------------------------
    @_api
    def session(self, request: Request, tenant: str) -> JSONResponse:
        return _json({"tenant": tenant, "auth": self.keys is not None})

    @_api
    def studies(self, request: Request, tenant: str) -> JSONResponse:
        """A page of the tenant's studies (as ListStudies pages them: at most ``limit``, fewer
        past about PAGE_BYTES of specs); ``next`` is the next page's ``after``, "" after the last.
        All of them in one response read every spec of the tenant (up to ``--max-studies`` of
        ``--max-spec-bytes`` each) on each poll of the list."""
        after = _str_arg(request, "after")
        limit = _int_arg(request, "limit", DEFAULT_STUDY_PAGE, 1, MAX_STUDY_PAGE)
        try:
            page, token = self.registry.list_studies(tenant, page_size=limit, page_token=after)
        except SpecError:
            raise HTTPException(
                400, "query parameter 'after': a malformed page token: pass back 'next' unchanged"
            ) from None
        out = []
        for st in page:
            try:
                out.append(study_json(st, description=False))
            except NotFoundError:  # deleted while listing
                continue
        return _json({"tenant": tenant, "studies": out, "next": token, "more": bool(token)})

    @_api
    def study_detail(self, request: Request, tenant: str) -> Response:
        study = self.study(request, tenant)
        info = study.info()
        counts = study.trial_counts()
        version = (info.state, info.state_reason, tuple(sorted(counts.items())))
        key = (study.tenant, study.uid)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == version:
                self._cache.move_to_end(key)
                return _json_bytes(hit[1])
        spec = study.spec
        required = spec.required_metrics
        best = study.best()  # GetBest's answer: on a noisy objective, chosen by the model
        shown = page_prefix(
            (trial_json(t, spec, required) for t in best.trials[:MAX_BEST]), _json_size
        )
        body = JSONResponse(
            {
                "study": {**study_json(study, info), "spec": spec.to_dict()},
                "counts": counts,
                "best": shown,
                "best_count": len(best.trials),
                "selection": best.selection,
                "estimate": None if best.estimate is None else best.estimate._asdict(),
            }
        ).body
        with self._cache_lock:
            self._cache[key] = (version, bytes(body))
            self._cache.move_to_end(key)
            while len(self._cache) > self.CACHED_STUDIES:
                self._cache.popitem(last=False)
        return _json_bytes(bytes(body))

    @_api
    def trials(self, request: Request, tenant: str) -> JSONResponse:
        study = self.study(request, tenant)
        after = _int_arg(request, "after", 0, 0, MAX_ID)
        limit = _int_arg(request, "limit", MAX_TRIAL_PAGE, 1, MAX_TRIAL_PAGE)
        spec = study.spec
        required = spec.required_metrics
        read = read_lazily(
            lambda a, n: study.trials(after=a, limit=n),
            after,
            limit + 1,
            key=lambda t: t.id,
            max_chunk=512,
        )
        page, more = cut_page(read, limit, lambda t: trial_json(t, spec, required), _json_size)
        return _json({"trials": page, "more": more})

    @_api
    def intermediates(self, request: Request, tenant: str) -> JSONResponse:
        study = self.study(request, tenant)
        after = _int_arg(request, "after", 0, 0, MAX_ID)
        step = _int_arg(request, "after_step", None, 0, MAX_ID)
        limit = _int_arg(request, "limit", MAX_POINT_PAGE, 1, MAX_POINT_PAGE)
        read = study.intermediate_page(after, step, limit + 1)
        page = page_prefix(read[:limit], _json_size)
        return _json({"points": page, "more": len(page) < len(read)})

    @_api
    def llm_calls(self, request: Request, tenant: str) -> JSONResponse:
        study = self.study(request, tenant)
        after = _int_arg(request, "after", 0, 0, MAX_ID)
        limit = _int_arg(request, "limit", 100, 1, MAX_LLM_PAGE)
        # a call holds up to a 1 MiB answer: read a few at a time as the page fills
        read = read_lazily(
            lambda a, n: study.llm_calls(after=a, limit=n), after, limit + 1, key=lambda c: c.number
        )
        calls, more = cut_page(
            read, limit, lambda c: c, lambda c: len(c.prompt.encode()) + len(c.response.encode())
        )
        return _json(
            {
                "calls": [
                    {
                        "id": c.number,
                        "purpose": c.purpose,
                        "model": c.model,
                        "outcome": c.outcome,
                        "prompt": c.prompt,
                        "response": c.response,
                        "prompt_tokens": c.prompt_tokens,
                        "completion_tokens": c.completion_tokens,
                        "latency_seconds": c.latency_seconds,
                        "created": _seconds(c.created_at),
                    }
                    for c in calls
                ],
                "more": more,
            }
        )


MAX_ID = 2**63 - 1  # ids and steps are 64-bit in the database
DEFAULT_STUDY_PAGE = 100  # studies per /api/studies page (the page shows the first, then more)
MAX_STUDY_PAGE = 1000  # as ListStudies


def _str_arg(request: Request, name: str, longest: int = 512) -> str:
    """A query argument given at most once (a page token: at most ``longest`` characters)."""
    given = request.query_params.getlist(name)
    if len(given) > 1:
        raise HTTPException(
            400, f"query parameter '{name}' is given {len(given)} times: give it at most once"
        )
    raw = given[0] if given else ""
    if len(raw) > longest:
        raise HTTPException(
            400, f"query parameter '{name}': at most {longest} characters, got {len(raw)}"
        )
    return raw


def _int_arg(request: Request, name: str, default: Any, low: int, high: int | None = None):
    """A query argument given at most once as ASCII digits (what the page sends), else 400:
    ``int`` alone also reads '+2', ' 2 ', '1_0' and non-ASCII digits ('\u0663' is 3), and a repeated
    parameter would silently be its last value."""
    given = request.query_params.getlist(name)
    if len(given) > 1:
        raise HTTPException(
            400, f"query parameter '{name}' is given {len(given)} times: give it at most once"
        )
    raw = given[0] if given else None
    if raw is None or raw == "":
        return default
    v = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 20 else None
    if v is None or v < low or (high is not None and v > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise HTTPException(
            400, f"query parameter '{name}' must be an integer {rng}, got {shown!r}"
        )
    return v


def _json(content: Any) -> JSONResponse:
    return JSONResponse(content, headers={"cache-control": "no-store"})


def _json_bytes(body: bytes) -> Response:
    return Response(body, media_type="application/json", headers={"cache-control": "no-store"})


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse(
        {"error": exc.detail, "status": exc.status_code},
        status_code=exc.status_code,
        headers={**(exc.headers or {}), "cache-control": "no-store"},
    )


@contextlib.asynccontextmanager
async def _threads(app):
    """Size the thread pool that runs the sync endpoints (anyio's, per event loop) to
    :data:`THREADS`, of which one tenant holds at most :data:`TENANT_REQUESTS` (fewer with
    several busy)."""
    import anyio.to_thread

    anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
    yield


def create_app(
    registry: StudyRegistry, keys=None, default_tenant: str = DEFAULT_TENANT, limits=None
) -> Starlette:
    """The dashboard as an ASGI app (``keys``: a KeyStore when API keys are required;
    ``limits``: the API's LimitChecker, whose rate each ``/api`` request is held to)."""
    d = Dashboard(registry, keys, default_tenant, limits)
    plotly = plotly_js()
    routes = [
        Route("/", lambda request: FileResponse(STATIC / "index.html")),
        Route("/static/plotly.min.js", lambda request: FileResponse(plotly)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/api/session", d.session),
        Route("/api/studies", d.studies),
        Route("/api/studies/{name}", d.study_detail),
        Route("/api/studies/{name}/trials", d.trials),
        Route("/api/studies/{name}/intermediates", d.intermediates),
        Route("/api/studies/{name}/llm_calls", d.llm_calls),
    ]
    middleware = [Middleware(_SecurityHeaders), Middleware(GZipMiddleware, minimum_size=1024)]
    if keys is None:  # loopback only (plugins/dashboard.py): only requests addressed to it
        middleware.insert(1, Middleware(_LoopbackHost))
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=_threads,
        # starlette types every handler as taking any Exception; this one gets HTTPException only
        exception_handlers={HTTPException: _http_error},  # type: ignore[dict-item]
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when the host is an IPv6 address)."""
    h = host.strip("[]")
    family = socket.AF_INET6 if ":" in h else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((h, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class DashboardServer:
    """uvicorn serving the dashboard on an already bound socket, from a daemon thread."""

    def __init__(
        self,
        sock: socket.socket,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
    ):
        self.sock = sock
        self.tls = (tls_cert, tls_key, tls_client_ca)
        self._server: Any = None  # the uvicorn.Server, once started
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    @property
    def scheme(self) -> str:
        return "https" if self.tls[0] else "http"

    def start(self, app) -> DashboardServer:
        import uvicorn

        cert, key, client_ca = self.tls
        kw: dict[str, Any] = {}
        if cert:
            kw.update(ssl_certfile=cert, ssl_keyfile=key)
            if client_ca:
                kw.update(ssl_ca_certs=client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",  # _threads
            server_header=False,
            timeout_graceful_shutdown=2,
            **kw,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self.sock]},
            name="bbo-dashboard",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.sock.close()
