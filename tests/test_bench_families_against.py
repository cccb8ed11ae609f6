"""bench/bench_families.py's ``against``: a tagged engine ranked with a stored summary's peers
and paired with its bbo, seed by seed (how the noisy families' "tried" rows are measured)."""

from __future__ import annotations

import pytest
from bench_families import against  # bench/ is on pytest's pythonpath (pyproject.toml)


def test_against_ranks_with_the_stored_peers_and_pairs_with_the_stored_bbo():
    stored = {
        "problems": {
            "p": {
                "seeds": [0, 1, 2],
                "methods": {
                    "bbo": {"reported_true": [2.0, 2.0, 4.0]},
                    "optuna_gp": {"reported_true": [1.0, 3.0, 3.0]},
                },
            }
        }
    }
    # the new engine: better than the peer on seed 0, no feasible point on seed 1, seed 2 not run
    runs = {
        ("p", "bbo@new", 0): {"reported_true": 0.0},
        ("p", "bbo@new", 1): {"reported_true": None},
    }
    out = against(stored, runs, "bbo@new")
    assert out["runs"] == 2
    assert out["mean_rank"] == {"bbo": 1.5, "optuna_gp": 1.5}  # first on seed 0, last on seed 1
    sd = 0.9574271077563381  # population sd of the stored values 2, 2, 4, 1, 3, 3
    assert out["delta"] == pytest.approx(-2.0 / sd)  # seed 1 has no value to pair
    assert out["delta_se"] is None and out["delta_by_problem"] == {"p": pytest.approx(-2.0 / sd)}


def test_a_run_with_workers_reports_the_measurement_of_its_reported_point():
    """With several workers results come back out of ask order; the reported point's noisy
    measurement is still its own (bbo's trial ids count asks, the run's values count tells)."""
    from bench_families import one_run

    r = one_run("branin_hetero", "bbo", 0, 12, "", parallel=3)
    assert not r["error"] and r["parallel"] == 3 and len(r["values"]) == 12
    rows = [i for i, p in enumerate(r["params"]) if p == r["reported"]]
    assert rows and r["reported_observed"] in [r["values"][i] for i in rows]
