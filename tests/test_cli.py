"""The `bbo` command line: studies, trials, best, plot (against a server and against a database)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import bbo_client as bc


def bbo(*args, check=True):
    r = subprocess.run(
        [sys.executable, "-m", "bbo_server", *args], capture_output=True, text=True, timeout=120
    )
    if check and r.returncode != 0:
        raise AssertionError(
            f"bbo {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        )
    return r


@pytest.fixture(scope="module")
def populated(bbo_server):
    name = "cli-study"
    with bc.Client(bbo_server.address) as c:
        s = c.create_study(
            name,
            parameters=[
                bc.Float("lr", 1e-4, 1e-1, log=True),
                bc.Categorical("opt", ["adam", "sgd"]),
            ],
            objectives=[bc.Maximize("acc")],
            constraints=[bc.Constraint("lat", "<=", 10)],
        )
        for i, t in enumerate(s.ask(6)):
            if i == 5:
                s.tell(t, failed=True, reason="diverged")
            else:
                s.tell(
                    t, {"acc": 0.5 + 0.1 * i, "lat": 5 + 2 * i}
                )  # trials 4 and 5 (i=3,4) violate lat <= 10
    return name


def test_help_lists_commands():
    out = bbo("--help").stdout
    for cmd in ("serve", "demo", "studies", "trials", "best", "plot"):
        assert cmd in out


def test_studies_trials_best(bbo_server, populated):
    addr = ["--address", bbo_server.address]
    assert populated in bbo("studies", *addr).stdout
    rows = [json.loads(l) for l in bbo("studies", *addr, "--json").stdout.splitlines()]
    assert any(r["name"] == populated and r["trials"] == 6 and r["completed"] == 5 for r in rows)
    out = bbo("trials", populated, *addr).stdout
    assert "diverged" in out and "COMPLETED" in out
    failed = [
        json.loads(l)
        for l in bbo("trials", populated, *addr, "--state", "FAILED", "--json").stdout.splitlines()
    ]
    assert [t["reason"] for t in failed] == ["diverged"]
    best = json.loads(bbo("best", populated, *addr, "--json").stdout)
    # the API's answer: on 5 trials of a random design the model may judge lat noisy and pick
    # another feasible trial than the best observed (acc 0.7, lat 9), so the CLI is held to it
    with bc.Client(bbo_server.address) as c:
        api = c.study(populated).best()
    (shown,) = best["trials"]
    assert shown["id"] == api.trials[0].id and shown["metrics"]["lat"] <= 10
    assert best["selection"] == api.selection and best["selection"].startswith("best ")
    assert best["count"] == 1  # the answer's size: more than its trials for a front cut to fit
    acc = shown["metrics"]["acc"]
    assert f"acc={acc:g}" in bbo("best", populated, *addr).stdout


def test_best_shows_the_objectives_first(bbo_server, study_name):
    """``bbo best`` printed a trial's metrics in the order they came, so the objective could sit
    behind tracked metrics; it shows the objectives, then the constrained metrics, then the rest."""
    with bc.Client(bbo_server.address) as c:
        s = c.create_study(
            study_name,
            parameters=[bc.Float("x", 0, 1)],
            objectives=[bc.Minimize("zloss")],
            constraints=[bc.Constraint("ylat", "<=", 10)],
            tracked_metrics=["bsize", "atime"],
        )
        (t,) = s.ask(1)
        s.tell(t, {"atime": 3.0, "bsize": 2.0, "ylat": 1.0, "zloss": 0.5})
    out = bbo("best", study_name, "--address", bbo_server.address).stdout
    assert "metrics: zloss=0.5, ylat=1, atime=3, bsize=2" in out, out


def test_trials_and_best_as_json_keep_the_standard_errors(bbo_server, study_name):
    """A metric told with its standard error (a cross-validated score) lists it beside the value
    in ``--json``, as ListTrials and GetBest carry it; it was dropped, so an export lost it."""
    with bc.Client(bbo_server.address) as c:
        s = c.create_study(study_name, [bc.Float("x", 0, 1)], bc.Objective("y", noise="noisy"))
        (t,) = s.ask(1)
        s.tell(t, {"y": (0.5, 0.25), "n": 3.0})
    addr = ["--address", bbo_server.address]
    (row,) = [json.loads(l) for l in bbo("trials", study_name, *addr, "--json").stdout.splitlines()]
    assert row["metrics"] == {"y": 0.5, "n": 3.0} and row["sems"] == {"y": 0.25}
    best = json.loads(bbo("best", study_name, *addr, "--json").stdout)
    assert best["trials"][0]["sems"] == {"y": 0.25}


def test_plot_writes_png(bbo_server, populated, tmp_path):
    out = tmp_path / "p.png"
    r = bbo("plot", populated, "--address", bbo_server.address, "-o", str(out))
    assert str(out) in r.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_output_path_that_cannot_be_written_is_a_clean_error(bbo_server, populated, tmp_path):
    """`bbo plot -o` into a missing folder and `bbo demo --runs-dir` under a file ended in
    Python's traceback; now one line naming the path and a non-zero exit."""
    (tmp_path / "a-file").write_text("")
    for args, path in (
        (["plot", populated, "--address", bbo_server.address, "-o"], tmp_path / "no" / "p.png"),
        (["demo", "--runs-dir"], tmp_path / "a-file" / "runs"),
    ):
        r = bbo(*args, str(path), check=False)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"bbo {args[0]}: ") and str(path) in r.stderr, r.stderr


