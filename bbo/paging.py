"""Page bounds shared by every List call: a size (0 = the call's default, capped) and an opaque
token holding the last id of the previous page, so a page is one indexed range scan; and a byte
bound, so a page of large items still fits a client's default 4 MiB receive limit.

A token also holds a digest of its scope (:func:`page_token`: the study's uid and the filter), so
one is refused where it was not issued: a bare number was accepted on another study, another
filter, or a study created again under the name, and paged through their items from its number."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from bbo.errors import SpecError

T = TypeVar("T")
K = TypeVar("K")

# A page ends early once its items pass this many bytes: every client's default receive limit is
# 4 MiB, and a page must fit in it whatever the studies, trials or LLM calls hold.
PAGE_BYTES = 2 * 1024 * 1024


def _digest(scope: str) -> str:
    return hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def encode_token(value: Any) -> str:
    """``value`` as an opaque page token: compact JSON in unpadded base64url."""
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> Any:
    """The JSON value of :func:`encode_token`'s ``token``; raises ValueError (or TypeError,
    RecursionError) where it holds none."""
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def page_token(after: int, scope: str) -> str:
    """The next page's token: ``after`` (the last id of this page) within ``scope`` (what the
    pages are of: a study's uid and the request's filter)."""
    return encode_token([after, _digest(scope)])


def page_bounds(
    page_size: int, page_token: str, default: int, maximum: int, scope: str
) -> tuple[int, int]:
    """``(size, after_id)`` of a request in ``scope`` (:func:`page_token`'s); SpecError names
    the field a bad request got wrong."""
    if page_size < 0:
        raise SpecError("page_size", "must be >= 0")
    after, bound = 0, _digest(scope)
    if page_token:
        try:
            after, bound = decode_token(page_token)
            # a token we could have issued (SQLite integers are 64-bit)
            if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 2**63:
                raise ValueError(after)
            if not isinstance(bound, str):
                raise ValueError(bound)
        except (ValueError, TypeError, RecursionError):
            raise SpecError(
                "page_token",
                f"malformed page token {page_token!r}: pass back a next_page_token unchanged",
            ) from None
    if bound != _digest(scope):
        raise SpecError(
            "page_token",
            "this page token was issued for another study, another filter, or a study since "
            "deleted and created again: pass it back with the request it came from, or start "
            "again without one",
        )
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


# items a page reads from storage at a time: a page of large items (an LLM call of up to a 1 MiB
# answer, a trial with hundreds of metrics) reads PAGE_BYTES and at most one such chunk past it
READ_CHUNK = 16


def read_lazily(
    read: Callable[[K, int], list[T]],
    after: K,
    limit: int,
    key: Callable[[T], K],
    chunk: int = READ_CHUNK,
    max_chunk: int = READ_CHUNK,
) -> Iterator[T]:
    """Up to ``limit`` items after the cursor ``after``, read as they are consumed, ``chunk`` at
    first and twice as many each time up to ``max_chunk``: ``read(after, n)`` gives the next ``n``
    (fewer at the end), ``key`` an item's cursor. With :func:`page_prefix`, a page reads from
    storage what it may send and at most ``max_chunk`` items more, not ``limit`` whole items
    first."""
    while limit > 0:
        n = min(chunk, limit)
        items = read(after, n)
        yield from items
        if len(items) < n:
            return
        limit -= n
        after = key(items[-1])
        chunk = min(2 * chunk, max_chunk)


def cut_page(
    items: Iterator[T], size: int, to_item: Callable[[T], object], item_bytes: Callable
) -> tuple[list, bool]:
    """``(page, more)``: the leading converted items of ``items`` (read lazily) that fit in a page
    (:func:`page_prefix`: at most ``size``, ending early past PAGE_BYTES), and whether any item
    follows them. ``to_item`` converts an item once; ``item_bytes`` sizes a converted one."""
    consumed = 0

    def counted() -> Iterator[T]:
        nonlocal consumed
        for it in items:
            consumed += 1
            yield it
            if consumed == size:
                return

    page = page_prefix((to_item(it) for it in counted()), item_bytes)
    if consumed > len(page):  # cut by bytes: the next one was read
        return page, True
    return page, len(page) == size and next(items, None) is not None
