"""`vxl eval`: multiple-choice benchmark accuracy from the archive (issue 13).

    vxl eval --archive A --questions mlvu_dev.json --videos /data/MLVU/video --model toy [--json]
    vxl eval --archive A --compare RUN_A RUN_B      # paired per-type difference, McNemar's test
    vxl eval --archive A --questions Q --plot acc.png

Exit status: 0 success; 1 infrastructure (archive, Ray, model); 2 usage (bad file, layout, flags);
3 finished, but some questions could not be scored (video missing, not indexed, failed).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import typer


def _fail(msg: str, kind: str, code: int, as_json: bool) -> typer.Exit:
    if as_json:
        typer.echo(json.dumps({"error": msg, "error_kind": kind}))
    else:
        typer.echo(f"error: {msg}", err=True)
    return typer.Exit(code)


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def print_table(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{res['layout']} `{Path(res['questions_file']).name}` - model {res['model']}")
    for c in ("question type", "correct / total", "accuracy", "95% CI (Wilson)"):
        t.add_column(c, justify="right" if c != "question type" else "left")
    for name, d in res["per_type"].items():
        t.add_row(name, f"{d['correct']} / {d['total']}", _pct(d["accuracy"]), f"{_pct(d['ci95'][0])} - {_pct(d['ci95'][1])}")
    t.add_row("[bold]overall", f"{res['correct']} / {res['num_questions']}", _pct(res["accuracy"]),
              f"{_pct(res['ci95'][0])} - {_pct(res['ci95'][1])}")
    Console().print(t)
    if len(res["per_duration"]) > 1 or "unknown" not in res["per_duration"]:
        d = Table(title="by duration")
        for c in ("duration", "correct / total", "accuracy", "95% CI"):
            d.add_column(c)
        for name, v in res["per_duration"].items():
            d.add_row(name, f"{v['correct']} / {v['total']}", _pct(v["accuracy"]),
                      f"{_pct(v['ci95'][0])} - {_pct(v['ci95'][1])}")
        Console().print(d)
    if res["missing"]:
        typer.echo(f"{len(res['missing'])} questions not scored, e.g. {res['missing'][0]['qid']}: "
                   f"{res['missing'][0]['reason']}")


def plot_runs(runs: list[dict], out: Path) -> None:
    """Grouped bars: accuracy per question type (x) for each run/setting (colour), 95% CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = sorted({t for r in runs for t in r["per_type"]}) + ["overall"]
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(types)), 3.8))
    for i, r in enumerate(runs):
        cells = [r["per_type"].get(t) if t != "overall" else
                 {"accuracy": r["accuracy"], "ci95": r["ci95"]} for t in types]
        acc = [c["accuracy"] if c else float("nan") for c in cells]
        lo = [max(0.0, a - c["ci95"][0]) if c else 0 for a, c in zip(acc, cells, strict=True)]
        hi = [max(0.0, c["ci95"][1] - a) if c else 0 for a, c in zip(acc, cells, strict=True)]
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(types))]
        ax.bar(xs, acc, width, yerr=[lo, hi], capsize=2, label=r.get("run") or f"run {i + 1}")
    ax.set_xticks(range(len(types)), types, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% CI)")
    ax.legend(fontsize=8, title="setting")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def _extra_options() -> list:
    """`vxl eval`'s own flags (the run's options are `tasks.evaluate.EvalOptions`'s fields)."""
    from tasks.options import cli_flag as p

    return [
        p("output", Path | None, None, "--output", "-o", help="Also write the full results JSON here."),
        p("compare", list[str] | None, None, "--compare", help="Two result JSON files (from --output) to compare "
          "per type (McNemar's exact test). Repeat: --compare A --compare B."),
        p("plot", Path | None, None, "--plot", help="PNG: accuracy by question type (and by run with --compare)."),
        p("ray_address", str | None, None, "--ray-address", help="Ray cluster (default: a local Ray)."),
        p("as_json", bool, False, "--json", help="Print one JSON object."),
    ]


def _compare(files: list[str], plot: Path | None, as_json: bool) -> None:
    from tasks.evaluate import compare_runs

    runs = []
    for f in files:
        try:
            runs.append(json.loads(Path(f).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise _fail(f"--compare {f}: not a results JSON written by vxl eval --output ({exc})", "usage", 2,
                        as_json) from None
    cmp = compare_runs(runs[0], runs[1])
    if plot:
        plot_runs(runs, plot)
    if as_json:
        typer.echo(json.dumps({"a": files[0], "b": files[1], "per_type": cmp}))
        return
    typer.echo(f"A = {files[0]}, B = {files[1]} (paired, common questions)")
    typer.echo(f"{'type':28} {'n':>5} {'A':>7} {'B':>7} {'B-A':>7} {'A only':>7} {'B only':>7} {'p (McNemar)':>12}")
    for t, d in cmp.items():
        typer.echo(f"{t:28} {d['n']:5d} {_pct(d['a']):>7} {_pct(d['b']):>7} {d['difference'] * 100:+6.1f}p "
                   f"{d['a_only']:7d} {d['b_only']:7d} {d['p_value']:12.4f}")


def eval_cmd(options: dict, *, output: Path | None = None, compare: list[str] | None = None, plot: Path | None = None,
             ray_address: str | None = None, as_json: bool = False) -> None:
    """Score a benchmark's multiple-choice questions from the archive (option log-likelihood)."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from tasks.evaluate import EvalError, EvalOptions

    if compare:
        if len(compare) != 2 or options.get("questions_file"):
            raise _fail("--compare takes exactly two result files and no --questions", "usage", 2, as_json)
        _compare(compare, plot, as_json)
        return
    try:  # usage errors before any Ray or Prefect start
        opts = EvalOptions.checked(**options)
    except EvalError as exc:
        raise _fail(str(exc), exc.kind, exc.exit_code, as_json) from None
    from flows.evaluate import evaluate
    from flows.outcome import run_flow

    try:
        res = run_flow(evaluate, options=opts.model_copy(update={"archive": opts.archive_uri}),
                       ray_address=ray_address)
    except EvalError as exc:
        raise _fail(str(exc), exc.kind, exc.exit_code, as_json) from None
    if output:
        output.write_text(json.dumps(res, indent=1, default=str))
    if plot:
        plot_runs([res], plot)
    if as_json:
        typer.echo(json.dumps(res, default=str))
    else:
        print_table(res)
    if res["missing"]:
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    """Add `eval` to the `vxl` app (flags: `tasks.evaluate.EvalOptions` plus `_extra_options`)."""
    from tasks.evaluate import EvalOptions
    from tasks.options import cli_command

    app.command("eval")(cli_command(EvalOptions, eval_cmd, extra=_extra_options()))
