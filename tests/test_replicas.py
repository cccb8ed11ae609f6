"""Scale-out (#7): three ``bbo serve`` replicas on one real PostgreSQL, 32 clients spread over them,
one replica SIGKILLed mid-run.

At the end: every acknowledged tell is stored exactly once with its value, trial ids of each study
are 1..N with no gap or repeat, no two trials of a study got the same point (concurrent asks on
different replicas saw each other's pending trials), and the BO study's fitted model state is in
the database for any replica to pick up. Skipped where the PostgreSQL server binaries are absent.
No timing assertions.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

import bbo_client as bc
from bbo.testing import postgres as pg_cluster

pytestmark = pytest.mark.skipif(
    pg_cluster.missing_reason() is not None, reason=str(pg_cluster.missing_reason())
)

N_CLIENTS = 32
N_REPLICAS = 3
DESIGN_ROUNDS = 12  # ask/tell rounds per client on an initial-design study
BO_ROUNDS = 3  # ... on the BO study (a GP fit per ask, serialized per study)
KILL_AFTER = 100  # acknowledged tells before replica 0 is SIGKILLed


@pytest.fixture
def replicas(cluster, tmp_path):
    from bbo_server.process import ServerProcess

    url = cluster.create_database("replicas_" + uuid.uuid4().hex[:8])
    args = [
        "--workers",
        "1",
        "--rpc-threads",
        "24",
        "--db-pool-size",
        "6",
        "--lease-seconds",
        "300",
    ]
    # the first one migrates the schema; the others start together
    servers = [
        ServerProcess(url, args=args, log_path=str(tmp_path / f"replica-{i}.log"))
        for i in range(N_REPLICAS)
    ]
    servers[0].start()
    errs = []

    def start(s):
        try:
            s.start()
        except Exception as e:  # noqa: BLE001
            errs.append(e)

    ts = [threading.Thread(target=start, args=(s,)) for s in servers[1:]]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs, errs
    yield url, servers
    for s in servers:
        if s.running():
            s.kill()


def _target(servers, home: int) -> str:
    order = [servers[(home + k) % len(servers)] for k in range(len(servers))]
    return "ipv4:" + ",".join(s.address for s in order)


def test_replicas_share_studies_and_survive_a_sigkill(replicas):
    url, servers = replicas
    setup = bc.Client(servers[1].address)
    params = [bc.Float("x", 0.0, 1.0), bc.Categorical("k", ["a", "b", "c"])]
    design = [f"design-{i}" for i in range(3)]
    for name in design:
        setup.create_study(name, parameters=params, objectives="y", n_initial=1000)
    setup.create_study("bo", parameters=params, objectives="y", n_initial=4, seed=11)
    setup.close()
    names = design + ["bo"]

    acked: dict[tuple[str, int], float] = {}
    asked: dict[tuple[str, int], str] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    killed = threading.Event()

    def client(i: int) -> None:
        home = i % N_REPLICAS
        # half spread every call over all replicas (round_robin); half stick to a home replica and
        # move to the next address only when it fails (pick_first over an ordered list)
        policy = "round_robin" if i % 2 == 0 else "pick_first"
        name = "bo" if i % 8 == 7 else design[i % len(design)]  # 4 clients on the BO study
        rounds = BO_ROUNDS if name == "bo" else DESIGN_ROUNDS
        try:
            with bc.Client(
                _target(servers, home), lb_policy=policy, retries=12, max_backoff=2.0
            ) as c:
                s = c.study(name)
                for r in range(rounds):
                    trials = s.ask(2 if r % 4 == 3 else 1, worker_id=f"c{i}")
                    for t in trials:
                        with lock:
                            assert (name, t.id) not in asked, (
                                f"trial {name}/{t.id} handed to {asked.get((name, t.id))} and c{i}"
                            )
                            asked[(name, t.id)] = f"c{i}"
                        y = (
                            i * 1000
                            + r * 10
                            + t.id % 10
                            + (0.5 if t.params["k"] == "a" else 0.0)
                            + t.params["x"]
                        )
                        s.tell(t, {"y": y})
                        with lock:
                            acked[(name, t.id)] = y
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [
        threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(N_CLIENTS)
    ]
    for t in threads:
        t.start()
    deadline = time.time() + 300
    while len(acked) < KILL_AFTER and any(t.is_alive() for t in threads) and time.time() < deadline:
        time.sleep(0.02)
    servers[0].kill()  # SIGKILL mid-run: its clients fail over to the other two
    killed.set()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "clients hung"
    assert not errors, [repr(e) for e in errors[:5]]
    assert len(acked) >= KILL_AFTER

    # ---- verify through a surviving replica and directly in the database ----
    from bbo.storage import open_storage

    with bc.Client(servers[2].address) as c:
        for name in names:
            trials = c.study(name).trials()
            ids = [t.id for t in trials]
            assert ids == list(range(1, len(ids) + 1)), f"{name}: trial ids not 1..N: {ids}"
            # one trial may repeat a point by design (a study whose fit finds noise evaluates
            # its best point again: bbo.strategy.replication); no other two may share one
            points = [(round(t.params["x"], 12), t.params["k"]) for t in trials]
            repeats = [t for t in trials if t.origin == "replicate"]
            assert len(repeats) <= 1, f"{name}: {len(repeats)} replicates"
            assert len(set(points)) == len(points) - len(repeats), (
                f"{name}: two trials got the same point"
            )
            by_id = {t.id: t for t in trials}
            for (sname, tid), y in acked.items():
                if sname == name:
                    assert by_id[tid].state == "COMPLETED" and by_id[tid].metrics == {"y": y}, (
                        name,
                        tid,
                    )
            values = [t.metrics["y"] for t in trials if t.state == "COMPLETED"]
            assert len(values) == len(set(values)), f"{name}: a tell stored twice"
            assert not [t for t in trials if t.state == "PENDING"], (
                f"{name}: an ask's trials were lost to the killed replica"
            )
        bo = c.study("bo").trials()
        assert any(t.origin not in ("initial", "user") for t in bo), (
            "the BO study never left its initial design"
        )
    st = open_storage(url, pool_size=2, migrate=False)
    try:
        from bbo.model_sharing import ModelStateCache

        rec = st.get_study("default", "bo")
        state = ModelStateCache(st).get(rec.uid)
        assert state is not None and state["n_fit"] >= 2, (
            "no fitted model state shared in the database"
        )
    finally:
        st.close()
