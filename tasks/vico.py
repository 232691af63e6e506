"""VICO synthesis over a video library: jobs, per-video work on Ray, outputs (issue 7).

Pure functions first (usable without Ray or Prefect), then the Ray fan-out, then the Prefect tasks
that `flows/synth_vico.py` is made of:

- `VicoOptions`: everything a run needs; `validate()` raises `VicoUsageError` (CLI exit 2).
- `plan_jobs(options)`: discover videos under `source` (`tasks.video.discover`), join the CinePile
  annotations when given (`vico_synth.cinepile`) -> `VideoJob`s + the join report.
- `process_video(job, captioner, extractor, options)`: content digest, decode at `fps` (in a
  killable child process), then `vico_synth.pipeline.synth_video`; a bad file is a skipped
  `VideoResult`, never an exception.
- `run_jobs(jobs, options)`: in this process (`workers=0`) or fanned out over Ray (`tasks.fanout`):
  `workers` actors each build the back ends once; by default one per CPU, or, when the captioner
  or extractor loads a model, one per GPU (one per 2 CPUs without GPUs).
- `write_outputs(results, options, join)`: train/val split, balanced answer positions,
  `OUT/train.json`, `OUT/val.json`, `OUT/summary.json` (canonical bytes), the archive's
  `vico_samples` table when `archive` is given; returns the summary.

Ray workers never run Prefect's engine (ECOSYSTEM.md), only the functions above.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import field_validator

from tasks.options import JobOptions, flag, option
from vico_synth.captioners import CAPTIONERS, make_captioner
from vico_synth.cinepile import JoinResult, join_cinepile, read_annotations
from vico_synth.extractors import EXTRACTORS, make_extractor
from vico_synth.pipeline import (
    FAILURE_KINDS,
    SKIP_DECODE,
    SKIP_WORKER,
    SynthSettings,
    VideoInput,
    VideoResult,
    summarize,
    synth_video,
)
from vico_synth.samples import FORMS, SampleConfig, archive_rows, finalize, parse_k, write_samples_json
from vico_synth.schema import validate_samples

EXIT_OK, EXIT_INFRA, EXIT_USAGE, EXIT_FAILURES = 0, 1, 2, 3


class VicoUsageError(ValueError):
    """Bad arguments (unknown back end, bad k, missing annotations file): CLI exit status 2."""


class VicoOptions(JobOptions):
    """The options of one VICO run: the one options model of the VICO job (issue 15), read by `vxl
    vico` (its flags, through `tasks.options.cli_command`), the `synth-vico` flow (one parameter per
    field, `tasks.options.flow_function`) and `plan_jobs`/`run_jobs`/`write_outputs`. Construction
    checks types (pydantic); `validate()` raises `VicoUsageError` naming the flag for what no run can
    satisfy (and builds, without loading, the back ends)."""

    source: str | list[str] = option(..., argument=True, help="Video folder, file, glob, or .csv/.jsonl/.parquet "
                                     "manifest ('uri' column); a list of them in a flow.")
    out: str = option(..., "--out", "-o", help="Output folder: train.json, val.json (LLaVA-style), summary.json.")
    annotations: str | None = option(None, "--annotations", help="CinePile rows (.parquet/.jsonl), joined by videoID "
                                     "or the yt_clip_link id to local files; only the videos they name are processed.")
    captioner: str = option("videoxl", "--captioner", help="videoxl | hf-vlm | annotations | ground-truth "
                            "(docs/VICO.md).")
    extractor: str = option("heuristic", "--extractor", help="heuristic | hf-llm | openai-compatible.")
    captioner_options: dict[str, Any] | None = option(None, help="Captioner options (e.g. {\"model\": "
                                                      "\"/models/qwen2-vl\"}); CLI: --captioner-opt KEY=VALUE.")
    extractor_options: dict[str, Any] | None = option(None, help="Extractor options (e.g. {\"base_url\": "
                                                      "\"http://127.0.0.1:8000\"}); CLI: --extractor-opt KEY=VALUE.")
    seed: int = option(0, "--seed", help="Seed of every random choice: same inputs and seed write byte-identical "
                       "files.")
    clip_seconds: float = option(14.0, "--clip-seconds", help="Clip length, seconds (VICO: 14).")
    k: str = option("4", "--k", help="Clues per sample: N or a range like 3-6.")
    min_gap_s: float | None = option(None, "--min-gap", help="Minimum seconds between chosen clues "
                                     "(default: --clip-seconds).")
    samples_per_video: int = option(1, "--samples-per-video", help="Clue selections per video (each gives one "
                                    "sample per form).")
    forms: list[str] = option(list(FORMS), "--forms", split=",", help="Question forms: open, mc, or both "
                              "(comma-separated).")
    num_choices: int = option(4, "--choices", help="Options per multiple-choice question (2-6).")
    val_fraction: float = option(0.1, "--val-fraction", help="Share of videos in the validation split (0-1).")
    fps: float = option(1.0, "--fps", help="Decoded frames per second of video (clips get about clip_seconds * fps "
                        "frames).")
    max_frames: int = option(1024, "--max-frames", help="Cap on decoded frames per video (uniform over the video "
                             "when reached).")
    decode_timeout_s: float = option(300.0, "--decode-timeout", help="Kill a decode after this many seconds.")
    workers: int | None = option(None, "--workers", help="Ray workers (default: one per CPU, or one per GPU for "
                                 "model back ends); 0 runs in this process.")
    ray_address: str | None = option(None, "--ray-address", help="Ray cluster (default $RAY_ADDRESS, else a "
                                     "private local Ray).")
    archive: str | None = option(None, "--archive", "-a", help="Also write the samples to this archive's "
                                 "vico_samples table.")

    @field_validator("k", mode="before")
    @classmethod
    def _k_as_text(cls, v):
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # `k: 4` in a deployment

    @classmethod
    def usage_error(cls, message: str) -> VicoUsageError:
        return VicoUsageError(message)

    @property
    def sources(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else [str(s) for s in self.source]

    def settings(self) -> SynthSettings:
        lo, hi = parse_k(self.k)
        gap = self.clip_seconds if self.min_gap_s is None else self.min_gap_s
        return SynthSettings(clip_seconds=float(self.clip_seconds), samples=SampleConfig(
            k_min=lo, k_max=hi, min_gap_s=float(gap), samples_per_video=self.samples_per_video,
            forms=tuple(self.forms), num_choices=self.num_choices, val_fraction=self.val_fraction, seed=self.seed))

    def validate(self) -> None:
        """Raises VicoUsageError naming the bad flag. Builds (but does not load) the back ends."""
        if self.captioner not in CAPTIONERS:
            raise VicoUsageError(f"--captioner must be one of {sorted(CAPTIONERS)}, got {self.captioner!r}")
        if self.extractor not in EXTRACTORS:
            raise VicoUsageError(f"--extractor must be one of {sorted(EXTRACTORS)}, got {self.extractor!r}")
        if self.annotations is not None and not Path(self.annotations).is_file():
            raise VicoUsageError(f"--annotations {self.annotations!r} is not a file")
        if self.captioner == "annotations" and self.annotations is None:
            raise VicoUsageError("--captioner annotations needs --annotations FILE (CinePile rows)")
        if self.workers is not None and self.workers < 0:
            raise VicoUsageError(f"--workers must be >= 0, got {self.workers}")
        for name in ("fps", "decode_timeout_s", "clip_seconds"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise VicoUsageError(f"{flag(VicoOptions, name)} must be a finite number > 0, got {v!r}")
        for name in ("min_gap_s", "val_fraction"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise VicoUsageError(f"{flag(VicoOptions, name)} must be a finite number >= 0, got {v!r}")
        if self.val_fraction > 1:
            raise VicoUsageError(f"--val-fraction must be at most 1, got {self.val_fraction!r}")
        for name in ("max_frames", "samples_per_video"):
            if getattr(self, name) < 1:
                raise VicoUsageError(f"{flag(VicoOptions, name)} must be >= 1, got {getattr(self, name)!r}")
        try:
            self.settings()
            make_captioner(self.captioner, self.captioner_options or {})
            make_extractor(self.extractor, self.extractor_options or {})
        except (ValueError, FileNotFoundError) as exc:
            raise VicoUsageError(str(exc)) from None

    def to_dict(self) -> dict:
        """JSON-able fields (what Prefect tasks and Ray actors are given)."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: dict) -> VicoOptions:
        return cls.model_validate(d)


