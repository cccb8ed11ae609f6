"""Hyperparameter tuning of scikit-learn models on scikit-learn's bundled data sets (Bayesmark-style).

Variant = (model, data set), chosen by ``spec(model=..., dataset=...)`` and carried in the trial's
parameters as the fixed parameters ``model`` and ``dataset``.

Objective: ``cv_error`` (minimize) = 1 - mean cross-validated accuracy for classification, or
1 - mean cross-validated R^2 (the MSE divided by the target variance) for regression (``diabetes``).
Error rates are in [0, 1]; an R^2 error can exceed 1 for a model worse than predicting the mean.

Protocol (documented so results can be compared): stratified (classification) or plain (regression)
K-fold CV, K = ``cv_folds`` (default 3), shuffled with the evaluation seed; the model's own
``random_state`` is the seed too, so ``evaluate(params, seed)`` is deterministic for a seed.
Data sets larger than ``max_samples`` rows (default 1000; only ``digits``, 1797 rows) are
subsampled once, with a fixed generator independent of the seed, so every trial of every seed sees
the same rows. ``part="k/n"`` keeps the k-th of n disjoint parts of the rows (drawn with the same
fixed generator) before that: new data of the same kind, the case a stored study of another part
is transferred to (``transfer``). Inputs are standardised inside each fold (a ``StandardScaler``
in the pipeline) for the scale-sensitive models (SVM, MLP, linear, k-NN), and regression targets
are standardised for every model. Everything runs single-threaded (n_jobs=1).

Tracked metrics: ``train_seconds`` (mean wall-clock fit time per fold: NOT deterministic),
``cv_error_std`` (standard deviation over the folds) and ``cv_error_sem`` (its standard error).
``spec(max_train_seconds=X)`` adds the outcome constraint ``train_seconds <= X`` (effectiveness
traded against training time).

Cost of one evaluation on one core (measured): k-NN, linear, SVM < 0.2 s; random forest < 1.2 s
on the small data sets but up to ~4 s on digits at its largest settings (200 trees of depth 20 over
all 64 features); MLP < 2 s on the small data sets, up to ~4 s on digits at its largest (128 units,
batch 16, 100 epochs); gradient boosting < 1 s on binary data sets but up to ~5 s on digits at its
largest settings (10 classes = 10 trees per boosting round).

Epoch-based model (multi-fidelity): ``sgd_mlp`` is a one-hidden-layer perceptron trained by plain
SGD with Nesterov momentum, one ``partial_fit`` pass over the training rows per epoch; its study
has the fidelity ``epochs`` (1 to ``max_epochs``, default 81) and the objective ``val_error``, the
error rate on a stratified 30 % hold-out split (shuffled with the evaluation seed; the scaler is fit
on the training rows). :meth:`HpoKit.trainer` gives an :class:`EpochTrainer` that trains on and
reports its learning curve, and continues from where it stopped (a promoted trial resumes instead
of starting again). A run whose weights diverge (too large a learning rate) is broken for good: its
error is the majority-class error from then on. About 10-40 ms per epoch on digits.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

import numpy as np

from bbo.errors import SpecError
from bbo.kits.base import Kit
from bbo.space import CategoricalParam, FloatParam, IntParam, OrdinalParam, SearchSpace
from bbo.spec import MINIMIZE, Objective, OutcomeConstraint, StudySpec

# ---- data sets -----------------------------------------------------------------------------------

DATASETS: dict[str, dict[str, Any]] = {
    "iris": dict(
        task="classification",
        about="iris flowers: 150 samples, 4 numeric features (sepal/petal length and width), 3 balanced classes; nearly linearly separable, tiny",
    ),
    "wine": dict(
        task="classification",
        about="wine cultivars: 178 samples, 13 numeric chemical features on very different scales, 3 classes; easy once standardised",
    ),
    "breast_cancer": dict(
        task="classification",
        about="Wisconsin breast cancer: 569 samples, 30 numeric features (cell nucleus measurements, strongly correlated), 2 classes (212 malignant / 357 benign)",
    ),
    "digits": dict(
        task="classification",
        about="8x8 handwritten digits: 1797 samples (subsampled to 1000), 64 pixel-intensity features in 0..16, 10 balanced classes; smooth kernels and neural nets do well",
    ),
    "diabetes": dict(
        task="regression",
        about="diabetes progression: 442 samples, 10 standardised features (age, sex, BMI, blood pressure, 6 serum measurements), a continuous target; noisy, the best models explain only about half of the variance",
    ),
}


MIN_PART_ROWS = 30  # the fewest rows a part of a data set may keep


def parse_part(part: Any) -> tuple[int, int]:
    """``"k/n"`` as (k, n), 1 <= k <= n; a SpecError that says the form otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(part))
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise SpecError(
            "part",
            f"kit 'hpo': option part must be 'k/n' with 1 <= k <= n (e.g. '2/3'), got {part!r}",
        )
    return int(m[1]), int(m[2])


