"""LLM module: warm-start candidates, piBO priors and OPRO-style proposals from an OpenAI-compatible
endpoint, validated against the search space, bounded in time, and replaced by plain BO whenever
the LLM is off, slow, failing or wrong. See :mod:`bbo.llm.advisor` for the interface."""

from bbo.llm.advisor import (
    AskPlan,
    LlmAdvisor,
    LlmCallRecord,
    LlmResult,
    fill_with_sobol,
    warmstart_count,
)
from bbo.llm.cache import StoredAnswers
from bbo.llm.client import ChatOutcome, LlmClient
from bbo.llm.config import LlmConfig
from bbo.llm.parse import extract_json, merge_priors, parse_candidates, parse_priors

__all__ = [
    "AskPlan",
    "ChatOutcome",
    "LlmAdvisor",
    "LlmCallRecord",
    "LlmClient",
    "LlmConfig",
    "LlmResult",
    "extract_json",
    "fill_with_sobol",
    "merge_priors",
    "parse_candidates",
    "parse_priors",
    "StoredAnswers",
    "warmstart_count",
]
