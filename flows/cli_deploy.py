"""`vxl deploy`: validate prefect.yaml's parameters and register its deployments (flows/deploy.py)."""

from __future__ import annotations

import json

import typer

from flows.cli_common import EXIT_USAGE, fail


def deploy(
    prefect_file: str = typer.Option("prefect.yaml", "--prefect-file", help="The deployments file (its folder is "
                                     "the working directory of `prefect deploy`)."),
    no_schedule: bool = typer.Option(False, "--no-schedule", help="Deploy with the schedules off."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Resolve and validate only; send nothing to the server."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fill prefect.yaml's {{ $VAR }} values from the environment, validate every deployment's
    parameters, then run `prefect deploy --all` with the schedules on.

    Nothing is deployed while a variable is unset or a parameter is invalid (each problem names the
    deployment, the parameter and the variable). Exit status: 0 deployed (or valid, --dry-run),
    2 unset variables or invalid parameters, 1 `prefect deploy` failed (server unreachable, ...).
    """
    from flows.deploy import DeployError
    from flows.deploy import deploy as run_deploy

    try:
        out = run_deploy(prefect_file, schedule=not no_schedule, dry_run=dry_run)
    except FileNotFoundError as exc:
        raise fail(f"{prefect_file}: {exc.strerror}", "usage", EXIT_USAGE, as_json) from None
    except DeployError as exc:
        code = 1 if exc.problems and exc.problems[0].startswith("`prefect deploy") else EXIT_USAGE
        raise fail("prefect.yaml cannot be deployed:\n  " + "\n  ".join(exc.problems), "usage" if code == EXIT_USAGE else "infrastructure", code, as_json,
                   problems=exc.problems) from None
    if as_json:
        typer.echo(json.dumps(out))
    else:
        verb = "valid" if dry_run else "deployed"
        typer.echo(f"{verb}: {', '.join(out['deployments'])} (schedules {'on' if out['schedules_active'] else 'off'})")


def register(app: typer.Typer) -> None:
    """Add `deploy` to the `vxl` app."""
    app.command("deploy")(deploy)
