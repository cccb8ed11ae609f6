"""Subcommands of ``bbo``: each module defines ``register(subparsers)`` and sets ``func``.

Add a module here (e.g. ``kit.py``, ``keys.py``) to add a subcommand; cli.py finds it.
"""
