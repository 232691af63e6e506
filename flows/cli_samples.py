"""`vxl sample-videos`: write H.264 sample videos with known scene cuts and events.

numpy and PyAV are imported only when the command runs (via tasks.samples), so `vxl --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.cli_common import EXIT_INFRA, EXIT_USAGE, fail


def sample_videos(
    out_dir: Path = typer.Argument(..., help="Folder to write sample_NN.mp4 and sample_NN.json into."),
    count: int = typer.Option(3, "--count", "-n", min=1, help="Number of videos."),
    seconds: float = typer.Option(
        20.0, "--seconds", "-s", min=0.125, help="Duration of each video, seconds."
    ),
    fps: float = typer.Option(8.0, "--fps", min=0.1, max=120.0, help="Frames per second."),
    width: int = typer.Option(320, "--width", min=64, help="Frame width, pixels (even)."),
    height: int = typer.Option(240, "--height", min=64, help="Frame height, pixels (even)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same arguments write the same files."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable output."),
) -> None:
    """Write real H.264 MP4 sample videos with scene cuts and known events, plus the truth as JSON.

    Each NAME.mp4 gets NAME.json with the cut times, scenes and events (docs/CONTRACTS.md).
    Exit status: 0 success, 2 usage error, 1 the videos could not be written.
    """
    from tasks.samples import load_truth, make_sample_videos

    try:
        paths = make_sample_videos(
            out_dir, count=count, seconds=seconds, fps=fps, width=width, height=height, seed=seed
        )
    except ValueError as exc:
        raise fail(str(exc), "usage", EXIT_USAGE, as_json) from None
    except OSError as exc:
        raise fail(f"cannot write sample videos to {out_dir}: {exc}", "infrastructure", EXIT_INFRA, as_json) from None
    rows = []
    for p in paths:
        truth = load_truth(p)
        rows.append(
            {
                "video": str(p),
                "truth": str(p.with_suffix(".json")),
                "seconds": truth["seconds"],
                "fps": truth["fps"],
                "width": truth["width"],
                "height": truth["height"],
                "num_cuts": len(truth["cuts"]),
                "num_events": len(truth["events"]),
                "size_bytes": p.stat().st_size,
            }
        )
    if as_json:
        typer.echo(json.dumps({"out_dir": str(out_dir), "videos": rows}))
        return
    for r in rows:
        typer.echo(
            f"{r['video']}  {r['seconds']:g} s  {r['width']}x{r['height']} @ {r['fps']:g} fps  "
            f"{r['num_cuts']} cuts  {r['num_events']} events  {r['size_bytes']} bytes"
        )


def register(app: typer.Typer) -> None:
    """Add `sample-videos` to the `vxl` app."""
    app.command("sample-videos")(sample_videos)
