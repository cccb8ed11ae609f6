"""``bbo serve`` LLM options: the OpenAI-compatible endpoint studies with ``llm.enabled`` consult.

Flags override the ``BBO_LLM_*`` environment (see :mod:`bbo.llm.config`); with no base URL the LLM
module is off and every study runs plain BO.
"""

from __future__ import annotations

import logging

log = logging.getLogger("bbo.server")


def add_serve_arguments(p) -> None:
    g = p.add_argument_group("LLM module (warm starts, priors, proposals)")
    g.add_argument(
        "--llm-base-url",
        default=None,
        help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (env BBO_LLM_BASE_URL; unset = off)",
    )
    g.add_argument(
        "--llm-model",
        default=None,
        help="default model (env BBO_LLM_MODEL; a study's llm.model overrides it)",
    )
    g.add_argument(
        "--llm-timeout",
        type=float,
        default=None,
        help="seconds one LLM call may take (env BBO_LLM_TIMEOUT, default 30)",
    )
    g.add_argument(
        "--llm-ask-budget",
        type=float,
        default=None,
        help="seconds all LLM work of one Ask may take (env BBO_LLM_ASK_BUDGET, default 60)",
    )


def configure_server(opts, args) -> None:
    from bbo.llm import LlmAdvisor, LlmConfig

    overrides = {
        k: v
        for k, v in (
            ("base_url", args.llm_base_url),
            ("model", args.llm_model),
            ("timeout_s", args.llm_timeout),
            ("ask_budget_s", args.llm_ask_budget),
        )
        if v is not None
    }
    cfg = LlmConfig.from_env(**overrides)
    opts.llm = LlmAdvisor(cfg)
    log.info(cfg.describe())
