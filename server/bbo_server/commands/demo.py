"""``bbo demo``: start a server on SQLite under ./runs/, tune a scikit-learn model through the
Python client with 2 workers, print the best trial and the path of a progress plot, stop."""

from __future__ import annotations

import os
import time


def register(sub) -> None:
    p = sub.add_parser("demo", help="run a real tuning study end to end (server + client + plot)")
    from bbo.kits.cli import add_count_arguments, add_seed_argument

    add_count_arguments(p, trials=25, workers=2)
    p.add_argument(
        "--runs-dir",
        default="runs",
        help="where the database, server log and plot go (default ./%(default)s)",
    )
    add_seed_argument(p)
    p.set_defaults(func=run)


def evaluate(params: dict) -> dict:
    """3-fold CV accuracy of gradient boosting on the breast-cancer data, with its size and time."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.model_selection import cross_validate

    X, y = load_breast_cancer(return_X_y=True)
    model = GradientBoostingClassifier(
        learning_rate=params["learning_rate"],
        n_estimators=int(params["n_estimators"]),
        max_depth=int(params["max_depth"]),
        subsample=params["subsample"],
        max_features=params["max_features"],
        random_state=0,
    )
    t0 = time.perf_counter()
    cv = cross_validate(model, X, y, cv=3, return_estimator=True)
    seconds = time.perf_counter() - t0
    leaves = sum(
        sum(t.tree_.n_leaves for t in est.estimators_.ravel()) for est in cv["estimator"]
    ) / len(cv["estimator"])
    return {
        "cv_accuracy": float(cv["test_score"].mean()),
        "model_leaves": float(leaves),
        "fit_seconds": seconds,
    }


def run(args) -> int:
    import bbo_client as bc
    from bbo_server.commands.plot import plot_study
    from bbo_server.process import ServerProcess

    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.abspath(os.path.join(args.runs_dir, f"demo-{stamp}"))
    os.makedirs(run_dir, exist_ok=True)
    db = "sqlite:///" + os.path.join(run_dir, "bbo.db")
    print(f"bbo demo: starting a server on {db}")
    # One suggestion at a time with one torch thread: the two evaluation threads need the other core.
    server = ServerProcess(
        db,
        args=["--workers", "1", "--torch-threads", "1"],
        log_path=os.path.join(run_dir, "server.log"),
    )
    server.start()
    try:
        print(f"bbo demo: server listening on {server.address} (log {server.log_path})")
        with bc.Client(server.address) as client:
            study = client.create_study(
                f"demo-gbm-{stamp}",
                parameters=[
                    bc.Float("learning_rate", 0.01, 0.5, log=True),
                    bc.Int("n_estimators", 20, 300, log=True),
                    bc.Int("max_depth", 1, 6),
                    bc.Float("subsample", 0.5, 1.0),
                    bc.Float(
                        "max_features", 0.1, 1.0
                    ),  # fraction of the 30 features tried per split
                ],
                objectives=[bc.Maximize("cv_accuracy")],
                constraints=[bc.Constraint("model_leaves", "<=", 1500)],
                tracked_metrics=["fit_seconds"],
                description="Gradient boosting on the Wisconsin breast-cancer data: maximize 3-fold CV accuracy, "
                "with at most 1500 leaves in the ensemble (a model-size budget).",
                seed=args.seed,
            )
            print(f"bbo demo: study {study.name}: {args.trials} trials, {args.workers} workers")
            best = study.optimize(evaluate, n_trials=args.trials, n_workers=args.workers)
            trials = study.trials()
            info = study.info()
        plot = plot_study(info, trials, os.path.join(run_dir, "progress.png"))
    finally:
        server.stop()
    n_done = sum(t.state == "COMPLETED" for t in trials)
    print(f"\nbbo demo: {n_done} of {len(trials)} trials completed")
    if best.trial is None:
        print("no feasible trial found")
    else:
        t = best.trial
        print(
            f"best trial {t.id} ({t.origin}): cv_accuracy={t.metrics['cv_accuracy']:.4f}, model_leaves={t.metrics['model_leaves']:.0f}"
        )
        order = [p.name for p in info.parameters]
        print(
            "  "
            + ", ".join(
                f"{k}={t.params[k]:.4g}" if isinstance(t.params[k], float) else f"{k}={t.params[k]}"
                for k in order
            )
        )
    print(f"plot:     {plot}")
    print(f"database: {db}   (inspect: bbo trials {study.name} --db {db})")
    return 0