@dataclass(frozen=True)
class VideoJob:
    """One video to process: local path, path relative to the video folder, annotation (or None)."""

    path: str
    video: str
    annotation: dict | None = None


# ----------------------------------------------------------------------------------------------
# jobs


def _root(sources: list[str], paths: list[Path]) -> Path:
    if len(sources) == 1 and Path(sources[0]).is_dir():
        return Path(os.path.abspath(sources[0]))
    parents = [str(p.parent) for p in paths]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def plan_jobs(options: VicoOptions) -> tuple[list[VideoJob], JoinResult | None]:
    """Videos to process (ordered by relative path) and, with annotations, the join report.

    Raises:
        VicoUsageError: a source that does not exist, an unreadable annotations file.
    """
    from tasks.video import discover

    try:
        found = [s.path for s in discover(options.sources)]
        rows = read_annotations(options.annotations) if options.annotations else None
    except (ValueError, FileNotFoundError) as exc:
        raise VicoUsageError(str(exc)) from None
    root = _root(options.sources, found)
    if rows is None:
        jobs = [VideoJob(str(p), _rel(p, root)) for p in found]
        join = None
    else:
        join = join_cinepile(rows, found)
        jobs = [VideoJob(str(p), _rel(p, root), ann) for p, _, ann in join.matched]
        join.unmatched_videos = [_rel(Path(p), root) for p in join.unmatched_videos]
    return sorted(jobs, key=lambda j: j.video), join