@cache
def load_dataset(
    name: str, max_samples: int = 1000, part: str = "1/1"
) -> tuple[np.ndarray, np.ndarray]:
    """The data set's (X, y): its ``part`` (the k-th of n disjoint parts of the rows), then
    subsampled to ``max_samples`` rows, both with a fixed generator."""
    from sklearn import datasets

    if name not in DATASETS:
        raise SpecError("dataset", f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    X = np.asarray(X, dtype=float)
    k, n = parse_part(part)
    if n > 1:
        if len(y) // n < MIN_PART_ROWS:
            raise SpecError(
                "part",
                f"kit 'hpo': option part must be 'k/n' with n <= {len(y) // MIN_PART_ROWS} on "
                f"{name!r} ({len(y)} rows; a part keeps {MIN_PART_ROWS} or more), got {part!r}",
            )
        perm = np.random.default_rng(12345).permutation(len(y))
        idx = np.sort(np.array_split(perm, n)[k - 1])
        X, y = X[idx], y[idx]
    if len(y) > max_samples:
        idx = np.sort(np.random.default_rng(12345).choice(len(y), max_samples, replace=False))
        X, y = X[idx], y[idx]
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


MAX_CV_FOLDS = 100  # cv_folds: more is leave-one-out on these data sets, at 100 fits a trial
MAX_EPOCHS = 10_000  # max_epochs (sgd_mlp): 10**9 epochs ran for years a trial


def _smallest_class(y: np.ndarray, classify: bool) -> int:
    """Rows of the smallest class (every row, for a regression); 0 where the rows hold a single
    class, as a classifier cannot be fit on one (breast_cancer at max_samples=5)."""
    if not classify:
        return len(y)
    counts = np.unique(y, return_counts=True)[1]
    return int(counts.min()) if len(counts) > 1 else 0


def _check_rows(
    o: Mapping[str, Any],
    y: np.ndarray,
    classify: bool,
    need: int,
    why: str,
    otherwise: str = "cv_folds",
) -> None:
    """Refuse options that leave some class of ``y`` (the kept rows) fewer than ``need`` rows:
    every evaluation would fail (scikit-learn's "n_splits greater than the number of members in
    each class"). Named: ``max_samples`` where the data set's rows would do without its cut,
    else ``otherwise`` (``part`` for the hold-out of an epoch-based model, which has no folds)."""
    have = _smallest_class(y, classify)
    if have >= need:
        return
    _, whole = load_dataset(o["dataset"], 10**9, str(o["part"]))
    option = "max_samples" if _smallest_class(whole, classify) >= need else otherwise
    what, held = ("rows of every class", "hold") if classify else ("rows", "are")
    raise SpecError(
        option,
        f"kit 'hpo': option {option} must leave {need} {what} ({why}), but the rows "
        f"kept (after max_samples and part) {held} {have}"
        + (" of the smallest" if classify else ""),
    )


def _holdout_short(y: np.ndarray) -> bool:
    """Whether the stratified 30 % hold-out of ``y`` leaves a side with fewer rows than classes
    (scikit-learn's "test_size = 8 should be greater or equal to the number of classes = 9")."""
    test = math.ceil(EpochTrainer.VALIDATION * len(y))  # train_test_split's rounding
    return min(test, len(y) - test) < len(np.unique(y))


def _check_holdout(o: Mapping[str, Any], y: np.ndarray) -> None:
    """Refuse options whose kept rows are too few for the hold-out of every class; named as in
    :func:`_check_rows`."""
    if not _holdout_short(y):
        return
    _, whole = load_dataset(o["dataset"], 10**9, str(o["part"]))
    option = "part" if _holdout_short(whole) else "max_samples"
    raise SpecError(
        option,
        f"kit 'hpo': option {option} must keep enough rows for a 30% hold-out holding each of the "
        f"{len(np.unique(y))} classes on both sides, but the rows kept (after max_samples and part) "
        f"are {len(y)}",
    )


# ---- models: search spaces and builders ----------------------------------------------------------

MODELS: dict[str, dict[str, Any]] = {
    "rf": dict(
        about="random forest (bagged CART trees, sklearn RandomForestClassifier/Regressor)",
        params=(
            IntParam("n_estimators", 10, 200, log=True),
            IntParam("max_depth", 1, 20),
            FloatParam("max_features", 0.05, 1.0),
            IntParam("min_samples_split", 2, 20),
            IntParam("min_samples_leaf", 1, 20),
        ),
        hints="more trees rarely hurt accuracy but cost time linearly; depth >= 8 and max_features around sqrt(d)/d to 0.5 are usual; large min_samples_leaf underfits small data sets",
    ),
    "hgb": dict(
        about="histogram gradient boosting (sklearn HistGradientBoostingClassifier/Regressor, 64 bins, no early stopping)",
        params=(
            FloatParam("learning_rate", 0.01, 1.0, log=True),
            IntParam("max_iter", 10, 100, log=True),
            IntParam("max_leaf_nodes", 4, 32, log=True),
            IntParam("min_samples_leaf", 2, 64, log=True),
            FloatParam("l2_regularization", 1e-6, 10.0, log=True),
        ),
        hints="learning_rate and max_iter trade off (lr around 0.1 with 50-100 rounds is a good default); on a few hundred samples keep min_samples_leaf small (< 20); multiclass costs one tree per class per round",
    ),
    "svm": dict(
        about="support vector machine with an RBF kernel on standardised inputs (sklearn SVC/SVR)",
        params=(
            FloatParam("C", 1e-3, 1e3, log=True),
            FloatParam("gamma", 1e-4, 10.0, log=True),
            FloatParam("tol", 1e-5, 1e-1, log=True),
        ),
        hints="after standardisation, gamma near 1/n_features and C between 1 and 100 usually work; very large gamma overfits (memorises), very small C underfits; tol barely matters",
    ),
    "mlp": dict(
        about="one-hidden-layer perceptron with ReLU, Adam, on standardised inputs (sklearn MLPClassifier/Regressor)",
        params=(
            IntParam("hidden_units", 8, 128, log=True),
            FloatParam("alpha", 1e-6, 1.0, log=True),
            FloatParam("learning_rate_init", 1e-4, 1e-1, log=True),
            OrdinalParam("batch_size", (16, 32, 64, 128, 256), log=True),
            IntParam("max_iter", 10, 100, log=True),
        ),
        hints="learning_rate_init around 1e-3..1e-2 with 50-100 epochs; too few epochs underfit (ConvergenceWarning); alpha (L2) helps on small data; larger batches are faster but need more epochs",
    ),
    "linear": dict(
        about="regularised linear model on standardised inputs: logistic regression (lbfgs, L2) for classification, elastic net for regression",
        params=(
            FloatParam("C", 1e-4, 1e4, log=True),
            FloatParam("l1_ratio", 0.0, 1.0),
            FloatParam("tol", 1e-6, 1e-1, log=True),
        ),
        hints="C is the inverse regularisation strength (regression: alpha = 1/C); moderate C (0.1..10) is usually best; l1_ratio only matters for regression (elastic net)",
    ),
    "sgd_mlp": dict(
        about="one-hidden-layer perceptron with ReLU trained by SGD with Nesterov momentum, epoch by epoch (sklearn MLPClassifier.partial_fit), on standardised inputs",
        params=(
            IntParam("hidden_units", 8, 256, log=True),
            FloatParam("learning_rate_init", 1e-4, 1.0, log=True),
            FloatParam("momentum", 0.0, 0.99),
            FloatParam("alpha", 1e-7, 1e-1, log=True),
            OrdinalParam("batch_size", (16, 32, 64, 128, 256), log=True),
        ),
        hints="learning rates around 0.01..0.1 with momentum 0.9 train fastest; above ~0.5 SGD diverges; small batches take more steps per epoch; alpha above 1e-2 underfits",
        epochs=True,
        classification_only=True,
    ),
    "knn": dict(
        about="k-nearest neighbours on standardised inputs (sklearn KNeighborsClassifier/Regressor)",
        params=(
            IntParam("n_neighbors", 1, 50, log=True),
            CategoricalParam("weights", ("uniform", "distance")),
            FloatParam("p", 1.0, 3.0),
        ),
        hints="k between 3 and 15 and distance weighting are common winners; p is the Minkowski exponent (1 Manhattan, 2 Euclidean)",
    ),
}


def build_model(model: str, task: str, p: Mapping[str, Any], seed: int):
    """The scikit-learn estimator (a pipeline with a scaler where it matters) for these parameters.

    Regressors learn a standardised target (``TransformedTargetRegressor``), so SVR's epsilon, the
    MLP's initial scale and the elastic net's alpha mean the same on any data set.
    """
    est = _build_model(model, task, p, seed)
    if task == "regression":
        from sklearn.compose import TransformedTargetRegressor
        from sklearn.preprocessing import StandardScaler

        est = TransformedTargetRegressor(regressor=est, transformer=StandardScaler())
    return est


def _build_model(model: str, task: str, p: Mapping[str, Any], seed: int):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = task == "classification"
    if model == "rf":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cls = RandomForestClassifier if clf else RandomForestRegressor
        return cls(
            n_estimators=int(p["n_estimators"]),
            max_depth=int(p["max_depth"]),
            max_features=float(p["max_features"]),
            min_samples_split=int(p["min_samples_split"]),
            min_samples_leaf=int(p["min_samples_leaf"]),
            random_state=seed,
            n_jobs=1,
        )
    if model == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls = HistGradientBoostingClassifier if clf else HistGradientBoostingRegressor
        return cls(
            learning_rate=float(p["learning_rate"]),
            max_iter=int(p["max_iter"]),
            max_leaf_nodes=int(p["max_leaf_nodes"]),
            min_samples_leaf=int(p["min_samples_leaf"]),
            l2_regularization=float(p["l2_regularization"]),
            max_bins=64,
            early_stopping=False,
            random_state=seed,
        )
    if model == "svm":
        from sklearn.svm import SVC, SVR

        est = (
            SVC(C=float(p["C"]), gamma=float(p["gamma"]), tol=float(p["tol"]), random_state=seed)
            if clf
            else SVR(C=float(p["C"]), gamma=float(p["gamma"]), tol=float(p["tol"]))
        )
        return make_pipeline(StandardScaler(), est)
    if model == "mlp":
        from sklearn.neural_network import MLPClassifier, MLPRegressor

        cls = MLPClassifier if clf else MLPRegressor
        est = cls(
            hidden_layer_sizes=(int(p["hidden_units"]),),
            alpha=float(p["alpha"]),
            learning_rate_init=float(p["learning_rate_init"]),
            batch_size=int(p["batch_size"]),
            max_iter=int(p["max_iter"]),
            random_state=seed,
        )
        return make_pipeline(StandardScaler(), est)
    if model == "linear":
        if clf:
            from sklearn.linear_model import LogisticRegression

            est = LogisticRegression(C=float(p["C"]), tol=float(p["tol"]), max_iter=500)
        else:
            from sklearn.linear_model import ElasticNet

            est = ElasticNet(
                alpha=1.0 / float(p["C"]),
                l1_ratio=float(p["l1_ratio"]),
                tol=float(p["tol"]),
                max_iter=5000,
                random_state=seed,
            )
        return make_pipeline(StandardScaler(), est)
    if model == "knn":
        from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

        cls = KNeighborsClassifier if clf else KNeighborsRegressor
        return make_pipeline(
            StandardScaler(),
            cls(n_neighbors=int(p["n_neighbors"]), weights=str(p["weights"]), p=float(p["p"])),
        )
    raise SpecError("model", f"unknown model {model!r}; choose one of {sorted(MODELS)}")


class EpochTrainer:
    """Trains one ``sgd_mlp`` configuration epoch by epoch and measures its hold-out error (see the
    module docstring); :meth:`train_to` continues from the epochs already trained."""

    VALIDATION = 0.3

    def __init__(
        self,
        params: Mapping[str, Any],
        dataset: str,
        seed: int,
        max_samples: int,
        part: str = "1/1",
    ):
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
        from sklearn.preprocessing import StandardScaler

        if DATASETS[dataset]["task"] != "classification":
            raise SpecError("dataset", f"sgd_mlp classifies: {dataset!r} is a regression data set")
        X, y = load_dataset(dataset, max_samples, part)
        Xt, Xv, yt, yv = train_test_split(
            X, y, test_size=self.VALIDATION, stratify=y, random_state=int(seed)
        )
        scaler = StandardScaler().fit(Xt)
        self.Xt, self.Xv, self.yt, self.yv = scaler.transform(Xt), scaler.transform(Xv), yt, yv
        self.classes = np.unique(y)
        self.model = MLPClassifier(
            hidden_layer_sizes=(int(params["hidden_units"]),),
            solver="sgd",
            learning_rate="constant",
            learning_rate_init=float(params["learning_rate_init"]),
            momentum=float(params["momentum"]),
            nesterovs_momentum=True,
            alpha=float(params["alpha"]),
            batch_size=int(params["batch_size"]),
            random_state=int(seed),
        )
        counts = np.unique(yv, return_counts=True)[1]
        self.chance_error = float(1.0 - counts.max() / counts.sum())
        self.epochs = 0
        self.error = 1.0
        self.diverged = False
        self.seconds = 0.0

    def train_to(self, epochs: int) -> float:
        """Train until ``epochs`` epochs are done (none if already there); the hold-out error."""
        while self.epochs < epochs:
            self.step()
        return self.error

    def step(self) -> float:
        """One more epoch; the hold-out error after it."""
        import time

        self.epochs += 1
        if not self.diverged:
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.model.partial_fit(self.Xt, self.yt, classes=self.classes)
                    self.error = float(1.0 - self.model.score(self.Xv, self.yv))
                self.diverged = not all(np.all(np.isfinite(w)) for w in self.model.coefs_)
            except (ValueError, FloatingPointError, OverflowError):  # non-finite weights
                self.diverged = True
            self.seconds += time.perf_counter() - t0
        if self.diverged:
            self.error = self.chance_error
        return self.error

    def curve(self, epochs: int) -> Iterator[tuple[int, float]]:
        """Train to ``epochs``, yielding ``(epoch, hold-out error)`` after each new epoch."""
        while self.epochs < epochs:
            yield self.epochs + 1, self.step()


class HpoKit(Kit):
    name = "hpo"
    wall_clock_metrics = ("train_seconds",)
    defaults = {
        "model": "svm",
        "dataset": "breast_cancer",
        "cv_folds": 3,
        "max_samples": 1000,
        "part": "1/1",
        "max_train_seconds": None,
        "max_epochs": 81,
    }

    @property
    def description(self) -> str:  # type: ignore[override]
        return self.describe()

    def describe(self, **options: Any) -> str:
        o = self._options(options)
        m, d = MODELS[o["model"]], DATASETS[o["dataset"]]
        k, n = parse_part(o["part"])
        about = d["about"] + (
            f"; this study uses part {k} of {n} disjoint parts of its rows" if n > 1 else ""
        )
        kept = len(load_dataset(o["dataset"], int(o["max_samples"]), str(o["part"]))[1])
        if kept != len(load_dataset(o["dataset"], 1000, str(o["part"]))[1]):
            # the rows say more than the default cut the data set's facts above state
            about += f"; this study keeps {kept} rows (max_samples {o['max_samples']})"
        if m.get("epochs"):
            return (
                f"Hyperparameter tuning of a {m['about']} on the scikit-learn data set "
                f"'{o['dataset']}' ({about}). Objective: minimize val_error = 1 - accuracy on "
                f"a stratified 30% hold-out split. Fidelity: epochs, 1 to {o['max_epochs']}: the "
                f"learning curve is reported epoch by epoch. Expert hints: {m['hints']}."
            )
        metric = (
            "1 - accuracy" if d["task"] == "classification" else "1 - R^2 (MSE / target variance)"
        )
        text = (
            f"Hyperparameter tuning of a {m['about']} on the scikit-learn data set '{o['dataset']}' ({about}). "
            f"Objective: minimize cv_error = {metric}, the mean over {o['cv_folds']}-fold shuffled cross-validation. "
            f"Tracked: train_seconds, the mean fit time per fold on one CPU core. Expert hints: {m['hints']}."
        )
        if o["max_train_seconds"] is not None:
            text += f" Constraint: train_seconds <= {o['max_train_seconds']:g}."
        return text

    def spec(self, **options: Any) -> StudySpec:
        o = self._options(options)
        if o["model"] not in MODELS:
            raise SpecError(
                "model", f"unknown model {o['model']!r}; choose one of {sorted(MODELS)}"
            )
        if o["dataset"] not in DATASETS:
            raise SpecError(
                "dataset", f"unknown data set {o['dataset']!r}; choose one of {sorted(DATASETS)}"
            )
        epochs = bool(MODELS[o["model"]].get("epochs"))
        # an option the model ignores would leave a study other than the one asked for
        ignored = {"cv_folds", "max_train_seconds"} if epochs else {"max_epochs"}
        for name in sorted(ignored & {k for k, v in options.items() if v is not None}):
            how = "an epoch-based model, scored on a 30% hold-out" if epochs else "not epoch-based"
            raise SpecError(
                name, f"kit 'hpo': option {name} does not apply to model {o['model']!r} ({how})"
            )
        self._check_number(o, "max_samples", 1, integer=True)
        # refuses a bad part
        X, y = load_dataset(o["dataset"], int(o["max_samples"]), str(o["part"]))
        classify = DATASETS[o["dataset"]]["task"] == "classification"
        if epochs:
            _check_rows(o, y, classify, 2, "a stratified hold-out", otherwise="part")
            if classify:  # a regression data set is refused below, as sgd_mlp classifies
                _check_holdout(o, y)
            return self._epoch_spec(o, options)
        self._check_number(o, "cv_folds", 2, MAX_CV_FOLDS, integer=True)
        k = int(o["cv_folds"])
        if classify:
            _check_rows(o, y, classify, k, f"{k}-fold CV")
        else:  # R^2 of a one-row test fold is NaN: every trial would fail
            _check_rows(o, y, classify, 2 * k, f"{k}-fold CV, two rows a test fold for R^2")
        if o["max_train_seconds"] is not None:
            self._check_number(o, "max_train_seconds", 0, above=True)
        params = MODELS[o["model"]]["params"]
        if o["model"] == "knn":  # no more neighbours than the smallest training fold has rows
            fold = len(X) * (k - 1) // k  # n - ceil(n / k)
            params = tuple(
                IntParam(p.name, p.low, min(p.high, fold), log=p.log)
                if p.name == "n_neighbors"
                else p
                for p in params
            )
        if o["model"] == "linear" and DATASETS[o["dataset"]]["task"] == "classification":
            params = tuple(
                p for p in params if p.name != "l1_ratio"
            )  # lbfgs logistic regression: L2 only
        fixed = self._fixed(o, ("model", "dataset", "cv_folds", "max_samples") + self._part(o))
        cons: tuple[OutcomeConstraint, ...] = ()
        if o["max_train_seconds"] is not None:
            cons = (OutcomeConstraint("train_seconds", "<=", float(o["max_train_seconds"])),)
        tracked = ("cv_error_std", "cv_error_sem") + (() if cons else ("train_seconds",))
        return StudySpec(
            space=SearchSpace(tuple(params) + fixed),
            objectives=(Objective("cv_error", MINIMIZE),),
            outcome_constraints=cons,
            tracked_metrics=tracked,
            description=self.describe(**options),
        )

    def _epoch_spec(self, o: Mapping[str, Any], options: Mapping[str, Any]) -> StudySpec:
        from bbo.spec import Fidelity

        if DATASETS[o["dataset"]]["task"] != "classification":
            raise SpecError("dataset", f"{o['model']} classifies: choose a classification data set")
        # a rung below the full budget; at 10-40 ms an epoch, MAX_EPOCHS is minutes a trial
        self._check_number(o, "max_epochs", 3, MAX_EPOCHS, integer=True)
        epochs = int(o["max_epochs"])
        return StudySpec(
            space=SearchSpace(
                tuple(MODELS[o["model"]]["params"])
                + self._fixed(o, ("model", "dataset", "max_samples", "max_epochs") + self._part(o))
            ),
            objectives=(Objective("val_error", MINIMIZE),),
            tracked_metrics=("train_seconds", "epochs"),
            description=self.describe(**options),
            fidelity=Fidelity("epochs", 1, epochs, integer=True),
        )

    @staticmethod
    def _part(o: Mapping[str, Any]) -> tuple[str, ...]:
        """``part`` is a fixed parameter only where it is not the whole data set, so that specs
        written before the option existed are unchanged."""
        return () if parse_part(o["part"]) == (1, 1) else ("part",)

    def trainer(self, params: Mapping[str, Any], seed: int = 0) -> EpochTrainer:
        """An :class:`EpochTrainer` for an epoch-based model's parameters (``sgd_mlp``)."""
        p = self._with_defaults(params)
        if not MODELS.get(str(p["model"]), {}).get("epochs"):
            raise SpecError("model", f"{p['model']!r} is not trained epoch by epoch: use sgd_mlp")
        return EpochTrainer(p, str(p["dataset"]), int(seed), int(p["max_samples"]), str(p["part"]))

    def evaluate(
        self, params: Mapping[str, Any], seed: int = 0, budget: float | None = None
    ) -> dict[str, float]:
        """The metrics of ``params``; an epoch-based model is trained for ``budget`` epochs
        (default ``max_epochs``)."""
        from sklearn.model_selection import KFold, StratifiedKFold, cross_validate

        p = self._with_defaults(params)
        model, dataset = str(p["model"]), str(p["dataset"])
        if MODELS.get(model, {}).get("epochs"):
            tr = self.trainer(p, seed)
            val_err = tr.train_to(int(budget if budget is not None else p["max_epochs"]))
            return {"val_error": val_err, "train_seconds": tr.seconds, "epochs": float(tr.epochs)}
        if dataset not in DATASETS:
            raise SpecError(
                "dataset", f"unknown data set {dataset!r}; choose one of {sorted(DATASETS)}"
            )
        task = DATASETS[dataset]["task"]
        X, y = load_dataset(dataset, int(p["max_samples"]), str(p["part"]))
        est = build_model(model, task, p, int(seed))
        k = int(p["cv_folds"])
        cv = (
            StratifiedKFold(k, shuffle=True, random_state=int(seed))
            if task == "classification"
            else KFold(k, shuffle=True, random_state=int(seed))
        )
        scoring = "accuracy" if task == "classification" else "r2"
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # ConvergenceWarning of short MLP / linear runs is the point of tuning
            res = cross_validate(est, X, y, cv=cv, scoring=scoring, n_jobs=1, error_score="raise")
        err = 1.0 - np.asarray(res["test_score"], dtype=float)
        return {
            "cv_error": float(err.mean()),
            "cv_error_std": float(err.std()),
            "cv_error_sem": float(err.std(ddof=1) / np.sqrt(len(err))) if len(err) > 1 else 0.0,
            "train_seconds": float(np.mean(res["fit_time"])),
        }

    def known_best(self, **options: Any) -> float | None:
        return None  # unknown: benchmarks use the best value any method found


KIT = HpoKit()
