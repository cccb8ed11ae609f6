"""Smoke run of the benchmark suite runner (bench/run_all.py --quick) in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_all_quick(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "bench", "run_all.py"),
        "--quick",
        "--budget",
        "6",
        "--jobs",
        "2",
        "--out",
        str(tmp_path),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    with open(tmp_path / "suite.json") as f:
        data = json.load(f)
    meta, table, runs = data["meta"], data["table"], data["runs"]
    assert meta["mode"] == "quick" and meta["budget"] == 6 and meta["seeds"] == [0]
    methods = meta["methods"]
    assert {"bbo", "random"} <= set(methods)
    kit_names = [n for n in meta["problems"] if n.split("-")[0] in ("hpo", "admm", "cloud")]
    assert {n.split("-")[0] for n in kit_names} == {"hpo", "admm", "cloud"}
    assert len(meta["problems"]) > len(kit_names), "synthetic problems missing"
    assert len(runs) == len(meta["problems"]) * len(methods)
    for run in runs:
        assert not run["error"], run
        assert len(run["curve"]) == 6 and len(run["values"]) == 6 and len(run["feasible"]) == 6
        # the curve is the best feasible value so far: monotone once defined
        vals = [v for v in run["curve"] if v is not None]
        goal = table["problems"][run["problem"]]["goal"]
        assert (
            vals == sorted(vals, reverse=(goal == "minimize"))
            or len(vals) <= 1
            or goal not in ("minimize", "maximize")
        )
    for name in meta["problems"]:
        entry = table["problems"][name]
        for m in methods:
            d = entry["methods"][m]
            assert set(d) >= {
                "final_best_mean",
                "final_regret_mean",
                "mean_rank",
                "regret_curve_mean",
                "runs",
            }
            assert d["runs"] == 1
    assert set(table["mean_rank"]) == set(methods)
    md = (tmp_path / "suite.md").read_text()
    assert "Mean rank" in md and "bbo" in md
    assert (tmp_path / "suite_regret.png").stat().st_size > 1000