# ----------------------------------------------------------------------------------------------
# one video


def process_video(job: VideoJob, captioner, extractor, options: VicoOptions) -> VideoResult:
    """Digest, decode and synthesise one video. Decode errors become a skipped result."""
    from tasks.video import DecodeError, decode, decode_with_timeout, video_id

    try:
        vid = video_id(job.path)
        kw = dict(fps=options.fps, max_frames=options.max_frames)
        if options.decode_timeout_s:
            dv = decode_with_timeout(job.path, timeout_s=options.decode_timeout_s, **kw)
        else:
            dv = decode(job.path, **kw)
    except DecodeError as exc:
        return VideoResult(video=job.video, video_id=None, path=job.path).skip(
            SKIP_DECODE, f"{exc.kind}: {exc}")
    inp = VideoInput(video_id=vid, video=job.video, path=job.path,
                     frames=dv.frames if captioner.needs_frames else None, timestamps=dv.timestamps,
                     duration_s=float(dv.duration_s), annotation=job.annotation)
    return synth_video(inp, captioner, extractor, options.settings())


def _backends(options: VicoOptions):
    return (make_captioner(options.captioner, options.captioner_options or {}),
            make_extractor(options.extractor, options.extractor_options or {}))


def run_local(jobs: list[VideoJob], options: VicoOptions) -> list[VideoResult]:
    """Every job in this process, in order (back ends built once)."""
    captioner, extractor = _backends(options)
    return [process_video(j, captioner, extractor, options) for j in jobs]


# ----------------------------------------------------------------------------------------------
# Ray fan-out (tasks.fanout)


class VicoWorker:
    """Ray actor body: builds the captioner and extractor once (their models load on first use) and
    processes video after video. Module-level, so Ray workers import it however the flow was loaded."""

    def __init__(self, options: dict):
        self.options = VicoOptions.from_dict(options)
        self.captioner, self.extractor = _backends(self.options)

    def ready(self) -> dict:
        return {"pid": os.getpid()}

    def run(self, job: VideoJob) -> VideoResult:
        return process_video(job, self.captioner, self.extractor, self.options)


def is_heavy(options: VicoOptions) -> bool:
    """True when the captioner or the extractor loads a model (then one actor per GPU, or per 2 CPUs)."""
    return CAPTIONERS[options.captioner].heavy or EXTRACTORS[options.extractor].heavy


