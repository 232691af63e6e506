"""`vxl vico`: synthesise VICO (Visual Clue Order) training samples from a video library.

Heavy libraries (prefect, ray, torch) are imported only when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path

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


def vico(
    source: str = typer.Argument(..., help="Video folder, file, glob, or .csv/.jsonl/.parquet manifest ('uri' column)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: train.json, val.json, summary.json."),
    annotations: Path = typer.Option(None, "--annotations", help="CinePile rows (.parquet/.jsonl), joined by videoID "
                                                               "or the yt_clip_link id to local files."),
    captioner: str = typer.Option("videoxl", "--captioner", help="videoxl | hf-vlm | annotations | ground-truth."),
    extractor: str = typer.Option("heuristic", "--extractor", help="heuristic | hf-llm | openai-compatible."),
    captioner_opt: list[str] = typer.Option(None, "--captioner-opt", help="Captioner option KEY=VALUE, repeatable "
                                                                         "(e.g. model=/models/qwen2-vl)."),
    extractor_opt: list[str] = typer.Option(None, "--extractor-opt", help="Extractor option KEY=VALUE, repeatable "
                                                                         "(e.g. base_url=http://127.0.0.1:8000)."),
    seed: int = typer.Option(0, "--seed", help="Seed: same inputs and seed write byte-identical files."),
    clip_seconds: float = typer.Option(14.0, "--clip-seconds", min=0.01, help="Clip length, seconds."),
    k: str = typer.Option("4", "--k", help="Clues per sample: N or a range like 3-6."),
    min_gap: float = typer.Option(None, "--min-gap", min=0.0, help="Minimum seconds between chosen clues "
                                                                 "(default: --clip-seconds)."),
    samples_per_video: int = typer.Option(1, "--samples-per-video", min=1, help="Clue selections per video."),
    forms: str = typer.Option("open,mc", "--forms", help="Question forms: open, mc, or both (comma-separated)."),
    num_choices: int = typer.Option(4, "--choices", help="Options per multiple-choice question (2-6)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=1.0, help="Share of videos in val."),
    fps: float = typer.Option(1.0, "--fps", help="Decoded frames per second of video."),
    max_frames: int = typer.Option(1024, "--max-frames", min=1, help="Cap on decoded frames per video."),
    workers: int = typer.Option(None, "--workers", min=0, help="Ray workers (0: in this process)."),
    ray_address: str = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS", help="Ray cluster address."),
    archive: str = typer.Option(None, "--archive", "-a", help="Also write the samples to this archive's "
                                                              "vico_samples table."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Clip videos, caption the clips, extract ordered clues and write LLaVA-style ordering questions.

    Exit status: 0 samples written (videos skipped only for being too short / too few clues),
    3 some video failed (decode, captioner, extractor, worker) or no sample was written,
    2 usage error, 1 infrastructure error (Ray, file system, archive).
    """
    from tasks.vico import VicoOptions, VicoUsageError

    opts = VicoOptions(
        source=source, out=str(out), annotations=str(annotations) if annotations else None, captioner=captioner,
        extractor=extractor, captioner_options=_parse_opts(captioner_opt, "--captioner-opt", as_json),
        extractor_options=_parse_opts(extractor_opt, "--extractor-opt", as_json), seed=seed, clip_seconds=clip_seconds,
        k=k, min_gap_s=min_gap, samples_per_video=samples_per_video,
        forms=tuple(f.strip() for f in forms.split(",") if f.strip()), num_choices=num_choices,
        val_fraction=val_fraction, fps=fps, max_frames=max_frames, workers=workers, ray_address=ray_address,
        archive=archive,
    )
    try:
        opts.validate()
    except VicoUsageError as exc:
        raise fail(str(exc), "usage", EXIT_USAGE, as_json) from None

    from flows.outcome import run_flow
    from flows.synth_vico import synth_vico
    from tasks.fanout import PoolError
    from tasks.ray_runtime import RayUnavailable

    try:
        summary = run_flow(
            synth_vico,
            source=source, out=str(out), annotations=opts.annotations, captioner=captioner, extractor=extractor,
            seed=seed, clip_seconds=clip_seconds, k=k, archive=archive, captioner_options=opts.captioner_options,
            extractor_options=opts.extractor_options, min_gap_s=min_gap, samples_per_video=samples_per_video,
            forms=list(opts.forms), num_choices=num_choices, val_fraction=val_fraction, fps=fps,
            max_frames=max_frames, workers=workers, ray_address=ray_address,
        )
    except VicoUsageError as exc:
        raise fail(str(exc), "usage", EXIT_USAGE, as_json) from None
    except (RayUnavailable, PoolError, OSError) as exc:
        raise fail(str(exc), "infrastructure", EXIT_INFRA, as_json) from None
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
    else:
        sw, v = summary["samples_written"], summary["videos"]
        typer.echo(f"{sw['total']} sample(s) written to {out} (train {sw['train']}, val {sw['val']}) from "
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
    """Add `vico` to the `vxl` app."""
    app.command("vico")(vico)