def test_reads_database_directly(tmp_path):
    from bbo.registry import StudyRegistry
    from bbo.storage import open_storage

    url = "sqlite:///" + str(tmp_path / "direct.db")
    st = open_storage(url)
    reg = StudyRegistry(st)
    s, _ = reg.create_study(
        "offline",
        {
            "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
            "objectives": [{"name": "y"}],
        },
    )
    s.add_trial({"x": 0.25}, {"y": 3.0})
    t, _ = reg.create_study(
        "theirs",
        {
            "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
            "objectives": [{"name": "y"}],
        },
        tenant="acme",
    )
    t.add_trial({"x": 0.75}, {"y": 1.0})
    st.close()
    assert (
        "offline" in bbo("studies", "--db", url).stdout
        and "theirs" not in bbo("studies", "--db", url).stdout
    )
    assert "x=0.25" in bbo("best", "offline", "--db", url).stdout
    # a deployment with API keys: each key's tenant owns its studies (before: no way to read them with --db)
    out = bbo("studies", "--db", url, "--tenant", "acme").stdout
    assert "theirs" in out and "offline" not in out
    assert "x=0.75" in bbo("best", "theirs", "--db", url, "--tenant", "acme").stdout
    r = bbo("studies", "--db", url, "--tenant", "no spaces", check=False)
    assert r.returncode != 0 and "--tenant" in r.stderr and "Traceback" not in r.stderr
    # reading a database neither creates nor migrates one
    missing = tmp_path / "missing.db"
    r = bbo("studies", "--db", "sqlite:///" + str(missing), check=False)
    assert r.returncode != 0 and "no bbo database" in r.stderr and "Traceback" not in r.stderr
    assert not missing.exists()


def test_unknown_study_is_a_clean_error(bbo_server):
    r = bbo("trials", "nope", "--address", bbo_server.address, check=False)
    assert r.returncode == 1 and "NotFound" in r.stderr and "Traceback" not in r.stderr


def test_a_database_that_cannot_be_opened_is_a_clean_error(tmp_path):
    """A --db / copy URL that does not parse, names no supported backend, no reachable server or a
    file that is not a database: a message and a non-zero exit code, never a traceback; and the
    commands that only read never create or migrate a database."""
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    missing = tmp_path / "missing.db"
    cases = [
        ("studies", "--db", "not a url"),
        ("studies", "--db", "mysql://u@h/db"),
        ("studies", "--db", "sqlite:///" + str(junk)),
        ("trials", "s", "--db", "postgresql+psycopg://bbo@127.0.0.1:1/bbo?connect_timeout=2"),
        ("studies", "--db", "sqlite:///" + str(junk) + "?synchronous=sometimes"),
        ("keys", "list", "--db", "sqlite:///" + str(missing)),
        ("keys", "revoke", "abc", "--db", "sqlite:///" + str(missing)),
        ("copy", "sqlite:///" + str(junk), "sqlite:///" + str(tmp_path / "out.db")),
        ("copy", "not a url", "sqlite:///" + str(tmp_path / "out.db")),
    ]
    for args in cases:
        r = bbo(*args, check=False)
        assert r.returncode == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert r.stderr.startswith(f"bbo {args[0]}"), (args, r.stderr)
    assert not missing.exists()
    assert junk.read_text() == "not a database"


