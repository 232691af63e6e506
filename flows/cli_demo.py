"""`vxl demo` (`make demo`): sample videos -> index -> ask, on the embedded default.

Tiny model, local archive in `./demo_out/archive`, local Ray, Prefect in-process (ephemeral).
Idempotent: a rerun keeps the sample videos, skips the videos already indexed, and asks again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

QUESTION = "What happens first in the video?"


def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for the sample videos and the archive."),
    count: int = typer.Option(3, "--count", help="Sample videos."),
    seconds: float = typer.Option(12.0, "--seconds", help="Length of each sample video, seconds."),
) -> None:
    """Make sample videos, index them with the tiny model, ask a question from the archive."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from flows.cli_index import LiveProgress, _human_bytes
    from tasks.index import IndexInfraError, IndexReport, set_progress_sink
    from tasks.ray_runtime import RayUnavailable
    from tasks.samples import make_sample_videos

    t0 = time.perf_counter()
    videos, archive = out / "videos", out / "archive"
    have = sorted(videos.glob("sample_*.mp4"))
    if len(have) < count:
        typer.echo(f"1/3 writing {count} sample videos to {videos}")
        make_sample_videos(videos, count=count, seconds=seconds, seed=0)
    else:
        typer.echo(f"1/3 sample videos already in {videos}")
    typer.echo(f"2/3 indexing into {archive} (tiny model, local Ray, Prefect in-process)")
    from flows.index_corpus import index_corpus

    live = LiveProgress()
    set_progress_sink(live)
    try:
        with live:
            report = IndexReport(**index_corpus(sources=[str(videos)], archive=str(archive), model="tiny",
                                                max_frames=32))
    except (IndexInfraError, RayUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        set_progress_sink(None)
    s = report.summary()
    typer.echo(f"    indexed {s['indexed']}, skipped {s['skipped']}, failed {s['failed']}; "
               f"{_human_bytes(s['kv_bytes'])} K/V written")

    from storage import open_archive

    arch = open_archive(str(archive))
    rows = [r for r in arch.list_videos() if r.status == "indexed" and r.model_fingerprint == report.fingerprint]
    if not rows:
        typer.echo("error: nothing indexed; see the messages above", err=True)
        raise typer.Exit(3)
    first = sorted(rows, key=lambda r: r.source_uri or "")[0]
    typer.echo(f"3/3 asking about {Path(first.source_uri or first.video_id).name}: {QUESTION!r}")
    from tasks.ask import ask_video

    ans = ask_video(str(archive), first.video_id, QUESTION, model="tiny", max_new_tokens=16)
    typer.echo(f"    answer: {ans['answer']!r} (first token {ans['ttft_s']:.2f} s, {ans['num_tokens']} tokens "
               f"in {ans['total_s']:.2f} s; the tiny model is random, so the words are too)")
    typer.echo(f"    from {ans['memory_tokens']} memory tokens ({_human_bytes(ans['kv_bytes'])}), "
               "no video decoded, no vision tower run")
    typer.echo(
        f"done in {time.perf_counter() - t0:.0f} s: {len(rows)} videos in {archive} "
        f"({_human_bytes(sum(r.kv_bytes or 0 for r in rows))} of K/V). Try: vxl archive ls --archive {archive}"
    )
    if report.failed:
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    """Add `demo` to the `vxl` app."""
    app.command("demo")(demo)
