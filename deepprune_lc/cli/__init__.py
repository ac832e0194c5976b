"""The ``deepprune`` command line (typer + rich, from the ``[cli]`` extra): demo, ask, bench."""

try:
    from deepprune_lc.cli.app import app
except ModuleNotFoundError as error:
    missing = (error.name or "").split(".")[0]
    if missing not in ("typer", "rich"):
        raise
    raise ModuleNotFoundError(
        f"the deepprune command line needs {missing}, which comes with the [cli] extra: "
        "pip install 'deepprune-lc[cli]'",
        name=missing,
    ) from error

__all__ = ["app"]