def test_odd_text_from_workers_prints_escaped_one_row_per_trial(tmp_path):
    """Reasons, categories and metric names come from workers: control characters (a newline, a
    terminal escape sequence, a bidi override) are printed escaped, so a row stays one line and
    nothing is sent to the terminal but text; a stdout that cannot encode a character is no
    traceback either."""
    import os

    from bbo.registry import StudyRegistry
    from bbo.storage import open_storage
    from bbo.trial import TrialState

    url = "sqlite:///" + str(tmp_path / "odd.db")
    st = open_storage(url)
    odd = ["nl\nx", "\x1b[2J\x1b[31mred", "\u202eevil", "\U0001f600"]
    s, _ = StudyRegistry(st).create_study(
        "odd",
        {
            "parameters": [
                {"type": "float", "name": "x", "low": 0.0, "high": 1.0},
                {"type": "categorical", "name": "k", "choices": odd},
            ],
            "objectives": [{"name": "y"}],
        },
    )
    for i, k in enumerate(odd):
        s.add_trial({"x": i / 10, "k": k}, {"y": float(i), "m\x1b\u202e": 1.0})
    s.add_trial({"x": 0.9, "k": odd[0]}, {}, state=TrialState.FAILED, reason="boom\n\x1b[31m\x07")
    st.close()
    for cmd in (["trials", "odd"], ["best", "odd"]):
        out = bbo(*cmd, "--db", url).stdout
        assert not any(c in out for c in "\x1b\x07\u202e") and "\\x1b" in out, out
    assert "\U0001f600" in bbo("trials", "odd", "--db", url).stdout  # printable: as it is
    assert len(bbo("trials", "odd", "--db", url).stdout.splitlines()) == 1 + len(odd) + 1
    r = subprocess.run(
        [sys.executable, "-m", "bbo_server", "trials", "odd", "--db", url],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
        timeout=120,
    )
    assert r.returncode == 0 and b"Traceback" not in r.stderr and b"\\U0001f600" in r.stdout


