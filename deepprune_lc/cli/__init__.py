"""The ``deepprune`` command line (typer + rich, from the ``[cli]`` extra): demo, ask, bench."""

from deepprune_lc.cli.app import app

__all__ = ["app"]
