"""Prefect flow `synth_vico`: VICO (Visual Clue Order) training samples from a video library (issue 7).

Thin: four tasks from `tasks/vico.py` (plan jobs, the per-video Ray fan-out, write outputs, summary
artifact). The flow runs in the calling process; the Ray workers it drives never run Prefect.

    from flows.synth_vico import synth_vico
    synth_vico("videos/", out="vico_out", captioner="ground-truth", extractor="heuristic", clip_seconds=3)
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow  # noqa: E402

from flows.deploy import reject_templates  # noqa: E402
from flows.outcome import final_state  # noqa: E402
from tasks.vico import FAILURE_KINDS, VicoOptions, prefect_tasks  # noqa: E402


@flow(name="synth-vico", log_prints=False, validate_parameters=True)
def synth_vico(
    source: str,
    out: str,
    annotations: str | None = None,
    captioner: str = "videoxl",
    extractor: str = "heuristic",
    seed: int = 0,
    clip_seconds: float = 14.0,
    k: str = "4",
    archive: str | None = None,
    captioner_options: dict | None = None,
    extractor_options: dict | None = None,
    min_gap_s: float | None = None,
    samples_per_video: int = 1,
    forms: list[str] | None = None,
    num_choices: int = 4,
    val_fraction: float = 0.1,
    fps: float = 1.0,
    max_frames: int = 1024,
    decode_timeout_s: float = 300.0,
    workers: int | None = None,
    ray_address: str | None = None,
) -> dict:
    """Synthesise VICO samples from the videos of `source` into `out`.

    Args:
        source: video folder, file, glob, or .csv/.jsonl/.parquet manifest with a `uri` column.
        out: output folder: train.json, val.json (LLaVA-style), summary.json.
        annotations: CinePile-format .parquet/.jsonl; joined to the videos by videoID / yt_clip_link id.
        captioner: `videoxl`, `hf-vlm`, `annotations` or `ground-truth` (docs/VICO.md).
        extractor: `heuristic`, `hf-llm` or `openai-compatible`.
        seed: seed of every random choice (same inputs + seed -> byte-identical files).
        clip_seconds: clip length in seconds (VICO: 14).
        k: clues per sample, "4" or a range "3-6".
        archive: archive URI whose `vico_samples` table receives the samples.
        captioner_options, extractor_options: back-end options (e.g. {"model": "/models/qwen2-vl"}).
        min_gap_s: minimum time between chosen clues (default: clip_seconds).
        samples_per_video: clue selections per video.
        forms: ["open", "mc"] by default.
        num_choices: options per multiple-choice question.
        val_fraction: share of videos in the validation split.
        fps, max_frames: frame sampling of the decoder.
        decode_timeout_s: kill a decode after this many seconds.
        workers: Ray workers (0: in this process).
        ray_address: Ray cluster (default `RAY_ADDRESS`, else a local Ray).

    Returns:
        (as the final state's data: `Completed`, "Completed with failures" when a video failed, or
        `Failed` when no sample was written, `flows.outcome.final_state`)
        The summary (samples written per split, skipped videos and why, clue-count and
        answer-position distributions, `exit_code`).
    """
    reject_templates("synth-vico", source=source, out=out, annotations=annotations, archive=archive,
                     ray_address=ray_address)
    plan_vico_jobs, synth_vico_videos, write_vico_samples, publish_summary = prefect_tasks()
    opts = VicoOptions(
        source=source, out=out, annotations=annotations, captioner=captioner, extractor=extractor,
        captioner_options=dict(captioner_options or {}), extractor_options=dict(extractor_options or {}),
        seed=seed, clip_seconds=clip_seconds, k=str(k), min_gap_s=min_gap_s, samples_per_video=samples_per_video,
        forms=tuple(forms or ("open", "mc")), num_choices=num_choices, val_fraction=val_fraction, fps=fps,
        max_frames=max_frames, decode_timeout_s=decode_timeout_s, workers=workers, ray_address=ray_address,
        archive=archive,
    )
    opts.validate()
    options = opts.to_dict()
    jobs, join = plan_vico_jobs(options)
    results, run_info = synth_vico_videos(jobs, options)
    summary = write_vico_samples(results, options, join)
    publish_summary(summary)
    v = summary["videos"]
    failed = sum(n for k, n in summary["skipped_by_kind"].items() if k in FAILURE_KINDS)
    if summary["samples_written"]["total"] == 0 and not failed:
        failed = max(1, v["total"])  # nothing written at all is a failed run, whatever the reason
    return final_state({**summary, "run": run_info}, succeeded=v["with_samples"], failed=failed, what="videos")
