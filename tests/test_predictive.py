"""bbo.predictive: the cached marginals reproduce the GP's posterior for every model kind the
surrogate builds, and refuse a model they do not reproduce."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from botorch.acquisition.analytic import LogExpectedImprovement
from botorch.acquisition.logei import qLogExpectedImprovement
from botorch.acquisition.objective import LinearMCObjective
from botorch.sampling import SobolQMCNormalSampler

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


def _points(space, rng, n):
    """``n`` random points of ``space``, encoded (valid choices and integers)."""
    return np.array(
        [space.encode(space.decode(rng.random(space.dim) * space.bounds()[1])) for _ in range(n)]
    )


def fitted(space, m=1, noisy=False, n=25):
    rng = np.random.default_rng(0)
    X = _points(space, rng, n)
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
    assert torch.equal(cp.mean(X), got.mean)  # the mean alone (a transfer prior's sources)


@pytest.mark.parametrize("m,noisy", [(1, False), (2, True)])
def test_training_point_means_in_closed_form(m, noisy):
    model, info, _ = fitted(CONT, m, noisy)
    X = model.train_inputs[0][0] if m > 1 else model.train_inputs[0]
    with torch.no_grad():
        X = model.input_transform.untransform(X) if hasattr(model, "input_transform") else X
        want = model.posterior(X).mean
    assert torch.allclose(info.predictive.train_mean(), want, rtol=1e-8, atol=1e-9)


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


@pytest.mark.parametrize("m", [1, 2])
def test_a_one_point_monte_carlo_acquisition_gives_the_same_values_on_either(m):
    """q = 1: one point's outputs are independent normals, so the marginals' samples are the GP's
    (same base samples, same values) and Monte Carlo acquisitions run on the cheap marginals."""
    model, info, rng = fitted(CONT, m)
    X = torch.tensor(rng.random((6, 1, 3)))
    vals = []
    for mdl in (model, info.predictive):
        acqf = qLogExpectedImprovement(
            mdl,
            best_f=1.0,
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([64]), seed=3),
            objective=LinearMCObjective(torch.eye(m, dtype=torch.float64)[0]),
            constraints=[lambda Z: Z[..., -1] - 1.5] if m > 1 else None,
        )
        with torch.no_grad():
            vals.append(acqf(X))
    assert torch.allclose(vals[0], vals[1], rtol=1e-7, atol=1e-9)


CATS = SearchSpace(tuple(CategoricalParam(f"c{i}", ("p", "q", "r", "s")) for i in range(3)))


@pytest.mark.parametrize(
    "space,m",
    [(CONT, 1), (CONT, 2), (MIXED, 1), (MIXED, 2), (CATS, 1)],
    ids=["cont", "cont-2", "mixed", "mixed-2", "categorical"],
)
def test_the_frozen_kernel_and_transform_are_gpytorchs_to_the_last_bit(space, m):
    """The cached kernel (hyperparameters read once) and the affine input transform give
    GPyTorch's / BoTorch's values and gradients exactly, on the continuous, mixed (sum +
    product, Normalize on a subset of columns) and categorical kernels."""
    from bbo.predictive import dense_kernel

    _, info, rng = fitted(space, m)
    cp = info.predictive
    assert cp._frozen is not None  # each of bbo's kernels takes the fast path
    x = torch.tensor(_points(space, rng, 9), requires_grad=True)
    t_fast, t_want = cp._transform(x), cp._gp.transform_inputs(x)
    assert torch.equal(t_fast, t_want)
    xb = t_fast.unsqueeze(0).expand(m, *t_fast.shape) if m > 1 else t_fast
    fast = cp._kernel(xb, cp._Xt)
    want = dense_kernel(cp._gp.covar_module, xb, cp._Xt)
    assert torch.equal(fast, want)
    assert fast.requires_grad == want.requires_grad == (space is not CATS)
    if fast.requires_grad:  # a categorical kernel has no gradient in its inputs
        (g0,) = torch.autograd.grad(fast.sum(), x, retain_graph=True)
        (g1,) = torch.autograd.grad(want.sum(), x)
        assert torch.equal(g0, g1)


@pytest.mark.parametrize("m", [1, 2])
def test_the_fused_marginal_log_ei_is_botorchs_to_the_last_bit(m):
    """MarginalLogEI skips BoTorch's posterior / sampler / q-reduction calls, not its arithmetic:
    values and gradients equal qLogEI's on the same marginals (one point, with a constraint)."""
    from bbo.acquisition import MarginalLogEI

    _, info, rng = fitted(CONT, m)
    X = torch.tensor(rng.random((7, 1, 3)), requires_grad=True)
    out = []
    for cls in (qLogExpectedImprovement, MarginalLogEI):
        acqf = cls(
            info.predictive,
            best_f=1.0,
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([128]), seed=5),
            objective=LinearMCObjective(-torch.eye(m, dtype=torch.float64)[0]),
            constraints=[lambda Z: Z[..., -1] - 1.5] if m > 1 else None,
        )
        for x in (X, X[:3]):  # base samples drawn once, whatever the batch
            v = acqf(x)
            (g,) = torch.autograd.grad(v.sum(), X)
            out.append((v.detach(), g))
    for (v0, g0), (v1, g1) in zip(out[:2], out[2:], strict=True):
        assert torch.allclose(v0, v1, rtol=1e-12, atol=0.0)
        assert torch.allclose(g0, g1, rtol=1e-12, atol=1e-300)


