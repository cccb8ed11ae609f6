"""Application kits: described, seedable black boxes with ready-made study specs.

``KITS[name]`` is a :class:`bbo.kits.base.Kit`:

- ``hpo``   hyperparameter tuning of scikit-learn models on bundled data sets (:mod:`bbo.kits.hpo`);
- ``admm``  tuning an ADMM solver (penalty, over-relaxation, residual balancing) on Lasso and
  box-QP instances (:mod:`bbo.kits.admm`);
- ``cloud`` tuning a cluster's scheduling and autoscaling policy in a SimPy simulation
  (:mod:`bbo.kits.cloud`).

Example::

    from bbo.kits import KITS
    kit = KITS["admm"]
    spec = kit.spec(problem="qp")
    metrics = kit.evaluate({"rho": 3.0, "alpha": 1.6, "adaptive": "off", "mu": 10, "tau_incr": 2,
                            "tau_decr": 2, "problem": "qp"}, seed=0)
"""

from __future__ import annotations

from bbo.kits.admm import KIT as ADMM
from bbo.kits.base import Kit
from bbo.kits.cloud import KIT as CLOUD
from bbo.kits.hpo import KIT as HPO

KITS: dict[str, Kit] = {"hpo": HPO, "admm": ADMM, "cloud": CLOUD}


def get_kit(name: str) -> Kit:
    """The kit called ``name``; a clear error listing the kits otherwise."""
    from bbo.errors import SpecError

    try:
        return KITS[name]
    except KeyError:
        raise SpecError("kit", f"unknown kit {name!r}; choose one of {sorted(KITS)}") from None


__all__ = ["KITS", "Kit", "get_kit"]
