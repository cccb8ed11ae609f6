"""Noise: whether the study's objective is observed with noise, the one judgement the strategy's
parts consult (instead of each checking the likelihood or the standard errors on its own).

Evidence, strongest first:

* **the user's word** (``Objective.noise``): ``noisy`` makes the objective noisy from the first
  ask, so the rules for noise apply before the data could show it (a cross-validated score, a
  simulation on random seeds); ``deterministic`` leaves only reported errors and differing
  replicates to say otherwise (the data win over a wrong declaration);
* **reported standard errors** (a Tell with ``sem`` > 0 on the objective): noisy;
* **replicates**: trials at the same point whose objective values differ: noisy, and their
  pooled spread measures the noise; where they agree, the fitted noise below does not count
  (:mod:`bbo.strategy.replication` repeats a point to ask);
* **the GP's fitted noise** of the objective (standardized, warped units) above
  :data:`NOISY_FIT`: noisy, where the data support it (:attr:`NoiseEstimate.fit_evidence`, when
  a decision weighs it: at least :data:`NOISE_EVIDENCE` nats of marginal likelihood over a
  noise-free refit). Below it the fit explains the data without noise.

A deterministic objective the GP cannot fit well (a rugged or quantized function) also gets a
fitted noise above the floor; the rules that must not fire there (the local model steps) ask
for :attr:`NoiseEstimate.clean`, which needs the fit at :data:`DETERMINISTIC_NOISE` or below.
Built from the training data once per ask (:meth:`NoiseEstimate.of`), completed with the fitted
model (:meth:`NoiseEstimate.with_model`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from bbo.acquisition import Layout
from bbo.spec import NOISE_AUTO, NOISE_DETERMINISTIC, NOISE_NOISY

DETERMINISTIC_NOISE = 1e-4  # fitted noise variance (standardized) under which the fit is clean
NOISY_FIT = 1e-3  # fitted noise variance (standardized) above which the objective counts noisy
# log marginal likelihood (nats) the fitted noise must gain over a noise-free refit to count. In
# 30-ask runs (2 seeds, the fitted noise above NOISY_FIT) deterministic smooth functions (Branin,
# six-hump camel, Hartmann6, Levy-4, Rosenbrock-4, Styblinski-Tang-3) gained at most 2.1; with
# noise of sd 5-20 % of their spread, a median 0.5-13 (Hartmann6 and a 12-point design: 0.5).
# Rugged Ackley-5 fits as noisy, deterministic or not (up to 8.6): the data cannot tell there.
NOISE_EVIDENCE = 3.0
REPLICATE_RTOL = 1e-9  # replicates closer than this (relative) agree
POINT_DECIMALS = 12  # encoded points equal to this many decimals are one point (a replicate)


@dataclass(frozen=True)
class NoiseEstimate:
    reported: bool = False  # the objective's observations carry standard errors > 0
    replicate_sd: float | None = None  # pooled sd of repeated points' objective (raw units)
    fitted: float | None = None  # the GP's noise variance of the objective (standardized)
    # nats of marginal likelihood the fitted noise gains over a noise-free refit (None: not judged)
    fit_evidence: float | None = None
    declared: str = NOISE_AUTO  # the first objective's Objective.noise

    @classmethod
    def of(
        cls,
        X: np.ndarray,
        Y: np.ndarray,
        Yvar: np.ndarray | None,
        layout: Layout,
        declared: str = NOISE_AUTO,
    ):
        """The evidence in the data: reported standard errors and replicates (first objective),
        beside the user's declaration."""
        j = layout.obj_idx[0]
        reported = bool(Yvar is not None and len(Yvar) and np.any(Yvar[:, j] > 0))
        return cls(reported, replicate_sd(X, Y[:, j]), declared=declared)

    def with_model(self, model, layout: Layout) -> NoiseEstimate:
        """Completed with the fitted noise of the objective's output (none for fixed noise)."""
        noise = getattr(getattr(model, "likelihood", None), "noise", None)
        if noise is None or self.reported:
            return self
        j = layout.obj_idx[0]
        v = noise.detach().reshape(-1)
        return replace(self, fitted=float(v[j if v.numel() > 1 else 0]))

    def with_evidence(self, nats: float | None) -> NoiseEstimate:
        """With the data's evidence for the fitted noise (see :attr:`fit_evidence`)."""
        return replace(self, fit_evidence=nats)

    @property
    def replicates_differ(self) -> bool:
        return self.replicate_sd is not None and self.replicate_sd > 0

    @property
    def noisy(self) -> bool:
        """Observed with noise, by any evidence."""
        return self.known or self.fit_says_noisy

    @property
    def known(self) -> bool:
        """Noisy before any model is fit: by the user's word, reported standard errors or
        differing replicates (a fitted noise level alone cannot tell noise from a rugged
        deterministic function)."""
        return self.reported or self.replicates_differ or self.declared_noisy

    @property
    def declared_noisy(self) -> bool:
        return self.declared == NOISE_NOISY

    @property
    def fit_says_noisy(self) -> bool:
        """The fitted noise is above :data:`NOISY_FIT` and, where judged, supported by the data
        (never for an objective declared deterministic or whose repeated points agree)."""
        return (
            self.declared != NOISE_DETERMINISTIC
            and self.replicate_sd != 0.0
            and self.fitted is not None
            and self.fitted > NOISY_FIT
            and (self.fit_evidence is None or self.fit_evidence >= NOISE_EVIDENCE)
        )

    @property
    def clean(self) -> bool:
        """No sign of noise: nothing reported, replicates agree, the fit needs none."""
        return not self.known and self.fitted is not None and self.fitted <= DETERMINISTIC_NOISE

    def describe(self) -> str:
        if self.declared_noisy:
            return "declared noisy"
        if self.reported:
            return "the objective's reported standard errors"
        if self.replicates_differ:
            return f"repeated points differ (sd {self.replicate_sd:.3g})"
        if self.fitted is not None:
            out = f"the surrogate's fitted noise ({self.fitted:.2g} of the objective's variance"
            if self.fit_evidence is not None:
                out += f", {self.fit_evidence:.3g} nats over a noise-free fit"
            return out + ")"
        return "no evidence"


def same_point(X: np.ndarray) -> np.ndarray:
    """Encoded points rounded to :data:`POINT_DECIMALS`: rows equal here are one point evaluated
    again (replicates, their spread, a repeat in flight)."""
    return np.round(X, POINT_DECIMALS)


def replicate_sd(X: np.ndarray, y: np.ndarray) -> float | None:
    """Pooled standard deviation of ``y`` within groups of identical rows of ``X``; None where no
    point repeats. Differences below :data:`REPLICATE_RTOL` of the values' scale count as none."""
    if len(X) < 2:
        return None
    _, inv, counts = np.unique(same_point(X), axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    rep = counts[inv] > 1
    if not rep.any():
        return None
    groups = inv[rep]
    vals = y[rep]
    means = np.zeros(len(counts))
    np.add.at(means, groups, vals)
    means /= np.maximum(counts, 1)
    dev = vals - means[groups]
    dof = int(rep.sum()) - len(np.unique(groups))
    sd = float(np.linalg.norm(dev) / np.sqrt(max(dof, 1)))  # norm: no overflow near 1e308
    scale = max(float(np.max(np.abs(y))), 1e-300)
    return sd if sd > REPLICATE_RTOL * scale else 0.0
