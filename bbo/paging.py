"""Page bounds shared by every List call: a size (0 = the call's default, capped) and an opaque
token that is the last id of the previous page, so a page is one indexed range scan."""

from __future__ import annotations

from bbo.errors import SpecError


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
