"""Generation strategy: which point to evaluate next, given a study's trials.

Space-filling initial design first (the centre of the space, or the priors' best guess where there
are priors, then scrambled Sobol; LLM warm-start candidates, when given, take the first slot and
the last ones, those only while the candidates measured so far are not worse than the design's
median), then GP-based Bayesian optimization, with an exploitation step (the GP mean's optimum, or
on deterministic objectives a local quadratic model's once the GP stops resolving the optimum)
every few asks where that pays off. One instance lives per study: it caches the fitted
surrogate's hyperparameters between asks and is pure with respect to storage (it sees trials,
returns suggestions).

Parts, one job each:

* :mod:`~bbo.strategy.base`: results (:class:`Suggestion`, :class:`AskInfo`,
  :class:`StudyStatus`) and the seams the service uses (:class:`Strategy` and the optional
  :class:`SharesModelState`, :class:`TimeBounded`, :class:`Recommends`, :class:`UsesSources`,
  :class:`UsesCurves`, :class:`DescribesAsks`);
* :mod:`~bbo.strategy.context`: the study's fixed setup and one ask's inputs;
* :mod:`~bbo.strategy.model_data`: encodings and the training data (COMPLETED and PRUNED
  trials), built once per ask;
* :mod:`~bbo.strategy.initial_design`: design points, priors' guess, warm-start gate;
* :mod:`~bbo.strategy.acquisition_step`: acquisition function (piBO), optimizer, repair, proposals;
* :mod:`~bbo.strategy.exploitation`: predicted-best and local-model steps and their schedule;
* :mod:`~bbo.strategy.replication`: the best point again, where a repeat tells noise apart;
* :mod:`~bbo.strategy.noise`: whether the objective is noisy, declared or judged from the data;
* :mod:`~bbo.strategy.recommendation`: the best trial by the model, under noise;
* :mod:`~bbo.strategy.fallback`: the one space-filling path, and model-guided fallback points;
* :mod:`~bbo.strategy.feasibility`: the LIKELY_INFEASIBLE judgement;
* :mod:`~bbo.strategy.generation`: :class:`GenerationStrategy`, which puts them together;
* :mod:`~bbo.strategy.multi_fidelity`: :class:`MultiFidelityStrategy`, a study with a fidelity.

Guarantees of :meth:`GenerationStrategy.suggest`: it returns exactly ``n`` suggestions, every one of
them valid for the search space and meeting every linear parameter constraint, distinct from the
pending trials and from each other (unless the space has fewer free points than that), and it never
raises: a failing model or optimizer yields ``origin="fallback"`` points with ``reason`` set.
With ``algorithm.seed`` set, the same trials give the same suggestions (on the CPU), unless an
ask's time bound (:meth:`GenerationStrategy.bound_time`) cut its batch short.
"""

from bbo.strategy.base import (
    AskInfo,
    SharesModelState,
    Strategy,
    StudyStatus,
    Suggestion,
    TimeBounded,
    UsesSources,
)
from bbo.trial import StudyState


def __getattr__(name: str):
    """The model-based parts load torch and BoTorch: imported on first use, so the service's
    modules that only name the protocols above stay light."""
    if name == "GenerationStrategy":
        from bbo.strategy.generation import GenerationStrategy

        return GenerationStrategy
    if name == "space_filling":
        from bbo.strategy.fallback import space_filling

        return space_filling
    raise AttributeError(f"module 'bbo.strategy' has no attribute {name!r}")


ACTIVE, LIKELY_INFEASIBLE = StudyState.ACTIVE, StudyState.LIKELY_INFEASIBLE

__all__ = [
    "ACTIVE",
    "LIKELY_INFEASIBLE",
    "AskInfo",
    "GenerationStrategy",
    "SharesModelState",
    "Strategy",
    "StudyState",
    "StudyStatus",
    "Suggestion",
    "TimeBounded",
    "UsesSources",
    "space_filling",
]
