"""`vxl vico`: synthesise VICO (Visual Clue Order) training samples from a video library.

Heavy libraries (prefect, ray, torch) are imported only when the command runs.
"""

from __future__ import annotations

import json

import typer

from flows.cli_common import EXIT_INFRA, EXIT_USAGE, fail


def _parse_opts(items: list[str] | None, flag: str, as_json: bool = False) -> dict:
    """["model=/m", "max_new_tokens=32"] -> {"model": "/m", "max_new_tokens": 32} (values JSON when they parse)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise fail(f"{flag} expects KEY=VALUE, got {it!r}", "usage", EXIT_USAGE, as_json)
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def vico(options: dict, *, captioner_opt: list[str] | None = None, extractor_opt: list[str] | None = None,
         as_json: bool = False) -> None:
    """Clip videos, caption the clips, extract ordered clues and write LLaVA-style ordering questions.

    Exit status: 0 samples written (videos skipped only for being too short / too few clues),
    3 some video failed (decode, captioner, extractor, worker) or no sample was written,
    2 usage error, 1 infrastructure error (Ray, file system, archive).
    """
    from tasks.vico import VicoOptions, VicoUsageError

    options = dict(options, captioner_options=_parse_opts(captioner_opt, "--captioner-opt", as_json),
                   extractor_options=_parse_opts(extractor_opt, "--extractor-opt", as_json))
    try:
        opts = VicoOptions.checked(**options)
    except VicoUsageError as exc:
        raise fail(str(exc), "usage", EXIT_USAGE, as_json) from None

    from flows.outcome import run_flow
    from flows.synth_vico import synth_vico
    from tasks.fanout import PoolError
    from tasks.ray_runtime import RayUnavailable

    try:
        summary = run_flow(synth_vico, **opts.model_dump())
    except VicoUsageError as exc:
        raise fail(str(exc), "usage", EXIT_USAGE, as_json) from None
    except (RayUnavailable, PoolError, OSError) as exc:
        raise fail(str(exc), "infrastructure", EXIT_INFRA, as_json) from None
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
    else:
        sw, v = summary["samples_written"], summary["videos"]
        typer.echo(f"{sw['total']} sample(s) written to {opts.out} (train {sw['train']}, val {sw['val']}) from "
                   f"{v['with_samples']} of {v['total']} video(s)")
        typer.echo("clue counts: " + (", ".join(f"k={a}: {n}" for a, n in summary["clue_counts"].items()) or "none"))
        for sp, pos in summary["answer_positions"].items():
            typer.echo(f"answer positions ({sp}): " + ", ".join(f"{a}: {n}" for a, n in pos.items()))
        for s in summary["skipped"]:
            typer.echo(f"skipped {s['video']} [{s['kind']}]: {s['reason']}", err=True)
        ann = summary.get("annotations")
        if ann:
            for m in ann["missing_files"]:
                typer.echo(f"annotations: key {m['key']} ({len(m['rows'])} row(s)): {m['reason']}", err=True)
            for b in ann["bad_rows"]:
                typer.echo(f"annotations: row {b['row']}: {b['reason']}", err=True)
    raise typer.Exit(summary["exit_code"])


def register(app: typer.Typer) -> None:
    """Add `vico` to the `vxl` app (flags: `tasks.vico.VicoOptions` plus the back ends' KEY=VALUE
    options and --json)."""
    from tasks.options import cli_command
    from tasks.options import cli_flag as p
    from tasks.vico import VicoOptions

    app.command("vico")(cli_command(VicoOptions, vico, extra=[
        p("captioner_opt", list[str], None, "--captioner-opt", help="Captioner option KEY=VALUE, repeatable "
          "(e.g. model=/models/qwen2-vl)."),
        p("extractor_opt", list[str], None, "--extractor-opt", help="Extractor option KEY=VALUE, repeatable "
          "(e.g. base_url=http://127.0.0.1:8000)."),
        p("as_json", bool, False, "--json", help="Print the summary as JSON."),
    ]))
