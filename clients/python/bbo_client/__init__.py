"""Python client of the bbo service.

from bbo_client import Client, Float, Int, Categorical, Objective, Constraint

with Client("127.0.0.1:50051") as client:
    study = client.create_study(
        "tune-gbm",
        parameters=[Float("lr", 1e-3, 0.3, log=True), Int("depth", 1, 8), Categorical("loss", ["log_loss", "exponential"])],
        objectives=[Objective("accuracy", "maximize")],
        constraints=[Constraint("fit_seconds", "<=", 2.0)],
    )
    best = study.optimize(evaluate, n_trials=30, n_workers=2)

Existing Optuna / Ray Tune code: ``bbo_client.optuna.BboSampler``, ``bbo_client.ray.BboSearch``
(extras ``optuna`` / ``ray``). The generated gRPC stubs of the API are ``bbo_client.v1``.
"""

from bbo_client.client import DEFAULT_ADDRESS, Client, StudyHandle, TrialContext
from bbo_client.errors import (
    AlreadyExists,
    BboError,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TrialPruned,
    Unauthenticated,
    Unavailable,
)
from bbo_client.model import (
    Best,
    Categorical,
    Constraint,
    Estimate,
    Fidelity,
    Fixed,
    Float,
    Int,
    LinearConstraint,
    Llm,
    LlmCall,
    Maximize,
    Minimize,
    Objective,
    Ordinal,
    Prior,
    Pruning,
    StopAdvice,
    StudyInfo,
    TellResult,
    Transfer,
    TransferInfo,
    TransferSource,
    Trial,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "Client",
    "StudyHandle",
    "AlreadyExists",
    "BboError",
    "Conflict",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "TrialPruned",
    "Unauthenticated",
    "Unavailable",
    "Best",
    "Categorical",
    "Constraint",
    "Estimate",
    "Fidelity",
    "Fixed",
    "Float",
    "Int",
    "LinearConstraint",
    "Llm",
    "LlmCall",
    "Maximize",
    "Minimize",
    "Objective",
    "Ordinal",
    "Prior",
    "Pruning",
    "StopAdvice",
    "StudyInfo",
    "TellResult",
    "Transfer",
    "TransferInfo",
    "TransferSource",
    "Trial",
    "TrialContext",
]

# the adapters, imported on first use: ``bbo_client.optuna.BboSampler`` after ``import bbo_client``
# alone, without every client importing Optuna or Ray (extras)
_ADAPTERS = ("optuna", "ray")


def __getattr__(name: str):
    if name in _ADAPTERS:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
