"""`vxl index SOURCE... --archive URI`: index videos into the archive (Prefect flow `index_corpus`).

Exit status: 0 every video indexed or skipped; 3 the run finished but some videos failed;
1 infrastructure error (archive not writable, Ray unreachable, no worker could load the model);
2 usage error (bad option, source not found); 4 this environment's numerics differ from the archive's
(`tasks.numerics`: nothing stored; --accept-numerics-change accepts and records the change).

Heavy imports (prefect, ray, torch) happen inside the command, so `vxl --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys

import typer

from flows.cli_common import EXIT_INFRA, EXIT_USAGE, fail


def _check_archive_path(archive: str) -> None:
    """A local archive path that is an existing file is a usage error (before Prefect or Ray start)."""
    from tasks.index import UsageError

    path = archive.removeprefix("file://")
    if "://" not in archive.removeprefix("file://") and os.path.isfile(path):
        raise UsageError(f"--archive {archive} is a file, not an archive folder: give a folder (created if missing)")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class LiveProgress:
    """Rich live display on stderr: videos done/failed/total, frames/s, ETA; prints the Ray dashboard URL."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]indexing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task = None
        self.url_shown = False

    def __enter__(self):
        if self.enabled:
            self.progress.start()
            self.task = self.progress.add_task("index", total=None, stats="starting Ray and the encode workers")
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()

    def __call__(self, p) -> None:
        if not self.enabled:
            return
        if (p.ray or p.dashboard_url) and not self.url_shown:
            self.url_shown = True
            self.console.print(p.ray or f"Ray dashboard: {p.dashboard_url}")
        rate = p.frames / p.elapsed_s if p.elapsed_s > 0 else 0.0
        stats = (f"indexed {p.indexed}  skipped {p.skipped}  [red]failed {p.failed}[/red]  "
                 f"in flight {p.in_flight}  {rate:.1f} frames/s")
        for e in (p.encoding or [])[:2]:  # inside long videos: windows done, frames/s, ETA
            eta = f"ETA {int(e['eta_s']) // 60}:{int(e['eta_s']) % 60:02d}" if e.get("eta_s") is not None else "ETA -"
            name = os.path.basename(str(e["video"] or ""))[:30]
            stats += (f"  | {name}: window {e['windows_done']}/{e['windows_total'] or '?'}, "
                      f"{e['frames_per_s']:.1f} frames/s, {eta}")
        self.progress.update(self.task, total=p.total or None, completed=p.done, stats=stats)


def index(options: dict, *, as_json: bool = False, no_flow: bool = False) -> None:
    """Index videos into the archive: decode, plan, encode on Ray workers, write each video as it finishes.

    Videos already indexed for this model are skipped (--force re-indexes); videos that failed
    before are retried only with --retry-failed. Exit status: 0 all indexed or skipped, 3 some
    videos failed, 1 infrastructure error (or upstream drift: nothing stored), 2 usage error, 4 this
    environment's numerics differ from the archive's (nothing stored; --accept-numerics-change).
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from model.environment import UpstreamDriftError
    from tasks.index import (
        IndexInfraError,
        IndexJobOptions,
        IndexReport,
        UsageError,
        _discover,
        index_job,
        set_progress_sink,
    )
    from tasks.numerics import NumericsChanged
    from tasks.ray_runtime import RayUnavailable

    try:
        opts = IndexJobOptions.checked(**options)
        _discover(opts.sources)  # fail fast on missing sources, before Ray and Prefect start
        _check_archive_path(opts.archive_uri)
    except UsageError as exc:
        raise fail(str(exc), "usage", EXIT_USAGE, as_json) from None
    archive, max_frames, fps, kv_codec = opts.archive_uri, opts.max_frames, opts.fps, opts.kv_codec

    live = LiveProgress(enabled=sys.stderr.isatty() or not as_json)
    set_progress_sink(live)
    try:
        with live:
            if no_flow:
                report = index_job(opts)
            else:
                from flows.index_corpus import index_corpus
                from flows.outcome import run_flow

                report = IndexReport(**run_flow(index_corpus, **{**opts.model_dump(), "archive": archive}))
    except UsageError as exc:
        raise fail(str(exc), "usage", EXIT_USAGE, as_json) from None
    except (IndexInfraError, RayUnavailable, UpstreamDriftError) as exc:
        raise fail(str(exc), "infrastructure", EXIT_INFRA, as_json) from None
    except NumericsChanged as exc:
        raise fail(str(exc), "numerics_changed", exc.exit_code, as_json) from None
    finally:
        set_progress_sink(None)
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        for f in report.failed:
            typer.echo(f"failed [{f['error_kind']}] {f['source_uri']}: {f['error']}", err=True)
        capped = [v for v in report.indexed if v.get("frame_cap")]
        if capped:
            worst = max(capped, key=lambda v: v["frame_cap"]["seconds_per_frame"])
            c = worst["frame_cap"]
            typer.echo(f"note: {len(capped)} video(s) longer than --max-frames {max_frames} at --fps {fps:g} were "
                       f"sampled uniformly (e.g. {worst['source_uri']}: {c['kept']} of {c['wanted']} frames, one every "
                       f"{c['seconds_per_frame']:g} s); raise --max-frames to keep {fps:g} fps", err=True)
        for reason, r in report.ignored.items():
            typer.echo(f"ignored {r['count']} file(s) under the sources: {reason} (e.g. {r['examples'][0]})", err=True)
        s = report.summary()
        prev = sum(1 for k in report.skipped if k["reason"] == "failed_before")
        typer.echo(
            f"indexed {s['indexed']}, skipped {s['skipped']}"
            + (f" ({prev} failed before; --retry-failed retries them)" if prev else "")
            + f", failed {s['failed']} of {s['total']} videos; {s['frames']} frames, "
            f"{_human_bytes(s['kv_bytes'])} K/V"
            + (f" ({kv_codec}; {_human_bytes(s['kv_raw_bytes'])} raw)" if kv_codec != "raw" else "")
            + f", {s['seconds']:.1f} s ({s['frames_per_s']:.1f} frames/s)"
        )
    raise typer.Exit(report.exit_code)


def register(app: typer.Typer) -> None:
    """Add `index` to the `vxl` app (flags: `tasks.index.IndexJobOptions` plus --json)."""
    from tasks.index import IndexJobOptions
    from tasks.options import cli_command
    from tasks.options import cli_flag as p

    app.command("index")(cli_command(IndexJobOptions, index, extra=[
        p("as_json", bool, False, "--json", help="Print the report as JSON on stdout."),
        p("no_flow", bool, False, "--no-flow", hidden=True, help="Run the pipeline without Prefect's engine "
          "(debugging, tests)."),
    ]))