def run_on_ray(jobs: list[VideoJob], options: VicoOptions) -> tuple[list[VideoResult], dict]:
    """Fan the jobs out over `VicoWorker` actors (`tasks.fanout`). Returns (results in job order,
    {"workers", "mode", "dashboard_url", "worker_restarts"}).

    A video whose worker dies under it is processed again on the restarted worker; a second death,
    or an exception the back ends raise, gives that video a `worker_failed` skip with the error.

    Raises:
        tasks.ray_runtime.RayUnavailable: Ray cannot be reached or started.
        tasks.fanout.PoolError: no worker could start (a back end cannot be built), or all died.
    """
    from tasks.fanout import ActorPool, FanOut, WorkItem
    from tasks.ray_runtime import ensure_ray

    info = ensure_ray(options.ray_address)
    if not jobs:
        return [], {"workers": 0, "mode": "none", "dashboard_url": info.dashboard_url}
    if is_heavy(options):
        n = options.workers or (info.num_gpus if info.num_gpus else max(1, info.num_cpus // 2))
        resources = {"num_gpus": 1} if info.num_gpus else {"num_cpus": 1}
    else:
        n, resources = options.workers or info.num_cpus, {"num_cpus": 1}
    n = max(1, min(n, len(jobs)))
    pool = ActorPool(VicoWorker, (options.to_dict(),), n=n, resources=resources, max_restarts=2, name="VICO worker")
    results: list[VideoResult | None] = [None] * len(jobs)

    def take(out) -> None:
        i, j = out.item.context, out.item.payload
        results[i] = out.value if out.ok else VideoResult(video=j.video, video_id=None, path=j.path).skip(
            SKIP_WORKER, out.error_line())

    try:
        pool.wait_first_ready()
        fan = FanOut(pool, lambda h, job: h.run.remote(job), max_attempts=2)
        for i, j in enumerate(jobs):
            fan.put(WorkItem(key=j.video, payload=j, context=i))
        fan.run(take)
    finally:
        pool.shutdown()
    return results, {"workers": n, "mode": "actors", "dashboard_url": info.dashboard_url,
                     "worker_restarts": pool.restarts}


def run_jobs(jobs: list[VideoJob], options: VicoOptions) -> tuple[list[VideoResult], dict]:
    """`run_local` when `options.workers == 0`, else `run_on_ray`."""
    if options.workers == 0:
        return run_local(jobs, options), {"workers": 0, "mode": "local", "dashboard_url": None}
    return run_on_ray(jobs, options)


# ----------------------------------------------------------------------------------------------
# outputs


def sample_meta(options: VicoOptions) -> dict:
    """Fields copied into every record's `vico` object."""
    return {"captioner": options.captioner, "extractor": options.extractor,
            "clip_seconds": float(options.clip_seconds), "seed": int(options.seed)}


def write_outputs(results: list[VideoResult], options: VicoOptions, join: dict | None = None) -> dict:
    """Split, render, validate and write the samples; returns the summary (also in summary.json).

    Files (canonical bytes, so the same inputs and seed give identical files): `train.json`,
    `val.json` (LLaVA-style arrays) and `summary.json` in `options.out`. With `options.archive`,
    the samples are upserted into its `vico_samples` table (idempotent on sample id).
    """
    results = sorted(results, key=lambda r: (r.video, r.video_id or ""))
    settings = options.settings()
    drafts = [d for r in results for d in r.drafts]
    splits = finalize(drafts, settings.samples, sample_meta(options))
    for samples in splits.values():
        validate_samples(samples)  # a failure here is a bug in the builder, not bad input
    out = Path(options.out)
    files = {}
    for name, samples in splits.items():
        files[name] = write_samples_json(out / f"{name}.json", samples).name
    archived = 0
    if options.archive:
        from storage import open_archive

        arch = open_archive(options.archive)
        archived = arch.put_vico_samples(archive_rows([s for sp in splits.values() for s in sp]))
    s = settings.samples
    summary = summarize(results, splits, {
        "files": files,
        "archive_rows": archived,
        "annotations": join,
        "settings": {"captioner": options.captioner, "extractor": options.extractor, "seed": options.seed,
                     "clip_seconds": float(options.clip_seconds), "k": [s.k_min, s.k_max], "min_gap_s": s.min_gap_s,
                     "samples_per_video": s.samples_per_video, "forms": list(s.forms),
                     "num_choices": s.num_choices, "val_fraction": s.val_fraction, "fps": options.fps},
    })
    summary["exit_code"] = exit_code(summary)
    import json

    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out / "summary.json")
    return summary


def exit_code(summary: dict) -> int:
    """0: samples written, every skip a content limit; 3: a video failed (decode, back end,
    worker) or no sample at all was written."""
    if summary["samples_written"]["total"] == 0:
        return EXIT_FAILURES
    if any(k in FAILURE_KINDS for k in summary["skipped_by_kind"]):
        return EXIT_FAILURES
    return EXIT_OK


def summary_markdown(summary: dict) -> str:
    """The Prefect artifact: counts, distributions and skipped videos."""
    sw, v = summary["samples_written"], summary["videos"]
    lines = [
        "# VICO synthesis", "",
        "| samples | train | val | videos | with samples | skipped |", "|---:|---:|---:|---:|---:|---:|",
        f"| {sw['total']} | {sw['train']} | {sw['val']} | {v['total']} | {v['with_samples']} | {v['skipped']} |", "",
        f"Captioner `{summary['settings']['captioner']}`, extractor `{summary['settings']['extractor']}`, "
        f"seed {summary['settings']['seed']}, clips of {summary['settings']['clip_seconds']:g} s.", "",
        "Clue counts: " + (", ".join(f"k={k}: {n}" for k, n in summary["clue_counts"].items()) or "none"),
    ]
    for sp, pos in summary["answer_positions"].items():
        lines.append(f"Answer positions ({sp}): " + ", ".join(f"{k}: {n}" for k, n in pos.items()))
    if summary["skipped"]:
        lines += ["", "## Skipped videos", "", "| video | kind | reason |", "|---|---|---|"]
        for s in summary["skipped"][:200]:
            lines.append(f"| {s['video']} | {s['kind']} | {(s['reason'] or '').replace('|', '/')[:300]} |")
    ann = summary.get("annotations")
    if ann:
        lines += ["", f"Annotations: {ann['matched_videos']} video(s) matched, {len(ann['missing_files'])} key(s) "
                      f"without a local file, {len(ann['bad_rows'])} row(s) without a key."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Prefect tasks (the flow in flows/synth_vico.py is made of these; one task per stage, not per video)


def _make_prefect_tasks():
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    @task(name="plan-vico-jobs", cache_policy=NO_CACHE)
    def plan_vico_jobs(options: dict) -> tuple[list[dict], dict | None]:
        """Discover videos and join annotations."""
        jobs, join = plan_jobs(VicoOptions.from_dict(options))
        return [dataclasses.asdict(j) for j in jobs], (join.report() if join else None)

    @task(name="synth-vico-videos", cache_policy=NO_CACHE)
    def synth_vico_videos(jobs: list[dict], options: dict) -> tuple[list[VideoResult], dict]:
        """Per-video synthesis fanned out over Ray (or in-process with workers=0)."""
        return run_jobs([VideoJob(**j) for j in jobs], VicoOptions.from_dict(options))

    @task(name="write-vico-samples", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
    def write_vico_samples(results: list[VideoResult], options: dict, join: dict | None) -> dict:
        """train.json / val.json / summary.json, and the archive's vico_samples rows (retried: the
        writes are idempotent)."""
        return write_outputs(results, VicoOptions.from_dict(options), join)

    @task(name="vico-summary", cache_policy=NO_CACHE)
    def publish_summary(summary: dict) -> str:
        """A markdown artifact (key `synth-vico-summary`)."""
        from prefect.artifacts import create_markdown_artifact

        return str(create_markdown_artifact(key="synth-vico-summary", markdown=summary_markdown(summary),
                                            description="vxl synth_vico run summary"))

    return plan_vico_jobs, synth_vico_videos, write_vico_samples, publish_summary


@functools.cache
def prefect_tasks():
    """(plan_vico_jobs, synth_vico_videos, write_vico_samples, publish_summary), built once."""
    return _make_prefect_tasks()