def test_a_model_it_does_not_reproduce_is_refused():
    broken = fitted(CONT)[0]
    broken.train_targets.data[:] = float("nan")  # predictions the check cannot reproduce
    assert cached_predictive(broken) is None
    with pytest.raises(ValueError):
        CachedPredictive(broken)


@pytest.mark.parametrize(
    "space,m",
    [(CONT, 1), (CONT, 2), (MIXED, 1), (MIXED, 2), (CATS, 1)],
    ids=["cont", "cont-2", "mixed", "mixed-2", "categorical"],
)
def test_the_closed_form_log_ei_matches_autograd(space, m):
    """MarginalLogEI's NumPy value and hand-derived gradient (kernel, transforms, smoothed
    improvement, both constraint directions) equal BoTorch's qLogEI through autograd on the same
    marginals, at random points and at training points (zero variance)."""
    from bbo.acquisition import MarginalLogEI
    from bbo.predictive_grad import marginal_gradients

    _, info, rng = fitted(space, m)
    cp = info.predictive
    assert marginal_gradients(cp) is not None  # every kernel bbo builds has the closed form
    train = cp._gp._original_train_inputs
    train = cp._gp.train_inputs[0] if train is None else train
    train = train[0] if train.dim() == 3 else train
    pts = np.concatenate([_points(space, rng, 6), train[:2].numpy()])
    X = torch.tensor(pts).unsqueeze(-2).requires_grad_(True)
    linear = [(m - 1, 1.0, -1.5), (0, -1.0, 0.2)] if m > 1 else []
    out = []
    for cls, kw in ((qLogExpectedImprovement, {}), (MarginalLogEI, {"linear_constraints": linear})):
        acqf = cls(
            cp,
            best_f=0.3,
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([128]), seed=5),
            objective=LinearMCObjective(-torch.eye(m, dtype=torch.float64)[0]),
            constraints=[lambda Z, j=j, a=a, c=c: a * Z[..., j] + c for j, a, c in linear] or None,
            **kw,
        )
        v = acqf(X)
        if space is CATS:  # no gradient in categorical inputs: the value alone
            out.append((v.detach(), torch.zeros_like(X)))
            continue
        (g,) = torch.autograd.grad(v.sum(), X)
        out.append((v.detach(), g))
        with torch.no_grad():  # the value alone (raw-sample scoring) takes the same path
            assert torch.allclose(acqf(X), v.detach(), rtol=1e-12, atol=0.0)
    assert acqf._closed_form() is not None
    (v0, g0), (v1, g1) = out
    assert torch.allclose(v1, v0, rtol=1e-8, atol=1e-8)
    scale = g0.abs().amax(-1, keepdim=True) + 1e-8
    assert ((g1 - g0).abs() <= 1e-6 * scale).all(), (g1 - g0).abs().max()


