"""The `vxl` command line.

Each command group lives in its own module (`flows/cli_*.py`) exposing `register(app)`; this file
only assembles them. Heavy libraries (torch, lancedb, ray, prefect) are imported inside commands,
so `vxl --help` stays fast.

Exit status (every command): 0 success, 1 infrastructure error, 2 usage error, 3 finished with
per-item failures (see each command's help).
"""

from __future__ import annotations

import importlib
import os

import typer

from flows.cli_common import VxlGroup

app = typer.Typer(
    cls=VxlGroup,
    name="vxl",
    help="Index a video library into an archive of Video-XL VST memories and answer questions from it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules, in help order. A module that is not present yet is simply not registered.
_COMMAND_MODULES = (
    "flows.cli_samples",
    "flows.cli_index",
    "flows.cli_ask",
    "flows.cli_archive",
    "flows.cli_vico",
    "flows.cli_demo",
    "flows.cli_train",
    "flows.cli_eval",
    "flows.cli_deploy",
)

for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # only tolerate the module itself being absent
        if exc.name != _name:
            raise
        continue
    _mod.register(app)


def main() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    app()


if __name__ == "__main__":
    main()
