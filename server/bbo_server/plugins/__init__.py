"""Server plugins: each module here may define

- ``add_serve_arguments(parser)``: extra ``bbo serve`` options;
- ``configure_server(opts: ServerOptions, args)``: adjust options before the server starts
  (e.g. set ``opts.authenticate`` for API keys, add ``opts.interceptors``, wrap
  ``opts.strategy_factory``).

Modules are loaded in name order by :func:`load`.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def load() -> list[ModuleType]:
    return [
        importlib.import_module(f"{__name__}.{m.name}")
        for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
        if not m.name.startswith("_")
    ]
