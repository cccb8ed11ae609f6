"""The server built in-process (bbo_server.server.start): graceful stop lets an in-flight Ask
finish; custom strategy factories and the authenticate hook are honoured."""

from __future__ import annotations

import threading
import time

import pytest
from sec_helpers import SobolStrategy

import bbo_client as bc
from bbo_server.errors import Unauthenticated
from bbo_server.server import ServerOptions, start


class SlowStrategy(SobolStrategy):
    """Takes a while per suggestion, like a GP fit."""

    started = threading.Event()
    gate: threading.Event | None = None  # set: a suggestion waits for it (30 s at most), not 1 s
    skip_told = True

    def before_suggest(self) -> None:
        SlowStrategy.started.set()
        if SlowStrategy.gate is None:
            time.sleep(1.0)
        else:
            SlowStrategy.gate.wait(30)


def test_graceful_stop_finishes_in_flight_ask(tmp_path):
    SlowStrategy.started.clear()  # a class attribute: another test may have left it set
    srv = start(
        ServerOptions(
            port=0,
            db="sqlite:///" + str(tmp_path / "g.db"),
            strategy_factory=SlowStrategy,
            rpc_threads=8,
        )
    )
    try:
        with bc.Client(srv.address, retries=0) as c:
            s = c.create_study("slow", parameters=[bc.Float("x", 0, 1)], objectives="y")
            got: list = []
            th = threading.Thread(target=lambda: got.extend(s.ask(1)))
            th.start()
            assert SlowStrategy.started.wait(30)
            srv.stop(grace=30)  # returns once the in-flight Ask has been answered
            th.join(30)
            assert len(got) == 1 and got[0].state == "PENDING"
            assert srv.storage.list_trials(srv.registry.get_study("slow").uid)[0].id == got[0].id
    finally:
        srv.server.stop(0)


def test_slow_ask_does_not_block_tells_or_other_studies(tmp_path):
    srv = start(
        ServerOptions(
            port=0,
            db="sqlite:///" + str(tmp_path / "p.db"),
            strategy_factory=SlowStrategy,
            rpc_threads=8,
            fit_workers=2,
        )
    )
    try:
        with bc.Client(srv.address, retries=0) as c:
            a = c.create_study("a", parameters=[bc.Float("x", 0, 1)], objectives="y")
            (t,) = a.ask()
            order: list[str] = []
            th = threading.Thread(target=lambda: (a.ask(), order.append("slow ask done")))
            SlowStrategy.started.clear()
            # the ask computes until the tell is done (a 1 s suggestion gave a loaded machine's
            # tell 1 s); a tell that waited for the ask returns after it, once the gate's 30 s end
            SlowStrategy.gate = gate = threading.Event()
            th.start()
            assert SlowStrategy.started.wait(30)
            a.tell(t, {"y": 1.0})  # a tell on the same study while its ask computes
            order.append("tell done")
            gate.set()
            th.join(60)
            assert order == ["tell done", "slow ask done"]
    finally:
        SlowStrategy.gate = None
        srv.stop(1)


def test_authenticate_hook_maps_to_unauthenticated_and_tenants(tmp_path):
    def auth(context, method):
        md = dict(context.invocation_metadata())
        key = md.get("authorization", "")
        if not key.startswith("Bearer "):
            raise Unauthenticated("missing API key")
        return key.split(" ", 1)[1]  # tenant = key, for the test

    srv = start(
        ServerOptions(
            port=0, db="sqlite:///" + str(tmp_path / "a.db"), authenticate=auth, rpc_threads=8
        )
    )
    try:
        with bc.Client(srv.address, retries=0) as anon:
            with pytest.raises(bc.Unauthenticated):
                anon.list_studies()
        with bc.Client(srv.address, api_key="t1") as c1, bc.Client(srv.address, api_key="t2") as c2:
            c1.create_study("same", parameters=[bc.Float("x", 0, 1)], objectives="y")
            c2.create_study(
                "same", parameters=[bc.Float("x", 0, 5)], objectives="y"
            )  # another tenant: no clash
            assert [s.name for s in c1.list_studies()] == ["same"]
            assert c2.get_study("same").parameters == [bc.Float("x", 0.0, 5.0)]
    finally:
        srv.stop(1)


def test_preload_imports_the_model_stack():
    """``bbo serve`` imports torch / BoTorch and the strategies in the background at start
    (``_preload``), so the first Ask does not: the server module itself stays light."""
    import subprocess
    import sys

    code = (
        "import sys; from bbo_server.server import _preload\n"
        "assert 'botorch' not in sys.modules\n"
        "_preload()\n"
        "need = {'botorch', 'bbo.strategy.generation', 'bbo.strategy.multi_fidelity'}\n"
        "assert need <= set(sys.modules), need - set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_a_bracketed_ipv6_host_is_served_at_an_address_a_client_can_use(tmp_path):
    """`bbo serve --host [::1]` bound fine but printed "listening on [[::1]]:PORT", an address
    no client can dial."""
    srv = start(ServerOptions(host="[::1]", port=0, db="sqlite:///" + str(tmp_path / "v6.db")))
    try:
        assert srv.address == f"[::1]:{srv.port}"
        with bc.Client(srv.address, retries=0) as c:
            assert c.list_studies() == []
    finally:
        srv.stop(0)
