"""Suggestions are computed on the registry's few dedicated fit threads, never on the callers' (RPC)
threads: that bounds how many glibc malloc arenas hold a GP fit's freed buffers (soak RSS)."""

from __future__ import annotations

import threading

from bbo.registry import StudyRegistry

SPEC = {
    "parameters": [{"type": "float", "name": "x", "low": 0.0, "high": 1.0}],
    "objectives": [{"name": "y"}],
    "algorithm": {"n_initial": 3},
}


def test_suggestions_run_on_at_most_fit_slots_dedicated_threads(storage):
    from bbo.strategy import GenerationStrategy

    seen: list[str] = []

    class Recording(GenerationStrategy):
        def suggest(self, trials, n=1, **kw):
            seen.append(threading.current_thread().name)
            return super().suggest(trials, n, **kw)

    reg = StudyRegistry(storage, strategy_factory=Recording, fit_slots=2)
    studies = [reg.create_study(f"s{i}", SPEC)[0] for i in range(4)]
    errors: list[BaseException] = []

    def worker(st):
        try:
            for _ in range(4):  # past the initial design: GP fits too
                (t,) = st.ask().trials
                st.tell(t.id, {"y": (t.params["x"] - 0.3) ** 2})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    callers = [
        threading.Thread(target=worker, args=(st,), name=f"caller-{i}")
        for i, st in enumerate(studies)
    ]
    for th in callers:
        th.start()
    for th in callers:
        th.join(300)
    assert not errors, errors
    assert len(seen) == 16
    assert all(n.startswith("bbo-fit") for n in seen), set(seen)
    assert 1 <= len(set(seen)) <= 2
    last = [(st.trials()[-1].origin, st.trials()[-1].reason) for st in studies]
    assert all(o == "bo" for o, _ in last), last


def test_malloc_arenas_are_capped_unless_the_user_set_them(monkeypatch):
    import sys

    from bbo.memory import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the user's setting wins (glibc read it at start-up)
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    if sys.platform.startswith("linux"):
        assert limit_malloc_arenas(2) is True  # glibc's mallopt accepted M_ARENA_MAX


def test_mkl_buffer_pools_are_off_unless_the_user_chose(monkeypatch):
    import os

    from bbo.memory import disable_mkl_fast_mm

    monkeypatch.setenv("MKL_DISABLE_FAST_MM", "0")
    assert disable_mkl_fast_mm() is False and os.environ["MKL_DISABLE_FAST_MM"] == "0"
    monkeypatch.delenv("MKL_DISABLE_FAST_MM")
    assert disable_mkl_fast_mm() is True and os.environ["MKL_DISABLE_FAST_MM"] == "1"
