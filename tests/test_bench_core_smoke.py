"""The core benchmark: `--quick` runs end to end and writes the JSON the full benchmark writes;
its linear-constraint problem reaches each peer in that peer's convention."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_core_quick(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "bench", "bench_core.py"),
            "--quick",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    doc = json.load(open(tmp_path / "core_quick_latest.json"))
    assert set(doc) >= {"meta", "regret", "latency", "runs", "table_md"}
    assert doc["meta"]["quick"] is True
    for method in ("bbo", "optuna_tpe", "random"):
        cell = doc["regret"]["branin"][method]
        assert cell["median_final"] is not None and cell["median_final"] >= 0
        assert set(cell["median_at"]) == {"10"}
        assert not cell["errors"]
    runs = [x for x in doc["runs"] if x["method"] == "bbo"]
    assert len(runs) == 1 and len(runs[0]["curve"]) == 12
    lat = doc["latency"]["bbo"]["20"]
    assert lat["warm"] > 0 and lat["cold"] > 0
    assert "| branin |" in doc["table_md"]
    assert (tmp_path / "core_regret.png").exists()


def test_a_linear_constraint_reaches_each_peer_in_its_own_convention():
    """hartmann6_lin: random search samples inside the constraint, Optuna is told its slack, and
    a point outside it never counts as the best feasible value."""
    import numpy as np
    from peers import OptunaTPE
    from problems import hartmann6_linear, random_params

    prob = hartmann6_linear()
    rng = np.random.default_rng(0)
    assert all(sum(random_params(prob.space, rng).values()) <= 2.0 for _ in range(20))
    tpe = OptunaTPE(prob, seed=0)
    for _ in range(6):
        p = tpe.ask()
        y = prob.evaluate(p)
        (slack,) = tpe._slack(y, p)
        assert slack == pytest.approx(sum(p.values()) - 2.0)
        assert prob.feasible(y, p) == (slack <= 1e-9)
        tpe.tell(p, y)
    assert tpe.study.trials[-1].user_attrs["c"] == [slack]


def test_several_workers_ask_while_points_are_pending(monkeypatch):
    """regret_run with workers: each ask after the first few sees the other workers' points as
    pending (bbo's PENDING trials, Optuna's RUNNING ones), and results come back out of order."""
    import peers
    from bench_core import regret_run
    from optuna.trial import TrialState as OptunaState

    from bbo.trial import TrialState

    pending, told = {"bbo": [], "optuna_tpe": []}, []
    ask_bbo, tell_bbo, ask_optuna = (
        peers.Bbo.ask_async,
        peers.Bbo.tell_async,
        peers._Optuna.ask_async,
    )

    def spy_bbo(self):
        pending["bbo"].append(sum(t.state is TrialState.PENDING for t in self.trials))
        return ask_bbo(self)

    def spy_tell(self, handle, params, metrics):
        told.append(handle.id)
        return tell_bbo(self, handle, params, metrics)

    def spy_optuna(self):
        running = self.study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,))
        pending["optuna_tpe"].append(len(running))
        return ask_optuna(self)

    monkeypatch.setattr(peers.Bbo, "ask_async", spy_bbo)
    monkeypatch.setattr(peers.Bbo, "tell_async", spy_tell)
    monkeypatch.setattr(peers._Optuna, "ask_async", spy_optuna)
    for method in ("bbo", "optuna_tpe"):
        r = regret_run("branin", method, 0, 9, "cpu", parallel=3)
        assert not r["error"] and r["parallel"] == 3 and len(r["curve"]) == 9
        assert pending[method] == [0, 1, 2] + [2] * 6
    assert sorted(told) == list(range(9)) and told != sorted(told)
