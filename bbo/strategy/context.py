"""What the strategy's parts share: the study's fixed setup (:class:`Context`) and one ask's
inputs (:class:`Ask`), whose training data are built at most once and then passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from bbo.acquisition import Layout
from bbo.device import Placement
from bbo.spec import ParameterPrior, StudySpec
from bbo.strategy.model_data import ModelData, Points, TrainingData
from bbo.trial import Trial
from bbo.warping import OutcomeWarp


@dataclass(frozen=True)
class Context:
    """A study's spec and everything derived from it once: outcome layout (raw units; the
    model's, which depends on the data, is :attr:`TrainingData.layout`), the warp, device
    placement, the seed and the encoded-point cache."""

    spec: StudySpec
    seed: int
    n_initial: int
    layout: Layout
    warp: OutcomeWarp
    placement: Placement
    points: Points
    data: ModelData

    @classmethod
    def of(cls, spec: StudySpec, seed: int, placement: Placement) -> Context:
        layout = Layout.of(spec)
        warp = OutcomeWarp.of(layout)
        points = Points(spec.space)
        return cls(
            spec=spec,
            seed=seed,
            n_initial=spec.algorithm.initial_size(spec.space.dim),
            layout=layout,
            warp=warp,
            placement=placement,
            points=points,
            data=ModelData(spec.modeled_metrics, layout, warp, points, spec.objectives[0].noise),
        )

    def call_seed(self, trials: list[Trial]) -> int:
        """The seed of one call: the study's seed moved on by the number of trials."""
        return (self.seed + 1_000_003 * len(trials)) % (2**31 - 1)


@dataclass
class Ask:
    """One call's inputs: the trials, the priors in force and the call's seed."""

    ctx: Context
    trials: list[Trial]
    priors: tuple[ParameterPrior, ...]
    seed: int = field(init=False)

    def __post_init__(self):
        self.seed = self.ctx.call_seed(self.trials)

    @cached_property
    def data(self) -> TrainingData:
        """The training data of these trials, built on first use."""
        return self.ctx.data.build(self.trials)
