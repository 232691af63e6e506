"""Prefect flow `index_corpus`: index a video library into a VST-KV archive (issue 4).

Thin: four tasks from `tasks/index.py` (discover, open archive, the Ray pipeline, summary artifact).
The flow runs in the calling process (Prefect's ephemeral mode by default, or a Prefect server via
`PREFECT_API_URL` / a deployment in `prefect.yaml`); the Ray workers it drives never run Prefect.

    from flows.index_corpus import index_corpus
    index_corpus(["videos/"], archive="archive/", model="tiny", max_frames=16)
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow  # noqa: E402

from flows.deploy import reject_templates  # noqa: E402
from flows.outcome import final_state  # noqa: E402
from tasks.index import make_options, options_to_dict, prefect_tasks  # noqa: E402


@flow(name="index-corpus", log_prints=False, validate_parameters=True)
def index_corpus(
    sources: list[str],
    archive: str,
    model: str = "tiny",
    fps: float = 1.0,
    max_frames: int = 128,
    frames: int | None = None,
    chunking: str = "dynamic",
    ratio: int = 8,
    target_ratio: int = 8,
    clip_model: str | None = None,
    clip_weights: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    force: bool = False,
    retry_failed: bool = False,
    decode_timeout_s: float = 120.0,
    decoder: str = "auto",
    accept_numerics_change: bool = False,
    kv_codec: str = "raw",
) -> dict:
    """Index every video of `sources` (folders, globs, .csv/.jsonl/.parquet manifests with a `uri`
    column) into the archive at `archive` (folder or object-store URI).

    Args:
        sources: what to index.
        archive: archive URI.
        model: "tiny" or a local Video-XL checkpoint folder (on every Ray worker).
        fps: sampled frames per second of video; `max_frames` caps it (uniform when capped).
        max_frames: at most this many frames per video.
        frames: exactly this many frames, uniform over the whole video (overrides fps).
        chunking: "dynamic" (CLIP-driven windows and ratios) or "fixed" (one ratio).
        ratio: fixed chunking's ratio.
        target_ratio: dynamic chunking's average ratio.
        clip_model: open_clip config (default "vxl-tiny-clip" for the tiny model, else "ViT-B-32").
        clip_weights: local CLIP state-dict file (None: random weights).
        workers: encode actors (default: one per GPU; half the CPUs without GPUs).
        ray_address: Ray cluster (default `RAY_ADDRESS`, else a local Ray).
        force: re-index videos already in the archive for this model.
        retry_failed: retry videos that failed before.
        decode_timeout_s: kill a decode after this many seconds.
        decoder: video decoder: "auto" (torchcodec where installed, else pyav), "pyav", "decord" or
            "torchcodec"; all frame-exact (each falls back to pyav where it is not).
        accept_numerics_change: accept (and record) a worker whose numerics probe differs from the
            archive's, instead of stopping with `NumericsChanged` (docs/OPERATIONS.md, "Numerics canary").
        kv_codec: how memories are stored: "raw" (bit-exact), "int8", "int4" (`storage.kvcodec`).

    Returns:
        (as the final state's data; the state is `Completed`, "Completed with failures" or `Failed`
        when every video of the run failed, `flows.outcome.final_state`)
        `IndexReport` as a dict (`indexed`, `skipped`, `failed`, `frames`, `kv_bytes`, `seconds`, ...).
    """
    reject_templates("index-corpus", sources=sources, archive=archive, model=model, clip_weights=clip_weights,
                     clip_model=clip_model, ray_address=ray_address)
    discover_videos, check_archive, index_videos, publish_summary = prefect_tasks()
    opts = make_options(model, chunking=chunking, ratio=ratio, target_ratio=target_ratio, clip_model=clip_model,
                        clip_weights=clip_weights, fps=fps, max_frames=max_frames, frames=frames, workers=workers,
                        ray_address=ray_address, force=force, retry_failed=retry_failed,
                        decode_timeout_s=decode_timeout_s, decoder=decoder,
                        accept_numerics_change=accept_numerics_change, kv_codec=kv_codec)
    opts.validate()
    found = discover_videos(sources)
    check_archive(archive)
    report = index_videos(found["videos"], archive, options_to_dict(opts), found["ignored"])
    publish_summary(report)
    done = len(report["indexed"]) + sum(1 for k in report["skipped"] if k["reason"] != "failed_before")
    return final_state(report, succeeded=done, failed=len(report["failed"]), what="videos")
