"""Service throughput: 16 concurrent client processes on loopback against ``bbo serve`` on SQLite.

Phases, per configuration (each against a fresh server and database):

- ask: every client asks one trial at a time (all inside the study's initial design, so the
  strategy is cheap and this measures the service path: lock, lease check, insert, commit);
- tell: after a barrier, every client tells all of its trials as fast as it can. Each Tell is a
  committed (durable) transaction before it is acknowledged. tells/s = tells / wall time of the
  phase (first tell sent to last tell acknowledged).

Configurations: bbo with SQLite ``synchronous=FULL`` (the default) and ``NORMAL``, and a bare
baseline in the same run: a grpcio server (same thread pool size) whose handler does one SQLite
(WAL) insert + commit per call, no protobuf, no validation, with the same synchronous levels.

    OMP_NUM_THREADS=1 python bench/bench_service.py [--clients 16] [--trials 100]

Writes bench/results/service.json and service.png.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
from common import limit_threads, pct  # noqa: E402

limit_threads()


def summary(lat_s: list[float]) -> dict:
    ms = [1e3 * x for x in lat_s]
    return {
        "n": len(ms),
        "p50_ms": pct(ms, 50),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
        "max_ms": max(ms) if ms else None,
        "mean_ms": statistics.fmean(ms) if ms else None,
    }


# ---- bbo clients --------------------------------------------------------------------------------


def bbo_client_proc(address: str, study: str, n: int, idx: int, barrier, out_q) -> None:
    import bbo_client as bc

    with bc.Client(address, retries=0) as c:
        s = c.study(study)
        ask_lat, trials = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            (t,) = s.ask(worker_id=f"c{idx}")
            ask_lat.append(time.perf_counter() - t0)
            trials.append(t)
        barrier.wait()
        tell_lat, start = [], time.time()
        for t in trials:
            t0 = time.perf_counter()
            s.tell(t.id, {"y": float(t.params["x"]) ** 2})
            tell_lat.append(time.perf_counter() - t0)
        out_q.put({"ask": ask_lat, "tell": tell_lat, "tell_start": start, "tell_end": time.time()})


def run_bbo(clients: int, trials: int, synchronous: str) -> dict:
    import bbo_client as bc
    from bbo_server.process import ServerProcess

    d = tempfile.mkdtemp(prefix="bbo-bench-")
    db = f"sqlite:///{d}/bbo.db?synchronous={synchronous}"
    srv = ServerProcess(
        db,
        args=["--log-level", "warning", "--workers", "1"],
        log_path=os.path.join(d, "server.log"),
    ).start()
    try:
        with bc.Client(srv.address) as c:
            c.create_study(
                "bench",
                parameters=[bc.Float("x", -1, 1), bc.Float("z", -1, 1)],
                objectives="y",
                n_initial=10_000,
            )
            # warm up: the strategy's imports and the first ask are not what this measures
            c.create_study("warmup", parameters=[bc.Float("x", -1, 1)], objectives="y").ask(2)
        res = _run_clients(bbo_client_proc, (srv.address, "bench"), clients, trials)
        with bc.Client(srv.address) as c:
            info = c.get_study("bench")
        res["stored_completed"] = info.completed_count
    finally:
        srv.stop()
    return res


def _run_clients(target, args, clients: int, trials: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(clients)
    q = ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(*args, trials, i, barrier, q)) for i in range(clients)
    ]
    for p in procs:
        p.start()
    outs = [q.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(60)
    tells = [x for o in outs for x in o["tell"]]
    asks = [x for o in outs for x in o["ask"]]
    wall = max(o["tell_end"] for o in outs) - min(o["tell_start"] for o in outs)
    out = {
        "clients": clients,
        "trials_per_client": trials,
        "tells": len(tells),
        "tell_wall_s": wall,
        "tells_per_s": len(tells) / wall,
        "tell": summary(tells),
    }
    if asks:
        ask_wall = None
        out["ask"] = summary(asks)
        out["ask"]["wall_s"] = ask_wall
    return out


# ---- the bare baseline --------------------------------------------------------------------------


def bare_server(port_q, synchronous: str, path: str, stop_evt) -> None:
    import grpc

    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB)")
    lock = threading.Lock()

    def put(req: bytes, ctx) -> bytes:
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute("INSERT INTO t (body) VALUES (?)", (req,))
            conn.execute("COMMIT")
            return str(cur.lastrowid).encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Bare", {"Put": grpc.unary_unary_rpc_method_handler(put)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_q.put(port)
    stop_evt.wait()
    server.stop(1).wait()


def bare_client_proc(address: str, n: int, idx: int, barrier, out_q) -> None:
    import grpc

    with grpc.insecure_channel(address) as ch:
        put = ch.unary_unary("/bench.Bare/Put")
        put(b"warmup", timeout=10)
        barrier.wait()
        lat, start = [], time.time()
        for i in range(n):
            t0 = time.perf_counter()
            put(f'{{"trial": {i}, "y": 0.5}}'.encode(), timeout=10)
            lat.append(time.perf_counter() - t0)
        out_q.put({"ask": [], "tell": lat, "tell_start": start, "tell_end": time.time()})


def run_bare(clients: int, trials: int, synchronous: str) -> dict:
    ctx = mp.get_context("spawn")
    d = tempfile.mkdtemp(prefix="bbo-bare-")
    port_q, stop_evt = ctx.Queue(), ctx.Event()
    srv = ctx.Process(
        target=bare_server, args=(port_q, synchronous, os.path.join(d, "bare.db"), stop_evt)
    )
    srv.start()
    try:
        port = port_q.get(timeout=60)
        return _run_clients(bare_client_proc, (f"127.0.0.1:{port}",), clients, trials)
    finally:
        stop_evt.set()
        srv.join(30)


# ---- main ---------------------------------------------------------------------------------------


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    tps = [results[n]["tells_per_s"] for n in names]
    colors = ["tab:blue" if n.startswith("bbo") else "tab:gray" for n in names]
    a1.barh(names, tps, color=colors)
    a1.axvline(1000, color="tab:red", ls="--", lw=1, label="target 1000/s")
    a1.set_xlabel("durable writes per second (16 clients)")
    a1.legend(fontsize=8)
    for i, v in enumerate(tps):
        a1.text(v, i, f" {v:.0f}", va="center", fontsize=8)
    x = range(len(names))
    p50 = [results[n]["tell"]["p50_ms"] for n in names]
    p99 = [results[n]["tell"]["p99_ms"] for n in names]
    a2.bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
    a2.bar([i + 0.2 for i in x], p99, width=0.4, label="p99")
    for n in names:
        if "ask" in results[n]:
            i = names.index(n)
            a2.plot([i], [results[n]["ask"]["p99_ms"]], "k^", label="Ask p99" if i == 0 else None)
    a2.axhline(50, color="tab:red", ls="--", lw=1, label="target p99 50 ms")
    a2.set_xticks(list(x))
    a2.set_xticklabels(names, rotation=20, fontsize=8)
    a2.set_ylabel("Tell (write) latency, ms")
    a2.legend(fontsize=8)
    fig.suptitle(
        f"bbo service on loopback, SQLite WAL, {platform.node()} ({os.cpu_count()} cores)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--trials", type=int, default=100, help="trials per client (asked, then told)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated subset of: bbo_full,bbo_normal,bare_full,bare_normal",
    )
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    configs = {
        "bbo_full": lambda: run_bbo(a.clients, a.trials, "FULL"),
        "bbo_normal": lambda: run_bbo(a.clients, a.trials, "NORMAL"),
        "bare_full": lambda: run_bare(a.clients, a.trials, "FULL"),
        "bare_normal": lambda: run_bare(a.clients, a.trials, "NORMAL"),
    }
    wanted = [c for c in (a.only.split(",") if a.only else configs)]
    load0 = os.getloadavg()  # other work on the machine skews every figure: recorded with them
    results = {}
    for name in wanted:
        t0 = time.time()
        results[name] = configs[name]()
        r = results[name]
        ask = r.get("ask")
        print(
            f"{name:12s} tells/s {r['tells_per_s']:7.0f}  Tell p50 {r['tell']['p50_ms']:6.2f} ms  p99 {r['tell']['p99_ms']:6.2f} ms"
            + (f"  | Ask p50 {ask['p50_ms']:6.2f} ms  p99 {ask['p99_ms']:6.2f} ms" if ask else "")
            + f"  ({time.time() - t0:.0f}s)",
            flush=True,
        )
    if "bbo_full" in results and "bare_full" in results:
        results["ratio_bbo_to_bare_full"] = (
            results["bbo_full"]["tells_per_s"] / results["bare_full"]["tells_per_s"]
        )
    meta = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "clients": a.clients,
        "trials_per_client": a.trials,
        "load_average_at_start": load0,
    }
    with open(os.path.join(a.out, "service.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    plot(
        {k: v for k, v in results.items() if isinstance(v, dict)},
        os.path.join(a.out, "service.png"),
    )
    print(f"wrote {os.path.join(a.out, 'service.json')} and service.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
