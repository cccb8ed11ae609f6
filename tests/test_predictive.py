"""bbo.predictive: the cached marginals reproduce the GP's posterior for every model kind the
surrogate builds, and refuse a model they do not reproduce."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from botorch.acquisition.analytic import LogExpectedImprovement

from bbo.device import select_device
from bbo.predictive import CachedPredictive, cached_predictive
from bbo.space import CategoricalParam, FloatParam, IntParam, SearchSpace
from bbo.spec import AlgorithmOptions
from bbo.surrogate import Surrogate

torch.set_num_threads(1)
CONT = SearchSpace(tuple(FloatParam(f"x{i}", 0.0, 1.0) for i in range(3)))
MIXED = SearchSpace(
    (FloatParam("a", 0.0, 1.0), IntParam("k", 0, 6), CategoricalParam("c", ("p", "q", "r")))
)


def fitted(space, m=1, noisy=False, n=25):
    rng = np.random.default_rng(0)
    X = np.array(
        [space.encode(space.decode(rng.random(space.dim) * space.bounds()[1])) for _ in range(n)]
    )
    Y = np.stack([np.sin(3 * X[:, 0]) + 0.5 * X[:, 1] + j for j in range(m)], axis=1)
    Yvar = np.full_like(Y, 1e-3) if noisy else None
    model, _, info = Surrogate(space, m, AlgorithmOptions(), select_device("cpu")).model(X, Y, Yvar)
    return model, info, rng


@pytest.mark.parametrize(
    "space,m,noisy",
    [(CONT, 1, False), (CONT, 2, False), (CONT, 2, True), (MIXED, 1, False), (MIXED, 2, True)],
)
def test_marginals_match_the_gp_posterior(space, m, noisy):
    model, info, rng = fitted(space, m, noisy)
    cp = info.predictive
    assert isinstance(cp, CachedPredictive) and cp.num_outputs == m
    X = torch.tensor(
        np.array(
            [
                space.encode(space.decode(rng.random(space.dim) * space.bounds()[1]))
                for _ in range(16)
            ]
        )
    ).unsqueeze(-2)
    with torch.no_grad():
        want, got = model.posterior(X), cp.posterior(X)
    assert got.mean.shape == want.mean.shape == (16, 1, m)
    assert torch.allclose(got.mean, want.mean, rtol=1e-8, atol=1e-10)
    assert torch.allclose(got.variance, want.variance.clamp_min(0), rtol=1e-6, atol=1e-10)


def test_an_analytic_acquisition_gives_the_same_values_and_gradients_on_either():
    model, info, rng = fitted(CONT)
    X = torch.tensor(rng.random((8, 1, 3)), requires_grad=True)
    vals = []
    for mdl in (model, info.predictive):
        v = LogExpectedImprovement(mdl, best_f=1.2)(X)
        (g,) = torch.autograd.grad(v.sum(), X)
        vals.append((v.detach(), g))
    assert torch.allclose(vals[0][0], vals[1][0], rtol=1e-8)
    assert torch.allclose(vals[0][1], vals[1][1], rtol=1e-6, atol=1e-10)


def test_a_model_it_does_not_reproduce_is_refused():
    broken = fitted(CONT)[0]
    broken.train_targets.data[:] = float("nan")  # predictions the check cannot reproduce
    assert cached_predictive(broken) is None
    with pytest.raises(ValueError):
        CachedPredictive(broken)
