"""Screenshot of the web dashboard on a real study: docs/dashboard.png.

Starts ``bbo serve --dashboard-port`` on a temporary SQLite database, tunes scikit-learn's
SGDClassifier on the bundled digits data set (validation error per epoch reported as intermediate
values; with ``--stop-early``, from the middle epoch on, a trial the median rule calls hopeless
is stopped and told as failed) with two worker threads, then opens the study in headless
Chromium (Debian's ``chromium`` + ``chromium-driver``).

    OMP_NUM_THREADS=1 python bench/dashboard_screenshot.py [--trials 30] [-o docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import bbo_client as bc
from bbo_server.process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 12
MAX_DENSITY = 0.9  # outcome constraint: at most this fraction of non-zero weights


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data():
    x, y = load_digits(return_X_y=True)
    xt, xv, yt, yv = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(xt)
    return scaler.transform(xt), scaler.transform(xv), yt, yv


def run_trial(study, trial, xt, xv, yt, yv, stop_early: bool) -> None:
    """Train epoch by epoch, report the validation error; with ``stop_early``, stop when the
    median rule says so."""
    p = trial.params
    model = SGDClassifier(
        loss="log_loss",
        alpha=p["alpha"],
        learning_rate=p["schedule"],
        eta0=p["eta0"],
        penalty="elasticnet",
        l1_ratio=p["l1_ratio"],
        random_state=trial.id,
    )
    classes = np.unique(yt)
    t0 = time.perf_counter()
    err = 1.0
    for epoch in range(EPOCHS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.partial_fit(xt, yt, classes=classes)
        err = float(1.0 - model.score(xv, yv))
        stop = study.report_intermediate(trial, epoch, err)
        if stop_early and stop and epoch >= EPOCHS // 2:  # early epochs are too noisy to judge by
            study.tell(trial, failed=True, reason=f"stopped at epoch {epoch} by the median rule")
            return
    density = float(np.mean(model.coef_ != 0))
    study.tell(
        trial,
        {"val_error": err, "weight_density": density, "train_s": time.perf_counter() - t0},
    )


def tune(address: str, name: str, trials: int, workers: int, stop_early: bool) -> None:
    xt, xv, yt, yv = data()
    with bc.Client(address) as client:
        study = client.create_study(
            name,
            parameters=[
                bc.Float("alpha", 1e-6, 1e-1, log=True),
                bc.Float("eta0", 1e-4, 1.0, log=True),
                bc.Categorical("schedule", ["constant", "invscaling", "adaptive"]),
                bc.Float("l1_ratio", 0.0, 1.0),
            ],
            objectives=[bc.Minimize("val_error")],
            constraints=[bc.Constraint("weight_density", "<=", MAX_DENSITY)],
            tracked_metrics=["train_s"],
            description="Logistic regression by SGD (elastic net) on scikit-learn's digits: "
            f"validation error per epoch, at most {MAX_DENSITY:.0%} non-zero weights.",
        )
        left = [trials]
        lock = threading.Lock()

        def worker(i: int) -> None:
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                (t,) = study.ask(worker_id=f"worker-{i}")
                run_trial(study, t, xt, xv, yt, yv, stop_early)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()


def screenshot(url: str, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        "--hide-scrollbars",
    ]:
        opts.add_argument(a)
    with tempfile.TemporaryDirectory(prefix="bbo-chromium-") as profile:
        opts.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
        try:
            driver.get(url)
            WebDriverWait(driver, 60).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, "#plot-params .scatterlayer .trace")
            )
            # the trials table's scroll box ends the page; the LLM log (empty here) is cut
            height = driver.execute_script(
                "const t = document.querySelector('#trials-table').closest('section');"
                "return Math.ceil(t.getBoundingClientRect().bottom + window.scrollY + 10)"
            )
            driver.set_window_size(1400, height)
            time.sleep(1.0)  # let Plotly's responsive relayout settle after the resize
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stop-early", action="store_true", help="honour the median stopping rule")
    ap.add_argument("-o", "--output", default=str(ROOT / "docs" / "dashboard.png"))
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bbo-dash-") as d:
        srv = ServerProcess(
            f"sqlite:///{d}/bbo.db",
            log_path=f"{d}/server.log",
            args=["--workers", "1", "--dashboard-port", str(port)],
        )
        with srv:
            t0 = time.perf_counter()
            tune(srv.address, "sgd-digits", args.trials, args.workers, args.stop_early)
            print(f"{args.trials} trials in {time.perf_counter() - t0:.0f} s")
            screenshot(f"http://127.0.0.1:{port}/#/study/sgd-digits", Path(args.output))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
