"""What every `vxl` command shares: error output (text, or JSON under `--json`), and usage errors
that never start Prefect or Ray and never print tracebacks (issue 15).

- `fail(message, kind, code, as_json)`: the one way a command reports an error. Under `--json` the
  error is one JSON object on stdout, `{"error": ..., "error_kind": ...}` (plus any extra keys), so
  a script that parses stdout always gets JSON; the text goes to stderr as well.
- `VxlGroup`: the app's command group; under `--json`, a usage error found while parsing the
  command line (unknown option, bad value) is printed as the same JSON object too, exit status 2.

Non-finite numbers (`--fps inf`) are rejected by each job's options validation (`tasks/`), which the
CLI, the flows and the library functions share.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

EXIT_INFRA, EXIT_USAGE = 1, 2


def fail(message: str, kind: str, code: int, as_json: bool, **extra: Any) -> typer.Exit:
    """Report an error; returns the `typer.Exit` to raise (`raise fail(...) from None`).

    Args:
        message: what went wrong, naming the file/video/option and the fix.
        kind: machine-readable kind (`usage`, `infrastructure`, `archive_not_found`, ...).
        code: the exit status (1 infrastructure, 2 usage, 3 per-item failures, 4 numerics).
        as_json: also print `{"error", "error_kind", **extra}` as one line of JSON on stdout.
    """
    if as_json:
        typer.echo(json.dumps({"error": message, "error_kind": kind, **extra}, default=str))
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


class VxlGroup(TyperGroup):
    """Command-line usage errors as JSON on stdout when `--json` is among the arguments."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or "--json" not in argv:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except TyperException as exc:  # typer's (vendored click's) ClickException family
            code = getattr(exc, "exit_code", EXIT_USAGE)
            kind = "usage" if code == EXIT_USAGE else "error"
            typer.echo(json.dumps({"error": exc.format_message(), "error_kind": kind}))
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)
