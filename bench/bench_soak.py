"""Soak: a long steady load on one ``bbo serve`` (SQLite, API keys on) and the server's memory over time.

32 client processes over 8 studies (2 tenants), each looping: ask one trial, evaluate a cheap
function, tell it (5% are told FAILED with a reason; 2% are "dead workers" that never tell, with a
short lease, so lease expiry runs too; every 10th trial heartbeats first). Every client error is
counted: zero are expected. The server's resident memory (psutil, else /proc/PID/status VmRSS) is
sampled every few seconds.

    OMP_NUM_THREADS=1 python bench/bench_soak.py [--minutes 10] [--clients 32] [--studies 8]

Writes bench/results/soak.json and soak.png.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import random
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
from common import limit_threads, pct  # noqa: E402

limit_threads()


def rss_mb(pid: int) -> float:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    return float("nan")


def rss_split_mb(pid: int) -> tuple[float, float]:
    """(anonymous, file-backed) resident MiB from /proc (Linux; NaN elsewhere). File-backed pages are
    mostly shared-library code (libtorch) paged in as new code paths run: they level off."""
    out = {"RssAnon:": float("nan"), "RssFile:": float("nan")}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k = line.split(":")[0] + ":"
                if k in out:
                    out[k] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out["RssAnon:"], out["RssFile:"]


def branin(x1: float, x2: float) -> float:
    a, b, c, r, s, t = 1, 5.1 / (4 * math.pi**2), 5 / math.pi, 6, 10, 1 / (8 * math.pi)
    return a * (x2 - b * x1**2 + c * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s


def objective(params: dict) -> float:
    """The soak studies' metric: Branin plus 0.5 for mode "b"."""
    return branin(params["x1"], params["x2"]) + (0.5 if params["mode"] == "b" else 0.0)


