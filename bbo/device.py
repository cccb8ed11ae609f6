"""Where the GP math runs: one torch device and dtype per strategy, chosen once.

Every tensor of a suggestion (training data, model, acquisition, candidates) lives on the device
returned by :func:`select_device`; data crosses to the CPU only twice per ask (numpy in, decoded
candidates out), never inside the fit or the acquisition optimizer.

``algorithm.device``: ``"auto"`` uses CUDA when torch sees a GPU and the GP conditions on at least
:data:`AUTO_GPU_MIN_POINTS` points, the CPU otherwise (a study starts on the CPU and moves once);
``"cuda"`` asks for the GPU and also falls back (:attr:`Placement.note` says so) when there is none,
so a spec written on a GPU machine still runs on a laptop; ``"cpu"`` forces the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DTYPE = torch.float64
# Below this many model points a CUDA ask is slower than a CPU one (kernel-launch latency; the
# closed-form acquisition and fit paths are CPU-only): bench/results/latency_cuda.md, on an H200.
AUTO_GPU_MIN_POINTS = 1000


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype = DTYPE
    note: str = ""  # why the requested device was not used, if it was not

    @property
    def tkwargs(self) -> dict:
        return {"device": self.device, "dtype": self.dtype}

    def tensor(self, a) -> torch.Tensor:
        """numpy / list -> a tensor on this device (one host-to-device copy)."""
        if isinstance(a, torch.Tensor):
            return a.to(**self.tkwargs)
        return torch.as_tensor(np.asarray(a, dtype=np.float64), **self.tkwargs)


def cuda_available() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:  # a broken driver install must not take the optimizer down
        return False


def select_device(preference: str = "auto", n_points: int | None = None) -> Placement:
    """The placement for ``preference`` in {"auto", "cpu", "cuda"} (see module docstring); with
    ``n_points`` (the GP's size), ``"auto"`` keeps a GP below :data:`AUTO_GPU_MIN_POINTS` on the CPU."""
    pref = (preference or "auto").lower()
    small = pref == "auto" and n_points is not None and n_points < AUTO_GPU_MIN_POINTS
    if pref == "cpu" or small:
        return Placement(torch.device("cpu"))
    if cuda_available():
        return Placement(torch.device("cuda"))
    note = "cuda requested but not available: running on cpu" if pref == "cuda" else ""
    return Placement(torch.device("cpu"), note=note)
