"""The advisor's persistent cache: a study's own LLM call log in the database.

Every exchange is already stored with its study (``llm_calls``), so no second table is needed: after a
restart, or on another replica, the same prompt on the same study is answered from the stored
response instead of being sent again. Keys are :meth:`LlmAdvisor.cache_key` strings whose study part
ends in the study uid (``tenant/name/uid``, as :class:`bbo.study.Study` builds it); other keys miss.
"""

from __future__ import annotations

import hashlib

from bbo.errors import NotFoundError

USABLE = ("ok", "cached", "partial")  # outcomes whose response was parsed and used
REPEATED = (
    "priors",
    "warmstart",
)  # prompts that recur on a study; proposal prompts carry the history


def prompt_hash(prompt_text: str) -> str:
    """The cache key's prompt part. Not the model: the model a response names may differ from the one
    asked for (a dated snapshot of an alias, or one found through /models), and the issue's rule is
    "the same prompt on the same study is not sent twice"."""
    return hashlib.sha256(prompt_text.encode()).hexdigest()[:40]


class StoredAnswers:
    """``get(key)`` finds a usable stored answer to the same prompt on the same study; ``put``
    stores nothing (the call log already has it)."""

    def __init__(self, storage):
        self.storage = storage

    def get(self, key: str) -> dict | None:
        try:
            study_key, purpose, h = key.rsplit("|", 2)
            uid = study_key.rsplit("/", 1)[1]
        except (ValueError, IndexError):
            return None
        if purpose not in REPEATED or not uid:
            return None
        try:
            calls = self.storage.list_llm_calls(uid, purpose)
        except NotFoundError:  # the study was deleted
            return None
        for rec in reversed(calls):
            if rec.outcome.startswith(USABLE) and prompt_hash(rec.prompt) == h:
                return {
                    "text": rec.response,
                    "prompt_tokens": rec.prompt_tokens,
                    "completion_tokens": rec.completion_tokens,
                    "model": rec.model,
                }
        return None

    def put(self, key: str, value: dict) -> None:
        return None