@pytest.mark.parametrize("space", [CONT, MIXED], ids=["cont", "mixed"])
def test_prior_guided_log_ei_in_closed_form_is_botorchs_pibo(space):
    """piBO on the marginals (MarginalPriorGuided, numeric and categorical priors): the closed
    form's value and gradient equal BoTorch's PriorGuidedAcquisitionFunction(log=True) over the
    same MarginalLogEI through autograd."""
    from botorch.acquisition.prior_guided import PriorGuidedAcquisitionFunction

    from bbo.acquisition import MarginalLogEI
    from bbo.closed_form import MarginalPriorGuided, closed_form_of
    from bbo.priors import LogPrior
    from bbo.spec import ParameterPrior

    _, info, rng = fitted(space, 1)
    cp = info.predictive
    first = space.free[0].name
    priors = [ParameterPrior(first, 0.3, 0.1, confidence=0.8)]
    if space is MIXED:
        priors += [
            ParameterPrior("k", 2.0, 1.5),
            ParameterPrior("c", probabilities={"q": 0.7, "r": 0.3}),
        ]
    prior = LogPrior(space, priors, select_device("cpu"))
    X = torch.tensor(_points(space, rng, 8)).unsqueeze(-2).requires_grad_(True)

    def log_ei():
        return MarginalLogEI(
            cp,
            best_f=0.3,
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([128]), seed=5),
            objective=LinearMCObjective(-torch.eye(1, dtype=torch.float64)[0]),
        )

    ours = MarginalPriorGuided(log_ei(), prior, 0.75)
    theirs = PriorGuidedAcquisitionFunction(log_ei(), prior, log=True, prior_exponent=0.75)
    assert closed_form_of(ours) is not None
    v0, v1 = theirs(X), ours(X)
    (g0,) = torch.autograd.grad(v0.sum(), X)
    (g1,) = torch.autograd.grad(v1.sum(), X)
    assert torch.allclose(v1, v0, rtol=1e-8, atol=1e-8)
    scale = g0.abs().amax(-1, keepdim=True) + 1e-8
    assert ((g1 - g0).abs() <= 1e-6 * scale).all(), (g1 - g0).abs().max()


def test_augmented_log_ei_adds_the_noise_factor_in_closed_form_and_through_autograd():
    """Augmented EI (a noisy objective): log EI plus log(1 - sqrt(noise / (var + noise))), the
    same in the closed form (value and gradient) as through autograd on the marginals; lowest
    at a training point, where the variance is smallest next to the noise."""
    from bbo.closed_form import MarginalLogEI

    _, info, rng = fitted(CONT, 2)
    cp = info.predictive
    pts = np.concatenate([_points(CONT, rng, 6), cp._train_x()[:2].numpy()])
    X = torch.tensor(pts).unsqueeze(-2)
    noise = 0.05

    def acqf(augmented):
        return MarginalLogEI(
            cp,
            best_f=-1.5,
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([128]), seed=5),
            objective=LinearMCObjective(-torch.eye(2, dtype=torch.float64)[1]),
            augmented=augmented,
        )

    plain, aug = acqf(None), acqf((1, noise))
    var = cp.marginals(X)[1][..., 0, 1]
    factor = torch.log1p(-torch.sqrt(noise / (var + noise)))
    assert torch.allclose(aug(X), plain(X) + factor, rtol=1e-10, atol=1e-10)
    assert factor[-2:].max() < factor[:6].min()  # training points: the most penalized
    Xf = X.clone().requires_grad_(True)
    val, grad = aug.closed_form(pts, True)
    aug._closed = None  # forget the closed form: BoTorch's sampling and autograd
    v = aug(Xf)
    (g,) = torch.autograd.grad(v.sum(), Xf)
    assert np.allclose(v.detach().numpy(), val, rtol=1e-8, atol=1e-8)
    assert np.allclose(g.reshape(len(pts), -1).numpy(), grad, rtol=1e-6, atol=1e-6)
    # under a prior (piBO) the factor stays: prior-guided augmented = prior-guided plain + factor
    from bbo.closed_form import MarginalPriorGuided
    from bbo.priors import LogPrior
    from bbo.spec import ParameterPrior

    prior = LogPrior(CONT, [ParameterPrior("x0", 0.3, 0.1)], select_device("cpu"))
    guided_plain = MarginalPriorGuided(acqf(None), prior, 0.5)
    guided_aug = MarginalPriorGuided(acqf((1, noise)), prior, 0.5)
    assert torch.allclose(guided_aug(X), guided_plain(X) + factor, rtol=1e-10, atol=1e-10)


