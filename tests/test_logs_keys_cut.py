"""A log line keeps no part of an API key's secret, even where a field is cut inside the key."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace

from bbo_server import logs


def test_a_key_cut_short_in_a_logged_study_name_is_redacted():
    key = "bbo_0123456789ab_" + "S" * 43
    # 69 + 17 + 42 = 128 characters kept (MAX_LOGGED_NAME): the cut drops the key's last one
    ids = logs.request_ids(SimpleNamespace(name="x" * 69 + key, trial_id=None))
    assert "S" * 42 in ids["study"]
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("bbo.test.keys_cut")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("rpc refused", extra=ids)
    finally:
        log.removeHandler(handler)
    line = json.loads(out.getvalue())
    assert "SSS" not in out.getvalue() and "bbo_0123456789ab_***" in line["study"], line
