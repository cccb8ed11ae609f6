"""Scale-out: tells/s and asks/s with 1, 2 and 3 ``bbo serve`` replicas on one PostgreSQL, same run.

For each replica count (each against a fresh database on one throwaway PostgreSQL cluster, see
``bbo/testing/postgres.py``): ``--clients`` client processes, each with a gRPC channel over *all*
replicas (``ipv4:a,b,c`` target, ``round_robin`` policy: every call may land on any replica), spread
over ``--studies`` studies.

- ask phase: every client asks ``--trials`` trials one at a time (studies inside their initial
  design, so this is the service path: cross-replica study lock, lease check, model-state check,
  insert, commit);
- tell phase: after a barrier, every client tells all of its trials; each Tell is committed before
  it is acknowledged. x/s = calls / wall time of the phase (first call sent to last acknowledged).

Everything (PostgreSQL, the replicas, the clients) shares this machine's cores, so the ratio shows
what adding replicas buys *on one box*; with replicas on their own machines the per-replica CPU would
add up instead. See the printed core count.

    OMP_NUM_THREADS=1 python bench/bench_replicas.py [--replicas 1,2,3] [--clients 16] [--studies 8] [--trials 40]

Writes bench/results/replicas.json and replicas.png.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
from common import limit_threads, pct  # noqa: E402

limit_threads()


def summary(lat_s):
    ms = [1e3 * x for x in lat_s]
    return {
        "n": len(ms),
        "p50_ms": pct(ms, 50),
        "p99_ms": pct(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else None,
    }


def client_proc(target: str, study: str, n: int, idx: int, barrier, out_q) -> None:
    import bbo_client as bc

    with bc.Client(target, lb_policy="round_robin", retries=3) as c:
        s = c.study(study)
        c.wait_ready(60)
        barrier.wait()
        ask_lat, trials, a0 = [], [], time.time()
        for _ in range(n):
            t0 = time.perf_counter()
            (t,) = s.ask(worker_id=f"c{idx}")
            ask_lat.append(time.perf_counter() - t0)
            trials.append(t)
        a1 = time.time()
        barrier.wait()
        tell_lat, t_start = [], time.time()
        for t in trials:
            t0 = time.perf_counter()
            s.tell(t.id, {"y": float(t.params["x"]) ** 2 + idx})
            tell_lat.append(time.perf_counter() - t0)
        out_q.put(
            {
                "ask": ask_lat,
                "ask_start": a0,
                "ask_end": a1,
                "tell": tell_lat,
                "tell_start": t_start,
                "tell_end": time.time(),
            }
        )


def run(cluster, n_replicas: int, clients: int, studies: int, trials: int, workdir: str) -> dict:
    import bbo_client as bc
    from bbo.storage import open_storage
    from bbo_server.process import ServerProcess

    url = cluster.create_database(f"bench_{n_replicas}_{uuid.uuid4().hex[:6]}")
    open_storage(url).close()  # migrate once, before the replicas start
    args = ["--log-level", "warning", "--workers", "1", "--db-pool-size", "8"]
    servers = [
        ServerProcess(url, args=args, log_path=os.path.join(workdir, f"r{n_replicas}-{i}.log"))
        for i in range(n_replicas)
    ]
    errors = []

    def start(s):
        try:
            s.start(timeout=300)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{e}\n{s.log_tail()}")

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for s in servers:
            s.kill()
        raise RuntimeError("a replica did not start:\n" + "\n".join(errors))
    try:
        target = "ipv4:" + ",".join(s.address for s in servers)
        names = [f"s{k}" for k in range(studies)]
        with bc.Client(servers[0].address) as c:
            for name in names:
                c.create_study(
                    name,
                    parameters=[bc.Float("x", 0.0, 1.0), bc.Categorical("k", ["a", "b"])],
                    objectives="y",
                    n_initial=10_000,
                )
        ctx = mp.get_context("spawn")
        barrier, q = ctx.Barrier(clients), ctx.Queue()
        procs = [
            ctx.Process(
                target=client_proc, args=(target, names[i % studies], trials, i, barrier, q)
            )
            for i in range(clients)
        ]
        for p in procs:
            p.start()
        res = [q.get(timeout=900) for _ in procs]
        for p in procs:
            p.join(60)
        # every trial stored once, every tell durable
        st = open_storage(url, pool_size=2, migrate=False)
        total = sum(
            st.trial_counts(st.get_study("default", n).uid).get("COMPLETED", 0) for n in names
        )
        st.close()
        assert total == clients * trials, (total, clients * trials)
    finally:
        for s in servers:
            s.stop()
    n = clients * trials
    ask_wall = max(r["ask_end"] for r in res) - min(r["ask_start"] for r in res)
    tell_wall = max(r["tell_end"] for r in res) - min(r["tell_start"] for r in res)
    out = {
        "replicas": n_replicas,
        "asks_per_s": n / ask_wall,
        "tells_per_s": n / tell_wall,
        "ask": summary([x for r in res for x in r["ask"]]),
        "tell": summary([x for r in res for x in r["tell"]]),
        "asks": n,
        "tells": n,
    }
    print(
        f"{n_replicas} replica(s): {out['asks_per_s']:.0f} asks/s (p50 {out['ask']['p50_ms']:.1f} ms), "
        f"{out['tells_per_s']:.0f} tells/s (p50 {out['tell']['p50_ms']:.1f} ms)",
        flush=True,
    )
    return out


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    xs = [r["replicas"] for r in rows]
    for ax, key, label in (
        (axes[0], "asks_per_s", "asks/s"),
        (axes[1], "tells_per_s", "tells/s (durable)"),
    ):
        ys = [r[key] for r in rows]
        bars = ax.bar([str(x) for x in xs], ys, color="#4c72b0")
        for b, y in zip(bars, ys):
            ax.annotate(
                f"{y:.0f}\n({y / ys[0]:.2f}x)",
                (b.get_x() + b.get_width() / 2, y),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xlabel("replicas")
        ax.set_title(label)
        ax.set_ylim(0, max(ys) * 1.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", default="1,2,3")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--trials", type=int, default=40, help="asks (and tells) per client")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    from bbo.testing import postgres as pg_cluster

    reason = pg_cluster.missing_reason()
    if reason:
        print(f"bench_replicas: skipped: {reason}")
        return 0
    os.makedirs(a.out, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cluster = pg_cluster.start(max_connections=400)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bbo-bench-replicas-") as d:
            for r in [int(x) for x in a.replicas.split(",")]:
                rows.append(run(cluster, r, a.clients, a.studies, a.trials, d))
    finally:
        pg_cluster.stop(cluster, immediate=True)
    base = rows[0]
    for r in rows:
        r["ask_scaling"] = r["asks_per_s"] / base["asks_per_s"]
        r["tell_scaling"] = r["tells_per_s"] / base["tells_per_s"]
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    result = {
        "benchmark": "replicas",
        "setup": {
            "clients": a.clients,
            "studies": a.studies,
            "trials_per_client": a.trials,
            "cores": cores,
            "load_avg_at_end": load,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "note": "PostgreSQL, every replica and every client process share these cores; lb policy round_robin over all replicas",
        },
        "results": rows,
    }
    path = os.path.join(a.out, "replicas.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    plot(
        rows,
        os.path.join(a.out, "replicas.png"),
        f"bbo replicas on one PostgreSQL, {a.clients} clients, {a.studies} studies, {cores} cores (all on one machine)",
    )
    print("replicas  asks/s  (x)     tells/s  (x)")
    for r in rows:
        print(
            f"{r['replicas']:>8}  {r['asks_per_s']:6.0f}  {r['ask_scaling']:.2f}  {r['tells_per_s']:7.0f}  {r['tell_scaling']:.2f}"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