def client_proc(
    idx: int, address: str, key: str, study: str, until: float, seed: int, out_q
) -> None:
    import bbo_client as bc

    rnd = random.Random(seed)
    stats = {
        "idx": idx,
        "study": study,
        "asks": 0,
        "tells": 0,
        "failed": 0,
        "dead": 0,
        "heartbeats": 0,
        "errors": 0,
        "error_samples": [],
        "ask_ms": [],
        "tell_ms": [],
        "ids": [],
    }
    try:
        with bc.Client(address, api_key=key, retries=8, timeout=120, ask_timeout=600) as c:
            s = c.study(study)
            while time.time() < until:
                try:
                    dead = rnd.random() < 0.02
                    t0 = time.perf_counter()
                    (t,) = s.ask(worker_id=f"soak-{idx}", lease_seconds=5.0 if dead else 0.0)
                    stats["ask_ms"].append(1e3 * (time.perf_counter() - t0))
                    stats["asks"] += 1
                    stats["ids"].append(t.id)
                    if dead:
                        stats["dead"] += 1
                        continue
                    if t.id % 10 == 0:
                        s.heartbeat(t)
                        stats["heartbeats"] += 1
                    y = objective(t.params)
                    t0 = time.perf_counter()
                    if rnd.random() < 0.05:
                        s.tell(t, failed=True, reason="simulated failure")
                        stats["failed"] += 1
                    else:
                        s.tell(t, {"y": y})
                    stats["tell_ms"].append(1e3 * (time.perf_counter() - t0))
                    stats["tells"] += 1
                except bc.BboError as e:
                    stats["errors"] += 1
                    if len(stats["error_samples"]) < 5:
                        stats["error_samples"].append(f"{type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001 - reported, not raised
        stats["errors"] += 1
        stats["error_samples"].append(f"{type(e).__name__}: {e}")
    out_q.put(stats)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument(
        "--n-initial", type=int, default=12, help="initial design size per study (BO after it)"
    )
    ap.add_argument(
        "--prefill",
        type=int,
        default=0,
        help="random trials added to each study before the clock starts (a large history at once)",
    )
    ap.add_argument("--sample-seconds", type=float, default=5.0)
    ap.add_argument("--server-args", default="", help="extra `bbo serve` arguments")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()

    import bbo_client as bc
    from bbo_server.process import ServerProcess

    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="bbo-soak-")
    db = "sqlite:///" + os.path.join(tmp, "soak.db")
    srv = ServerProcess(
        db, log_path=os.path.join(tmp, "server.log"), args=["--auth", *args.server_args.split()]
    )
    srv.start()
    pid = srv.proc.pid
    from bbo.storage import open_storage
    from bbo.storage.keys import KeyStore

    st = open_storage(db, pool_size=2)
    keys = [KeyStore(st).create(f"tenant{i}", "soak")[0] for i in range(2)]
    st.close()
    studies = []
    for j in range(args.studies):
        key = keys[j % 2]
        with bc.Client(srv.address, api_key=key) as c:
            c.create_study(
                f"soak-{j}",
                parameters=[
                    bc.Float("x1", -5, 10),
                    bc.Float("x2", 0, 15),
                    bc.Categorical("mode", ["a", "b"]),
                ],
                objectives="y",
                n_initial=args.n_initial,
                seed=j,
            )
            rnd, handle = random.Random(j), c.study(f"soak-{j}")
            for _ in range(args.prefill):
                p = {
                    "x1": rnd.uniform(-5, 10),
                    "x2": rnd.uniform(0, 15),
                    "mode": rnd.choice(["a", "b"]),
                }
                handle.add_trial(p, {"y": objective(p)})
        studies.append((f"soak-{j}", key))

    samples: list[tuple[float, float]] = []
    split: list[tuple[float, float]] = []  # (anon, file) per sample
    stop = threading.Event()
    t_start = time.time()

    def sampler():
        while not stop.is_set():
            samples.append((time.time() - t_start, rss_mb(pid)))
            split.append(rss_split_mb(pid))
            stop.wait(args.sample_seconds)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    until = t_start + 60 * args.minutes
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = []
    for i in range(args.clients):
        name, key = studies[i % len(studies)]
        p = ctx.Process(target=client_proc, args=(i, srv.address, key, name, until, 1000 + i, q))
        p.start()
        procs.append(p)
    results = [q.get() for _ in procs]
    for p in procs:
        p.join(60)
    wall = time.time() - t_start
    stop.set()
    th.join()
    samples.append((time.time() - t_start, rss_mb(pid)))
    split.append(rss_split_mb(pid))
    server_alive = srv.running()

    # the stored truth: every acknowledged tell is there, ids are unique per study
    per_study = {}
    dup_ids = 0
    with (
        bc.Client(srv.address, api_key=keys[0]) as c0,
        bc.Client(srv.address, api_key=keys[1]) as c1,
    ):
        for j, (name, key) in enumerate(studies):
            c = c0 if key == keys[0] else c1
            trials = c.study(name).trials()
            ids = [t.id for t in trials]
            dup_ids += len(ids) - len(set(ids))
            counts: dict[str, int] = {}
            for t in trials:
                counts[t.state] = counts.get(t.state, 0) + 1
            per_study[name] = {"trials": len(trials), **counts}
    srv.stop()

    ask_ms = [x for r in results for x in r["ask_ms"]]
    tell_ms = [x for r in results for x in r["tell_ms"]]
    handed = [(r["study"], i) for r in results for i in r["ids"]]
    rss = [m for _, m in samples]
    warm = [m for t, m in samples if t >= min(60.0, wall / 4)]
    out = {
        "prefill": args.prefill,
        "minutes": args.minutes,
        "clients": args.clients,
        "studies": args.studies,
        "wall_seconds": round(wall, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "asks": sum(r["asks"] for r in results),
        "tells": sum(r["tells"] for r in results),
        "told_failed": sum(r["failed"] for r in results),
        "dead_worker_trials": sum(r["dead"] for r in results),
        "heartbeats": sum(r["heartbeats"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "error_samples": [e for r in results for e in r["error_samples"]][:20],
        "trial_ids_handed_out_twice": len(handed) - len(set(handed)),
        "duplicate_stored_ids": dup_ids,
        "server_alive_at_end": server_alive,
        "asks_per_second": round(sum(r["asks"] for r in results) / wall, 2),
        "ask_ms": {
            "p50": pct(ask_ms, 50, None),
            "p99": pct(ask_ms, 99, None),
            "max": max(ask_ms) if ask_ms else None,
        },
        "tell_ms": {
            "p50": pct(tell_ms, 50, None),
            "p99": pct(tell_ms, 99, None),
            "max": max(tell_ms) if tell_ms else None,
        },
        "rss_mb": {
            "start": rss[0],
            "end": rss[-1],
            "max": max(rss),
            "after_warmup_min": min(warm) if warm else None,
            "after_warmup_max": max(warm) if warm else None,
        },
        "rss_samples": [[round(t, 1), round(m, 1)] for t, m in samples],
        "rss_anon_file_samples": [
            [round(a, 1), round(f, 1)] for a, f in split
        ],  # same times as rss_samples
        "per_study": per_study,
    }
    path = os.path.join(args.out, "soak.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        ax[0].plot([t / 60 for t, _ in samples], rss, label="RSS")
        if split and all(a == a for a, _ in split):
            ax[0].plot(
                [t / 60 for t, _ in samples],
                [a for a, _ in split],
                label="anonymous (heap)",
                lw=0.8,
            )
            ax[0].plot(
                [t / 60 for t, _ in samples],
                [f for _, f in split],
                label="file-backed (library code)",
                lw=0.8,
            )
            ax[0].legend(fontsize=8)
        ax[0].set_xlabel("minutes")
        ax[0].set_ylabel("server RSS (MiB)")
        ax[0].set_title("server resident memory")
        ax[0].set_ylim(bottom=0)
        import numpy as np

        hi = max(ask_ms + tell_ms + [10.0])
        bins = np.logspace(-1, math.log10(hi) + 0.05, 60)
        ax[1].hist(ask_ms, bins=bins, alpha=0.6, label="ask")
        ax[1].hist(tell_ms, bins=bins, alpha=0.6, label="tell")
        ax[1].set_xscale("log")
        ax[1].set_ylabel("calls")
        ax[1].set_xlabel("latency (ms)")
        ax[1].set_title(f"{out['asks']} asks, {out['errors']} errors")
        ax[1].legend()
        fig.suptitle(f"soak: {args.clients} clients, {args.studies} studies, {args.minutes:g} min")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "soak.png"), dpi=110)
    except Exception as e:  # noqa: BLE001
        print(f"plot skipped: {e}", file=sys.stderr)
    print(
        json.dumps(
            {k: v for k, v in out.items() if k not in ("rss_samples", "per_study")}, indent=2
        )
    )
    return (
        0
        if out["errors"] == 0
        and out["trial_ids_handed_out_twice"] == 0
        and out["duplicate_stored_ids"] == 0
        and server_alive
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
