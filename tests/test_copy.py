"""``bbo copy``: a live server's SQLite database copied while it serves, and SQLite moved to
PostgreSQL; the copy serves the same studies (same trial ids and study uids) and takes new work."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid

import pytest

import bbo_client as bc


def bbo(*args, check=True):
    r = subprocess.run(
        [sys.executable, "-m", "bbo_server", *args], capture_output=True, text=True, timeout=300
    )
    if check and r.returncode != 0:
        raise AssertionError(
            f"bbo {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        )
    return r


def _populate(c: bc.Client, name: str):
    s = c.create_study(
        name,
        parameters=[bc.Float("x", 0, 1), bc.Ordinal("b", [16, 32, 64])],
        objectives="y",
        n_initial=4,
    )
    for t in s.ask(4):
        s.report_intermediate(t, 0, t.params["x"] + 1)
        s.tell(t, {"y": (t.params["x"] - 0.3) ** 2})
    (pending,) = s.ask()
    return s, pending


def _snapshot(s):
    return [(t.id, t.state, t.params, t.metrics, t.origin, t.study_uid) for t in s.trials()]


def test_live_sqlite_backup_serves_the_same_studies(server_factory, tmp_path):
    src = f"sqlite:///{tmp_path / 'live.db'}"
    dst = f"sqlite:///{tmp_path / 'backup.db'}"
    live = server_factory(db=src)
    with bc.Client(live.address) as c:
        s, pending = _populate(c, "copied")
        before = _snapshot(s)
        stop = threading.Event()

        def keep_writing():  # another study grows while the copy runs: the copy is one consistent instant
            w = c.create_study(
                "busy", parameters=[bc.Float("x", 0, 1)], objectives="y", n_initial=1000
            )
            while not stop.is_set():
                (t,) = w.ask()
                w.tell(t, t.params["x"])

        th = threading.Thread(target=keep_writing, daemon=True)
        th.start()
        out = bbo("copy", src, dst).stdout
        stop.set()
        th.join(30)
    copied = dict(reversed(part.split(" ", 1)) for part in out.split(":")[0].split(", "))
    assert (
        int(copied["studies"]) == 2 and int(copied["trials"]) > 5
    )  # the busy study's trials came along too
    restored = server_factory(db=dst)
    with bc.Client(restored.address) as c:
        s2 = c.study("copied")
        assert _snapshot(s2) == before
        busy = c.study("busy").trials()
        assert (
            [t.id for t in busy]
            == list(range(1, len(busy) + 1))
            == list(range(1, int(copied["trials"]) - 4))
        )
        assert all(
            t.state == "COMPLETED" for t in busy[:-1]
        )  # one instant: at most the last ask is untold
        assert (
            s2.tell(pending, {"y": 0.5}).trial.state == "COMPLETED"
        )  # the worker's trial, uid and all
        (nxt,) = s2.ask()
        assert nxt.id == pending.id + 1
    r = bbo("copy", src, dst, check=False)
    assert r.returncode == 1 and "empty database" in r.stderr
    r = bbo(
        "copy",
        f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}",
        f"sqlite:///{tmp_path / 'x.db'}",
        check=False,
    )
    assert r.returncode == 1 and "no database file" in r.stderr
    assert (
        not (tmp_path / "no").exists() and not (tmp_path / "x.db").exists()
    )  # a typo creates nothing
    (tmp_path / "empty.db").touch()
    r = bbo(
        "copy", f"sqlite:///{tmp_path / 'empty.db'}", f"sqlite:///{tmp_path / 'x.db'}", check=False
    )
    assert r.returncode == 1 and "not a bbo database" in r.stderr


def test_sqlite_moves_to_postgresql(cluster, tmp_path):
    """SQLite -> PostgreSQL with the same ids; the sequences are moved past them, so new studies,
    trials and events on PostgreSQL do not collide with the copied ones."""
    from bbo.registry import StudyRegistry
    from bbo.storage import open_storage
    from bbo.storage.copy import copy_database

    src = f"sqlite:///{tmp_path / 'small.db'}"
    st = open_storage(src)
    reg = StudyRegistry(st)
    spec = {
        "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
        "objectives": [{"name": "y"}],
        "algorithm": {"n_initial": 100},
    }
    a, _ = reg.create_study("a", spec)
    for t in a.ask(3).trials:
        a.tell(t.id, {"y": t.params["x"]})
    reg.delete_study(reg.create_study("gone", spec)[0].name)  # ids with a gap
    b, _ = reg.create_study("b", spec)
    b.ask(2, request_id="r1")
    st.close()

    pg = cluster.create_database("copy_" + uuid.uuid4().hex[:10])
    counts = copy_database(src, pg)
    assert counts["studies"] == 2 and counts["trials"] == 5 and counts["request_log"] == 1
    st = open_storage(pg, pool_size=4)
    try:
        reg = StudyRegistry(st)
        a2, created = reg.create_study("a", spec)
        assert not created and a2.uid == a.uid and [t.id for t in a2.trials()] == [1, 2, 3]
        assert [t.id for t in reg.get_study("b").ask(2, request_id="r1").trials] == [
            1,
            2,
        ]  # the replay log came along
        c, created = reg.create_study("c", spec)  # a fresh id past the copied ones: no collision
        assert created and c.uid not in (a2.uid, b.uid) and c.ask(1).trials[0].id == 1
        assert [t.id for t in a2.ask(2).trials] == [4, 5]
    finally:
        st.close()
    with pytest.raises(Exception, match="empty database"):
        copy_database(src, pg)
    # and back: a PostgreSQL deployment backed up into a SQLite file, read in one REPEATABLE READ snapshot
    back = copy_database(pg, f"sqlite:///{tmp_path / 'back.db'}")
    assert back["studies"] == 3 and back["trials"] == counts["trials"] + 3


def test_a_database_urls_password_is_never_printed(cluster, tmp_path):
    """``bbo copy`` and ``bbo --db`` name the databases they used or could not read: with the
    URL's password hidden (the cluster trusts loopback, so any password connects)."""
    from bbo.registry import StudyRegistry
    from bbo.storage import open_storage

    secret = "Pg-Pa55word-InTheUrl"
    src = f"sqlite:///{tmp_path / 'pw.db'}"
    st = open_storage(src)
    StudyRegistry(st).create_study(
        "s",
        {
            "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
            "objectives": [{"name": "y"}],
        },
    )
    st.close()

    def with_password(url: str) -> str:
        return url.replace(f"{cluster.user}@", f"{cluster.user}:{secret}@")

    empty = with_password(cluster.create_database("pw_" + uuid.uuid4().hex[:10]))
    unread = bbo("studies", "--db", empty, check=False)  # no bbo schema there yet
    assert unread.returncode == 1 and "no bbo database at" in unread.stderr, unread.stderr
    target = with_password(cluster.create_database("pw_" + uuid.uuid4().hex[:10]))
    copied = bbo("copy", src, target)
    assert "copied to postgresql+psycopg://" in copied.stdout and "***" in copied.stdout
    again = bbo("copy", src, target, check=False)  # not empty any more
    missing = bbo("copy", target.rsplit("/", 1)[0] + "/no_such_db", src, check=False)
    assert again.returncode == missing.returncode == 1
    for out in (unread, copied, again, missing):
        assert secret not in out.stdout + out.stderr, out