def test_the_strategys_augmented_ei_uses_the_fitted_noise_and_none_without_it(monkeypatch):
    """marginal_acquisition(augmented=True) takes the GP's inferred noise of the objective; a
    noise of 0 (or not finite) leaves plain log EI rather than a factor of 0 / 0."""
    from bbo.acquisition import Layout, marginal_acquisition

    _, info, _ = fitted(CONT, 1)
    cp = info.predictive
    layout = Layout(obj_idx=(0,), signs=(1.0,), constraints=(), m=1)
    Y = np.zeros((len(cp._train_x()), 1))
    acqf = marginal_acquisition(cp, layout, Y, augmented=True)
    assert acqf._augmented == (0, pytest.approx(float(cp.noise_variance()[0])))
    assert marginal_acquisition(cp, layout, Y)._augmented is None
    for bad in (0.0, float("nan")):
        monkeypatch.setattr(cp, "noise_variance", lambda bad=bad: torch.tensor([bad]))
        assert marginal_acquisition(cp, layout, Y, augmented=True)._augmented is None


@pytest.mark.parametrize("m", [1, 2])
def test_the_closed_form_exploitation_score_matches_botorch(m):
    """MarginalExpectedObjective equals PosteriorMean (no constraint) or qSimpleRegret of a
    ConstrainedMCObjective (a constraint) on the same marginals, in value and gradient."""
    from botorch.acquisition.analytic import PosteriorMean
    from botorch.acquisition.monte_carlo import qSimpleRegret
    from botorch.acquisition.objective import ConstrainedMCObjective, ScalarizedPosteriorTransform

    from bbo.closed_form import expected_objective

    _, info, rng = fitted(CONT, m)
    cp = info.predictive
    w = -torch.eye(m, dtype=torch.float64)[0]
    linear = [(1, -1.0, 1.5)] if m > 1 else []
    fast = expected_objective(cp, w, 2.0, linear, seed=3)
    if m > 1:
        want = qSimpleRegret(
            cp,
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([128]), seed=3),
            objective=ConstrainedMCObjective(
                lambda Z, X=None: Z @ w, [lambda Z: -Z[..., 1] + 1.5], infeasible_cost=2.0
            ),
        )
    else:
        want = PosteriorMean(cp, posterior_transform=ScalarizedPosteriorTransform(w))
    X = torch.tensor(rng.random((7, 1, 3))).requires_grad_(True)
    got = []
    for acqf in (want, fast):
        v = acqf(X)
        got.append((v.detach(), torch.autograd.grad(v.sum(), X)[0]))
    (v0, g0), (v1, g1) = got
    assert torch.allclose(v1, v0, rtol=1e-9, atol=1e-9)
    assert torch.allclose(g1, g0, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("m", [1, 2])
def test_the_closed_form_optimizer_finds_botorchs_candidates(m):
    """closed_form.gen_candidates (L-BFGS-B on the NumPy value and gradient) returns what
    BoTorch's gen_candidates_scipy returns through autograd, and hands over to it where the
    closed form does not apply (pending points); likewise with features fixed per restart."""
    from botorch.generation.gen import gen_candidates_scipy

    from bbo.closed_form import MarginalLogEI, closed_form_of, gen_candidates

    _, info, rng = fitted(CONT, m)
    linear = [(m - 1, 1.0, -1.5)] if m > 1 else []
    acqf = MarginalLogEI(
        info.predictive,
        best_f=0.3,
        sampler=SobolQMCNormalSampler(sample_shape=torch.Size([128]), seed=5),
        objective=LinearMCObjective(-torch.eye(m, dtype=torch.float64)[0]),
        constraints=[lambda Z, j=j, a=a, c=c: a * Z[..., j] + c for j, a, c in linear] or None,
        linear_constraints=linear,
    )
    assert closed_form_of(acqf) is not None
    X0 = torch.tensor(rng.random((5, 1, 3)))
    lo, hi = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    opts = {"maxiter": 40, "pgtol": 1e-3, "factr": 1e10}
    x0, v0 = gen_candidates_scipy(X0, acqf, lo, hi, options=opts)
    x1, v1 = gen_candidates(X0, acqf, lo, hi, options=opts)
    assert not torch.equal(x1, X0)  # it moved
    assert torch.allclose(x1, x0, rtol=0, atol=1e-9) and torch.allclose(v1, v0, atol=1e-9)
    # the mixed optimizer's continuous step: a dimension fixed per restart, SciPy's tol
    fixed = {1: X0[:, 0, 1].clone()}
    step = {"maxiter": 40, "tol": 1e-6, "max_optimization_problem_aggregation_size": 1}
    x0, v0 = gen_candidates_scipy(X0, acqf, lo, hi, options=step, fixed_features=fixed)
    x1, v1 = gen_candidates(X0, acqf, lo, hi, options=step, fixed_features=fixed)
    assert torch.equal(x1[:, 0, 1], X0[:, 0, 1]) and not torch.equal(x1, X0)
    assert torch.allclose(x1, x0, rtol=0, atol=1e-9) and torch.allclose(v1, v0, atol=1e-9)
    from botorch.optim import optimize_mixed

    import bbo.acquisition  # noqa: F401 - points BoTorch's mixed optimizer at gen_candidates

    uses = optimize_mixed.optimize_acqf_mixed_alternating.__code__.co_names
    assert "gen_candidates_scipy" in uses and optimize_mixed.gen_candidates_scipy is gen_candidates
    acqf.set_X_pending(X0[0])
    assert closed_form_of(acqf) is None
    x2, _ = gen_candidates(X0, acqf, lo, hi, options=opts)
    x3, _ = gen_candidates_scipy(X0, acqf, lo, hi, options=opts)
    assert torch.allclose(x2, x3, rtol=0, atol=1e-12)


def test_log_ehvi_is_the_monte_carlo_ehvi_in_closed_form():
    """The analytic log EHVI of one point (three objectives, one of them minimized, an outcome
    constraint) matches qLogEHVI's Monte Carlo over the same cells wherever that is not in its
    smoothed tail, and keeps finite values and gradients far below the front, where every sample's
    improvement is zero."""
    from botorch.acquisition.multi_objective.logei import qLogExpectedHypervolumeImprovement
    from botorch.models import SingleTaskGP
    from botorch.sampling import SobolQMCNormalSampler
    from botorch.utils.multi_objective.box_decompositions.non_dominated import (
        FastNondominatedPartitioning,
    )
    from botorch.utils.multi_objective.pareto import is_non_dominated

    from bbo.acquisition import Layout, LogEHVI

    torch.manual_seed(0)
    X = torch.rand(20, 3, dtype=torch.float64)
    Y = torch.stack([torch.sin(3 * X[:, 0] + j) + X[:, j] for j in range(3)] + [X.sum(1)], -1)
    gp = SingleTaskGP(X, Y).eval()
    layout = Layout((0, 1, 2), (1.0, -1.0, 1.0), ((3, "<=", 1.8),), 4)
    signed = Y[:, :3] * torch.tensor(layout.signs, dtype=torch.float64)
    ref = signed.min(0).values - 0.1
    cells = FastNondominatedPartitioning(ref_point=ref, Y=signed[is_non_dominated(signed)])
    mc = qLogExpectedHypervolumeImprovement(
        gp,
        ref_point=ref,
        partitioning=cells,
        sampler=SobolQMCNormalSampler(torch.Size([4096]), seed=0),
        objective=layout.signed_objective(torch.float64, torch.device("cpu")),
        constraints=layout.constraint_callables(),
        eta=1e-4,
    )
    T = torch.rand(100, 1, 3, dtype=torch.float64)
    with torch.no_grad():
        exact, sampled = LogEHVI(gp, layout, cells)(T), mc(T)
    body = sampled > -6
    assert body.sum() > 20
    assert torch.allclose(exact[body], sampled[body], atol=0.03)
    far = torch.full((4, 1, 3), 0.5, dtype=torch.float64) + 4.0 * torch.rand(4, 1, 3)
    far.requires_grad_(True)
    val = LogEHVI(gp, layout, cells)(far)
    val.sum().backward()
    assert torch.isfinite(val).all() and torch.isfinite(far.grad).all()


def test_log_ehvi_gradients_stay_finite_where_the_model_is_confident():
    """A cell without an upper bound in some objective has its branch masked by torch.where, but
    its gradient flowed: (mu - 1e300) / s overflowed once the posterior sd fell below ~1e-4, and
    inf * 0 gave NaN gradients, so L-BFGS-B failed and every ask of a confident model (an objective
    on a small scale, a long history) fell back to random points."""
    from botorch.utils.multi_objective.box_decompositions.non_dominated import (
        FastNondominatedPartitioning,
    )

    from bbo.acquisition import Layout, LogEHVI

    class Confident:
        """Marginals with a posterior sd of 1e-6: a model sure of its means."""

        def marginals(self, X):
            x = X[..., 0]
            mean = torch.stack([x, 1.0 - x**2], -1)  # b x 1 x 2
            return mean, 1e-12 * (1.0 + mean**2)  # the sd moves with x, as a GP's does

    layout = Layout((0, 1), (1.0, 1.0), (), 2)
    front = torch.tensor([[0.2, 0.9], [0.5, 0.7], [0.8, 0.3]], dtype=torch.float64)
    cells = FastNondominatedPartitioning(ref_point=torch.zeros(2, dtype=torch.float64), Y=front)
    acqf = LogEHVI(Confident(), layout, cells)  # no GP: the marginals are all it reads
    X = torch.tensor([[[0.3]], [[0.65]], [[0.95]]], dtype=torch.float64, requires_grad=True)
    val = acqf(X)
    val.sum().backward()
    assert torch.isfinite(X.grad).all(), X.grad
    assert float(val[1]) > -50  # (0.65, 0.58) improves on the front: a real, finite value


def test_plugin_hypervolume_on_the_marginals_is_the_gps():
    """Several objectives' one-point acquisition (the plug-in front's log EHVI) gives the same
    values on the cached marginals as on the GP, and on a noise-free fit ranks candidates as
    qLogNEHVI does (which samples the baseline jointly with each candidate) where that is not in
    its Monte Carlo's smoothed tail (values near -40 for every candidate no sample improves)."""
    from scipy.stats import spearmanr

    from bbo.acquisition import Layout, make_acquisition, plugin_hypervolume
    from bbo.spec import Objective, StudySpec

    rng = np.random.default_rng(0)
    X = _points(CONT, rng, 20)
    Y = np.stack([np.sin(3 * X[:, 0]) + 0.5 * X[:, 1], np.cos(3 * X[:, 0]) - 0.3 * X[:, 2]], 1)
    model, _, info = Surrogate(CONT, 2, AlgorithmOptions(), select_device("cpu")).model(X, Y, None)
    spec = StudySpec(CONT, (Objective("f1", goal="maximize"), Objective("f2", goal="maximize")))
    layout, Xb = Layout.of(spec), torch.tensor(X)
    T = torch.tensor(_points(CONT, rng, 64)).unsqueeze(-2)
    with torch.no_grad():
        on_marginals = plugin_hypervolume(info.predictive, layout, Xb, Y)(T)
        on_gp = plugin_hypervolume(model, layout, Xb, Y)(T)
        noisy_ei = make_acquisition(model, layout, Xb, Y)(T)
    assert torch.allclose(on_marginals, on_gp, atol=1e-8)
    body = noisy_ei > -20
    assert body.sum() > 20
    assert spearmanr(on_marginals[body], noisy_ei[body]).statistic > 0.99
