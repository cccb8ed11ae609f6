"""Where the GP math runs: one torch device and dtype per strategy, chosen once.

Every tensor of a suggestion (training data, model, acquisition, candidates) lives on the device
returned by :func:`select_device`; data crosses to the CPU only twice per ask (numpy in, decoded
candidates out), never inside the fit or the acquisition optimizer.

``algorithm.device``: ``"auto"`` uses CUDA when torch sees a GPU and falls back to the CPU otherwise;
``"cuda"`` asks for the GPU and also falls back (with :data:`FALLBACK_REASON` set) when there is none,
so a spec written on a GPU machine still runs on a laptop; ``"cpu"`` forces the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DTYPE = torch.float64


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


def select_device(preference: str = "auto") -> Placement:
    """The placement for ``preference`` in {"auto", "cpu", "cuda"} (see module docstring)."""
    pref = (preference or "auto").lower()
    if pref == "cpu":
        return Placement(torch.device("cpu"))
    if cuda_available():
        return Placement(torch.device("cuda"))
    note = "cuda requested but not available: running on cpu" if pref == "cuda" else ""
    return Placement(torch.device("cpu"), note=note)