def test_a_copy_holds_a_bounded_number_of_bytes_whatever_its_rows(tmp_path):
    """Rows were copied 1,000 at a time whatever their size: 1,000 studies of 1 MiB specs (the
    limits allow 10,000 per tenant) were 2.5 GiB in memory at once. A batch now ends at about
    BATCH_BYTES (8 MiB) too: 12 studies of 1 MiB specs are copied in batches of at most 8."""
    from bbo.storage import open_storage
    from bbo.storage.copy import copy_database

    src, dst = f"sqlite:///{tmp_path}/src.db", f"sqlite:///{tmp_path}/dst.db"
    spec = {
        "parameters": [
            {
                "type": "categorical",
                "name": f"p{i:03d}" + "n" * 100,
                "choices": [f"c{j:03d}" + "v" * 120 for j in range(40)],
            }
            for i in range(200)
        ],
        "objectives": [{"name": "y"}],
    }
    s = open_storage(src)
    try:
        for i in range(12):
            s.create_study("default", f"big-{i}", spec, 1)
    finally:
        s.close()
    seen: list[int] = []
    counts = copy_database(
        src, dst, progress=lambda table, n: seen.append(n) if table == "studies" else None
    )
    assert counts["studies"] == 12 and seen[-1] == 12
    batches = [b - a for a, b in zip([0, *seen], seen)]
    assert max(batches) * 1_000_000 <= 8 * 1024 * 1024 + 1_100_000, batches
    d = open_storage(dst)
    try:
        assert d.get_study("default", "big-11").spec == spec
    finally:
        d.close()


def test_a_copy_keeps_id_counters_and_fits_old_rows_to_postgresql(cluster, tmp_path):
    """A deleted study's id is never given again, in the copy too: the copy carries each id
    counter, not only the rows (the last study deleted left the counter past every copied id). An
    LLM call stored by SQLite before its model name and token counts were bounded still copies to
    PostgreSQL, clipped as bbo stores them now; and back to SQLite, counters and all."""
    import sqlalchemy as sa

    from bbo.storage import open_storage
    from bbo.storage import schema as S
    from bbo.storage.base import LlmCallRecord
    from bbo.storage.copy import copy_database

    spec = {
        "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
        "objectives": [{"name": "y"}],
    }
    src = f"sqlite:///{tmp_path / 'old.db'}"
    st = open_storage(src)
    try:
        kept = st.create_study("default", "kept", spec, 1)
        st.log_llm_call(kept.uid, LlmCallRecord("priors", "m", "p", "r", "ok"))
        for i in range(3):  # ids 2-4 given out, then deleted
            st.delete_study(st.create_study("default", f"gone-{i}", spec, 1).uid)
        with st._write() as conn:  # as a bbo before the bounds stored it
            conn.execute(
                S.llm_calls.update().values(
                    model="m" * 5000, prompt_tokens=2**40, completion_tokens=2**33
                )
            )
    finally:
        st.close()

    def ids(url):
        s = open_storage(url)
        try:
            s.create_study("default", "new", spec, 1)
            with s.snapshot() as conn:
                return (
                    conn.execute(sa.select(S.studies.c.id).order_by(S.studies.c.id)).scalars().all()
                )
        finally:
            s.close()

    pg = cluster.create_database("counters_" + uuid.uuid4().hex[:10])
    assert copy_database(src, pg)["llm_calls"] == 1
    s = open_storage(pg)
    try:
        (call,) = s.list_llm_calls(s.get_study("default", "kept").uid)
        assert len(call.model) == S.MODEL_CHARS and call.prompt_tokens == S.MAX_INT32
    finally:
        s.close()
    back = f"sqlite:///{tmp_path / 'back.db'}"
    copy_database(pg, back)
    assert ids(pg) == [1, 5] and ids(back) == [1, 5]
