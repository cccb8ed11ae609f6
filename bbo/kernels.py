"""A Matern-5/2 kernel over mixed numeric and categorical columns, for spaces with categorical
parameters.

Distance: ``r^2 = sum_numeric ((x_i - x'_i) / l_i)^2 + sum_categorical [x_j != x'_j] / l_j^2``,
then Matern-5/2 of ``r``: a differing category counts like a numeric difference of one unit of
its own lengthscale. One kernel with one lengthscale per column (and the same Gamma prior on all
of them, :func:`bbo.surrogate.kernel`'s), under one scale kernel. Optuna's GPSampler models
categories the same way.

Why not BoTorch's ``MixedSingleTaskGP``: its categorical kernel has no lengthscale prior, and on
few points its marginal likelihood runs the categorical lengthscales off to the 1e-6 floor or to
1e5 (measured on a 6-parameter NAS-style space at 20 points: raw lengthscales of +-4e5); the fit
then took 400 L-BFGS iterations (4-6 s on a loaded 2-core machine) and the model either ignored a
parameter or treated any change of it as unrelated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from gpytorch.kernels import Kernel

_SQRT5 = math.sqrt(5.0)


class MixedMaternKernel(Kernel):
    """Matern-5/2 on the distance above; ``cat_dims``: the categorical columns (choice indices)."""

    has_lengthscale = True

    def __init__(self, cat_dims: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        d = self.ard_num_dims
        self.cat_dims = sorted(int(i) for i in cat_dims)
        self.num_dims = [i for i in range(d) if i not in set(self.cat_dims)]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params):
        ls = self.lengthscale  # (*batch, 1, d)
        sq = None
        if self.num_dims:
            idx = self.num_dims
            a, b = x1[..., idx] / ls[..., idx], x2[..., idx] / ls[..., idx]
            if diag:
                sq = ((a - b) ** 2).sum(-1)
            else:
                sq = self.covar_dist(a, b, square_dist=True)
        if self.cat_dims:
            idx = self.cat_dims
            w = ls[..., idx].pow(-2)  # (*batch, 1, c)
            if diag:
                sc = ((x1[..., idx] != x2[..., idx]).to(w) * w).sum(-1)
            else:
                diff = (x1[..., idx].unsqueeze(-2) != x2[..., idx].unsqueeze(-3)).to(w)
                sc = (diff * w.unsqueeze(-2)).sum(-1)
            sq = sc if sq is None else sq + sc
        r = _SQRT5 * sq.clamp_min(1e-30).sqrt()
        return (1.0 + r + r.pow(2) / 3.0) * torch.exp(-r)
