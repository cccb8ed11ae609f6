"""``bbo kit``: run an application kit's study on a live server (implemented in :mod:`bbo.kits.cli`)."""

from bbo.kits.cli import register  # noqa: F401  (cli.py calls register(subparsers))