def test_output_cut_short_by_a_closed_pipe_is_no_traceback(tmp_path):
    """`bbo trials S --json | head -1`: the reader goes away before the output ends."""
    from bbo.registry import StudyRegistry
    from bbo.storage import open_storage

    url = "sqlite:///" + str(tmp_path / "many.db")
    st = open_storage(url + "?synchronous=off")
    s, _ = StudyRegistry(st).create_study(
        "many",
        {
            "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
            "objectives": [{"name": "y"}],
        },
    )
    for i in range(600):  # more than a pipe's buffer (64 KiB) of JSON lines
        s.add_trial({"x": i / 600}, {"y": float(i)}, reason="r" * 100)
    st.close()
    r = subprocess.run(
        f"{sys.executable} -m bbo_server trials many --db {url} --json | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.stdout.startswith('{"id": 1') and "Traceback" not in r.stderr, r.stderr


def test_serve_on_a_port_in_use_is_a_clean_error(tmp_path):
    """`bbo serve --port P` with P taken by another process ended in gRPC's RuntimeError
    traceback ("Failed to bind to address"); now one line naming the address and --port."""
    import socket

    db = "sqlite:///" + str(tmp_path / "bbo.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "bbo_server", "serve", "--port", str(port), "--db", db],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"bbo serve: cannot listen on 127.0.0.1:{port}" in r.stderr and "--port" in r.stderr


@pytest.mark.parametrize(
    "args, env, flag",
    [
        (["--port", "-5"], {}, "--port"),  # was served on port 65531
        (["--port", "70000"], {}, "--port"),  # was served on port 4464
        (["--rpc-threads", "0"], {}, "--rpc-threads"),  # was a traceback
        (["--max-concurrent-rpcs", "-1"], {}, "--max-concurrent-rpcs"),
        (["--max-tenant-rpcs", "-1"], {}, "--max-tenant-rpcs"),
        (["--max-message-bytes", "-1"], {}, "--max-message-bytes"),  # was no size limit at all
        (["--lease-seconds", "0"], {}, "--lease-seconds"),  # every trial abandoned at once
        (["--lease-seconds", "nan"], {}, "--lease-seconds"),
        (["--lease-seconds", "1e12"], {}, "--lease-seconds"),  # every Ask was INTERNAL
        (["--max-ask", "0"], {}, "--max-ask"),  # every Ask refused
        (["--workers", "-1"], {}, "--workers"),
        (["--grace-seconds", "-1"], {}, "--grace-seconds"),
        (["--metrics-port", "70000"], {}, "--metrics-port"),  # was a traceback
        (["--llm-timeout", "-1"], {}, "--llm-timeout"),  # was a traceback
        # extremes that passed the start and failed later: every refusal INTERNAL (1 / rate
        # overflowed its RetryInfo), a trial's Tells refused for ever (a trial rate of 0, a burst
        # under one token), reaper and probe threads dead and a stop not graceful (waits past
        # what a thread can wait), a hung or failed start (2**63 threads), trials abandoned
        # before their first Heartbeat, every LLM call failed
        (["--rate-limit", "1e-300"], {}, "--rate-limit"),
        (["--rate-limit", "inf"], {}, "--rate-limit"),
        (["--rate-burst", "0.5"], {}, "--rate-burst"),
        (["--trial-rate", "0"], {}, "--trial-rate"),
        (["--trial-burst", "0.5"], {}, "--trial-burst"),
        (["--lease-seconds", "1e-300"], {}, "--lease-seconds"),
        (["--lease-reap-seconds", "1e300"], {}, "--lease-reap-seconds"),
        (["--health-probe-seconds", "1e300"], {}, "--health-probe-seconds"),
        (["--grace-seconds", "1e300"], {}, "--grace-seconds"),
        (["--workers", str(2**63)], {}, "--workers"),
        (["--torch-threads", str(2**63)], {}, "--torch-threads"),
        (["--llm-timeout", "1e300"], {}, "--llm-timeout"),
        (
            ["--llm-base-url", "http://127.0.0.1:9/v1"],
            {"BBO_LLM_TIMEOUT": "1e300"},
            "BBO_LLM_TIMEOUT",
        ),
        (
            ["--llm-base-url", "http://127.0.0.1:9/v1"],
            {"BBO_LLM_TIMEOUT": "soon"},
            "BBO_LLM_TIMEOUT",
        ),
        # settings from the environment, checked as their flags are (were: metrics or the
        # dashboard quietly off, 'gpu' run as cuda, a traceback)
        ([], {"BBO_METRICS_PORT": "9o9o"}, "BBO_METRICS_PORT"),
        ([], {"BBO_DASHBOARD_PORT": "80a"}, "BBO_DASHBOARD_PORT"),
        ([], {"BBO_DEVICE": "gpu"}, "BBO_DEVICE"),
        ([], {"BBO_LOG_LEVEL": "verbose"}, "BBO_LOG_LEVEL"),
        ([], {"BBO_SQLITE_SYNCHRONOUS": "bogus"}, "BBO_SQLITE_SYNCHRONOUS"),
        # --llm local serves its packaged model: another model named beside it was ignored
        (["--llm", "local", "--llm-model", "gpt-4o"], {}, "--llm local"),
    ],
)
def test_serve_refuses_numbers_out_of_range_naming_the_flag(tmp_path, args, env, flag):
    """A numeric flag of ``bbo serve`` out of its range: a message naming it and exit status 1,
    before anything listens or a database is made; never a traceback or a server that quietly
    runs with another value."""
    import os

    r = subprocess.run(
        [sys.executable, "-m", "bbo_server", "serve", "--port-file", "port", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, **env},
    )
    said = [line for line in r.stderr.splitlines() if line.startswith(f"bbo serve: {flag}")]
    assert r.returncode == 1 and said, r.stderr
    assert "Traceback" not in r.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args,flag",
    [
        (["demo", "--trials", "-1"], "--trials"),
        (["demo", "--workers", "0"], "--workers"),
        (["kit", "admm", "--trials", "-3", "--server", "127.0.0.1:9"], "--trials"),
        (["kit", "admm", "--workers", "x", "--server", "127.0.0.1:9"], "--workers"),
        (["demo", "--seed", "-1"], "--seed"),  # was refused by the spec, after a server started
        (["kit", "admm", "--seed", str(2**64), "--server", "127.0.0.1:9"], "--seed"),
    ],
)
def test_demo_and_kit_refuse_counts_below_one_before_any_work(tmp_path, args, flag):
    """Before: `bbo demo --trials -1` started a server and created a study before the client
    refused, and `bbo kit ... --trials -3` waited 30 s for a server first."""
    r = subprocess.run(
        [sys.executable, "-m", "bbo_server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and f"argument {flag}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and list(tmp_path.iterdir()) == []


def test_a_database_from_a_newer_bbo_is_a_clean_error(tmp_path):
    """A database a newer bbo migrated (a rollback of an upgrade): `bbo serve` and `bbo copy` into
    it stopped with Alembic's traceback ("Can't locate revision"); now a message saying so, and
    the database is left as it was."""
    import sqlite3

    from bbo.storage import open_storage

    db, src = tmp_path / "newer.db", "sqlite:///" + str(tmp_path / "src.db")
    open_storage("sqlite:///" + str(db)).close()
    open_storage(src).close()
    con = sqlite3.connect(str(db))
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    con.commit()
    con.close()
    for args in (
        ("serve", "--port", "0", "--db", "sqlite:///" + str(db)),
        ("copy", src, "sqlite:///" + str(db)),
    ):
        r = bbo(*args, check=False)
        assert r.returncode == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert "schema revision 9999, written by a newer bbo" in r.stderr, r.stderr
    con = sqlite3.connect(str(db))
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [("9999",)]
