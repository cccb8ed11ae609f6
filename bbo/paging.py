"""Page bounds shared by every List call: a size (0 = the call's default, capped) and an opaque
token that is the last id of the previous page, so a page is one indexed range scan; and a byte
bound, so a page of large items still fits a client's default 4 MiB receive limit."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from bbo.errors import SpecError

T = TypeVar("T")

# A page ends early once its items pass this many bytes: every client's default receive limit is
# 4 MiB, and a page must fit in it whatever the studies, trials or LLM calls hold.
PAGE_BYTES = 2 * 1024 * 1024


def page_bounds(page_size: int, page_token: str, default: int, maximum: int) -> tuple[int, int]:
    """``(size, after_id)``; SpecError names the field a bad request got wrong."""
    if page_size < 0:
        raise SpecError("page_size", "must be >= 0")
    try:
        after = int(page_token) if page_token else 0
        if not 0 <= after < 2**63:  # a token we could have issued (SQLite integers are 64-bit)
            raise ValueError(after)
    except ValueError:
        raise SpecError(
            "page_token",
            f"malformed page token {page_token!r}: pass back a next_page_token unchanged",
        ) from None
    return min(page_size or default, maximum), after


def page_prefix(items: Iterable[T], size: Callable[[T], int], limit: int = PAGE_BYTES) -> list[T]:
    """The leading ``items`` one page holds: while their ``size`` (bytes) sums to at most
    ``limit``, and at least one. ``items`` is read lazily, one past the last one kept."""
    out: list[T] = []
    used = 0
    for it in items:
        used += size(it)
        if out and used > limit:
            break
        out.append(it)
    return out
