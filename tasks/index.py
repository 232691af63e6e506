"""Indexing a video library: discover -> digest -> skip -> decode (Ray tasks) -> plan + encode (Ray
actors) -> archive (driver), one video at a time, resumable.

`run_index(sources, archive, options) -> IndexReport` is the whole pipeline as a plain function
(no Prefect engine needed: tests and benchmarks call it directly); `flows/index_corpus.py` calls it
through the Prefect tasks at the bottom of this file. Design and failure handling:
docs/ARCHITECTURE.md ("Index pipeline").

Errors: `UsageError` (bad options or sources: CLI exit status 2), `IndexInfraError` and
`tasks.ray_runtime.RayUnavailable` (archive not writable, Ray unreachable, every worker dead: exit
status 1), `model.environment.UpstreamDriftError` (a worker's transformers broke an invariant: exit
status 1, nothing stored), `tasks.numerics.NumericsChanged` (a worker's probe differs from the
archive's: exit status 4, nothing stored). A bad video is never an exception: it is a `failed` row
of the report (exit status 3).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.options import JobOptions, option
from tasks.workers import PlanSpec

TINY_CLIP = "vxl-tiny-clip"


class UsageError(ValueError):
    """Bad options or sources (CLI exit status 2)."""


class IndexInfraError(RuntimeError):
    """The run could not continue: archive not writable, no encode worker alive (CLI exit status 1)."""


@dataclass(frozen=True)
class IndexOptions:
    """Everything that controls a run except the sources and the archive.

    Attributes:
        model: "tiny" or a local Video-XL checkpoint folder.
        fps: sampled frames per second of video (rate mode).
        max_frames: cap on sampled frames per video (uniform over the whole video when capped).
        frames: if set, exactly this many frames uniformly over the whole video (overrides fps).
        plan: chunk planning (`PlanSpec`).
        workers: encode actors; None: one per GPU, or `default_cpu_workers()` without GPUs.
        ray_address: Ray cluster address; None: `RAY_ADDRESS`, else a local Ray.
        force: re-index videos already indexed (or failed) for this model fingerprint.
        retry_failed: retry videos whose earlier indexing failed.
        decode_timeout_s: seconds a decode may run (from its start in its Ray worker process) before
            that process is killed.
        max_attempts: encode attempts per video when workers die (then `worker_crashed`).
        in_flight_per_worker: encode calls queued per actor (2: the next video's frames arrive
            while the current one encodes).
        decoder: video decoder back end: "auto" (torchcodec where installed, else pyav) or a name from
            `tasks.decoders.DECODERS`; all are frame-exact (fallback to pyav).
        accept_numerics_change: a worker whose numerics probe differs from the archive's is accepted
            and the change recorded (`tasks.numerics`), instead of stopping the run (exit status 4).
        kv_codec: how memories written by this run are stored (`storage.kvcodec`: 'raw', 'int8',
            'int4', ...). A storage property: not in `settings()`, so a video already indexed with
            another codec is skipped, not re-indexed (`vxl archive recode` changes the codec).
    """

    model: str = "tiny"
    fps: float = 1.0
    max_frames: int = 128
    frames: int | None = None
    plan: PlanSpec = field(default_factory=PlanSpec)
    workers: int | None = None
    ray_address: str | None = None
    force: bool = False
    retry_failed: bool = False
    decode_timeout_s: float = 120.0
    max_attempts: int = 3
    in_flight_per_worker: int = 2
    decoder: str = "auto"
    accept_numerics_change: bool = False
    kv_codec: str = "raw"
    lease_ttl_s: float = 600.0
    """How long a video's lease (`storage.Archive.acquire_lease`) lasts without renewal: a run renews
    its leases every third of it; a killed run's leases expire after it."""

    def settings(self) -> dict:
        """The options that change a video's memory besides the model: sampling and chunk planning.

        Stored in the plan's `params["index_settings"]`; a video indexed with other settings is
        re-indexed (DESIGN.md: a memory belongs to a model fingerprint *and* its plan parameters).
        """
        spec = self.plan
        out = {"fps": None if self.frames else self.fps, "max_frames": None if self.frames else self.max_frames,
               "frames": self.frames, "chunking": spec.chunking,
               # frames chosen by presentation time, frame-exact (tasks.decoders); memories from the
               # earlier index-based decord sampling (no "sampling" key) are indexed again
               "sampling": "pts"}
        if spec.chunking == "fixed":
            out["ratio"] = spec.ratio
        else:
            out.update(target_ratio=spec.target_ratio, ratios=list(spec.ratios), alpha=spec.alpha,
                       clip_model=spec.clip_model, clip_weights=spec.clip_weights)
        return out

    def validate(self) -> None:
        """Raises UsageError naming the bad option and the fix."""
        if not (isinstance(self.fps, int | float) and math.isfinite(self.fps) and self.fps > 0):
            raise UsageError(f"fps (--fps) must be a finite number > 0, got {self.fps!r}")
        if self.max_frames < 1:
            raise UsageError(f"--max-frames must be >= 1, got {self.max_frames}")
        if self.frames is not None and self.frames < 1:
            raise UsageError(f"--frames must be >= 1, got {self.frames}")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {self.workers}")
        from tasks.decoders import CHOICES

        if self.decoder not in CHOICES:
            raise UsageError(f"--decoder must be one of {list(CHOICES)}, got {self.decoder!r}")
        from storage.kvcodec import KV_CODECS

        if self.kv_codec not in KV_CODECS:
            raise UsageError(f"--kv-codec must be one of {list(KV_CODECS)}, got {self.kv_codec!r}")
        if not (isinstance(self.decode_timeout_s, int | float) and math.isfinite(self.decode_timeout_s)
                and self.decode_timeout_s > 0):
            raise UsageError(f"decode_timeout_s (--decode-timeout) must be a finite number of seconds > 0, "
                             f"got {self.decode_timeout_s!r}")
        from model.video_xl import BUILTIN_MODELS, is_model_name

        if not is_model_name(self.model):
            raise UsageError(f"--model {self.model!r} is neither one of {list(BUILTIN_MODELS)} nor a Video-XL "
                             "checkpoint folder")
        try:
            self.plan.validate()
        except ValueError as exc:
            raise UsageError(str(exc)) from None


def make_options(model: str = "tiny", *, chunking: str = "dynamic", ratio: int = 8, target_ratio: int = 8,
                 clip_model: str | None = None, clip_weights: str | None = None, **kw) -> IndexOptions:
    """`IndexOptions` with the CLI's defaults: dynamic chunking; CLIP `vxl-tiny-clip` (random weights)
    for the built-in models (`tiny`, `toy`), `ViT-B-32` otherwise."""
    from model.video_xl import BUILTIN_MODELS

    if clip_model is None:
        clip_model = TINY_CLIP if model in BUILTIN_MODELS else "ViT-B-32"
    spec = PlanSpec(chunking=chunking, ratio=ratio, target_ratio=target_ratio, clip_model=clip_model,
                    clip_weights=clip_weights)
    return IndexOptions(model=model, plan=spec, **kw)


class IndexJobOptions(JobOptions):
    """The options of one index job: the one options model of `vxl index`, the `index-corpus` flow
    (one parameter per field, `tasks.options.flow_function`) and `index_job` (issue 15). It is the
    user's view; `engine()` turns it into the pipeline's `IndexOptions` (with its `PlanSpec`).
    Construction checks types (pydantic); `validate()` raises `UsageError` naming the flag."""

    sources: list[str] = option(..., argument=True, help="Folders (recursive), globs, video files, or "
                                ".csv/.jsonl/.parquet manifests with a 'uri' column.")
    archive: str | None = option(None, "--archive", "-a", help="Archive URI (folder or s3://...). "
                                 "Default: $VXL_ARCHIVE.")
    model: str = option("tiny", "--model", help="'tiny', 'toy' (trained, shipped) or a local Video-XL checkpoint "
                        "folder (present on every Ray worker).")
    fps: float = option(1.0, "--fps", help="Sampled frames per second of video.")
    max_frames: int = option(128, "--max-frames", help="At most this many frames per video: longer videos are "
                             "sampled uniformly (reported per video; 128 at 1 fps covers 2 min 8 s).")
    frames: int | None = option(None, "--frames", help="Exactly N frames, uniform over the whole video "
                                "(overrides --fps).")
    chunking: str = option("dynamic", "--chunking", help="'dynamic' (CLIP-driven windows and ratios) or 'fixed' "
                           "(Video-XL's demo: one --ratio).")
    ratio: int = option(8, "--ratio", help="fixed chunking: visual tokens per VST.")
    target_ratio: int = option(8, "--target-ratio", help="dynamic chunking: average ratio (VST budget).")
    clip_model: str | None = option(None, "--clip-model", help="dynamic: open_clip model (default 'vxl-tiny-clip' "
                                    "with the built-in models, else 'ViT-B-32').")
    clip_weights: str | None = option(None, "--clip-weights", help="dynamic: local CLIP state-dict file "
                                      "(default: random weights).")
    workers: int | None = option(None, "--workers", help="Encode workers (default: one per GPU; without GPUs half "
                                 "the CPUs).")
    ray_address: str | None = option(None, "--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, "
                                     "else a private local Ray).")
    force: bool = option(False, "--force", help="Re-index videos already in the archive for this model.")
    retry_failed: bool = option(False, "--retry-failed", help="Retry videos whose indexing failed before.")
    decode_timeout_s: float = option(120.0, "--decode-timeout", help="Kill a video's decode S seconds after it started.")
    decoder: str = option("auto", "--decoder", help="Video decoder: 'auto' (torchcodec where installed, else "
                          "pyav), 'pyav', 'decord' or 'torchcodec'; each falls back to pyav where it is not "
                          "frame-exact.")
    accept_numerics_change: bool = option(
        False, "--accept-numerics-change", help="Accept (and record in the archive) a numerics change: this "
        "environment's probe differs from the one the archive's memories were computed with.")
    kv_codec: str = option("raw", "--kv-codec", help="How the memories are stored: 'raw' (bit-exact), 'int8' "
                           "(about 0.52x the bytes) or 'int4' (about 0.27x), or their '-zstd' variants "
                           "(docs/ARCHIVE_FORMAT.md). Not a setting change: videos already indexed are skipped; "
                           "`vxl archive recode` converts them.")

    @classmethod
    def usage_error(cls, message: str) -> UsageError:
        return UsageError(message)

    @property
    def archive_uri(self) -> str:
        """`archive`, else `$VXL_ARCHIVE`.

        Raises:
            UsageError: neither is set.
        """
        uri = self.archive or os.environ.get("VXL_ARCHIVE")
        if not uri:
            raise UsageError("--archive is required (or set VXL_ARCHIVE), e.g. --archive ./archive")
        return uri

    def engine(self) -> IndexOptions:
        """The pipeline's `IndexOptions` for these options (`make_options`: the CLIP model's default)."""
        kw = self.model_dump(exclude={"sources", "archive", "model"})
        return make_options(self.model, **kw)

    def validate(self) -> None:
        """Raise UsageError for bad settings (`IndexOptions.validate`), no sources, or no archive."""
        if not self.sources:
            raise UsageError("give at least one source (a folder, glob, video file or manifest)")
        self.archive_uri  # noqa: B018 - raises when neither --archive nor $VXL_ARCHIVE is set
        self.engine().validate()


def index_job(options: IndexJobOptions, *, progress: ProgressFn | None = None, ignored: list[dict] | None = None,
              reuse_workers: bool = False) -> IndexReport:
    """`run_index(options.sources, options.archive_uri, options.engine(), ...)`: the job as the CLI
    and the flow describe it. Raises what `run_index` raises."""
    return run_index(options.sources, options.archive_uri, options.engine(), progress=progress, ignored=ignored,
                     reuse_workers=reuse_workers)


def default_cpu_workers(num_cpus: int) -> int:
    """Encode actors on a machine without GPUs: half the CPUs (the rest decode), at least 1."""
    return max(1, num_cpus // 2)


@dataclass
class IndexReport:
    """Outcome of a run. `to_json()` is what `vxl index --json` prints.

    Attributes:
        indexed: {"video_id", "source_uri", "frames", "windows", "kv_bytes", "kv_raw_bytes",
            "kv_codec"} per video written (kv_bytes as stored, kv_raw_bytes unencoded).
        skipped: {"video_id", "source_uri", "reason"}; reason "indexed" (already in the archive for
            this fingerprint), "failed_before" (failed earlier; `--retry-failed`), "duplicate"
            (same content as another source of this run).
        failed: {"source_uri", "video_id", "error_kind", "error"}; video_id None when the file could
            not be read at all (then nothing is stored in the archive).
        frames: sampled frames of the indexed videos.
        kv_bytes: K/V bytes written, as stored (encoded by the run's `kv_codec`).
        kv_raw_bytes: the same memories' raw (unencoded) K/V bytes.
        seconds: wall time of the run.
    """

    indexed: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    frames: int = 0
    kv_bytes: int = 0
    kv_raw_bytes: int = 0
    seconds: float = 0.0
    total: int = 0
    model: str = ""
    fingerprint: str | None = None
    workers: int = 0
    dashboard_url: str | None = None
    ray: str | None = None
    """Which Ray ran the work (`RayInfo.describe()`: a private local instance or a cluster's address)."""
    stage_seconds: dict = field(default_factory=lambda: {"decode": 0.0, "plan": 0.0, "encode": 0.0, "write": 0.0})
    worker_restarts: int = 0
    numerics: list[dict] = field(default_factory=list)
    """one `tasks.numerics.check_probe` result per worker start: {"pid", "status", "comparison", "change"}."""
    ignored: dict = field(default_factory=dict)
    """files under the sources that are not taken as videos: {reason: {"count", "examples"}}."""

    @property
    def exit_code(self) -> int:
        """0: every video indexed or skipped; 3: some failed."""
        return 3 if self.failed else 0

    def failed_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.failed:
            out[f["error_kind"]] = out.get(f["error_kind"], 0) + 1
        return dict(sorted(out.items()))

    def to_json(self) -> dict:
        return {"indexed": self.indexed, "skipped": self.skipped, "failed": self.failed, "frames": self.frames,
                "kv_bytes": self.kv_bytes, "kv_raw_bytes": self.kv_raw_bytes,
                "seconds": round(self.seconds, 3), "numerics": self.numerics,
                "ignored": self.ignored, "ray": self.ray}

    def summary(self) -> dict:
        """Counts and totals (the Prefect artifact, the CLI's last line)."""
        return {"total": self.total, "indexed": len(self.indexed), "skipped": len(self.skipped),
                "failed": len(self.failed), "failed_by_kind": self.failed_by_kind(), "frames": self.frames,
                "ignored": sum(v["count"] for v in self.ignored.values()),
                "kv_bytes": self.kv_bytes, "kv_raw_bytes": self.kv_raw_bytes, "seconds": round(self.seconds, 3),
                "frames_per_s": round(self.frames / self.seconds, 3) if self.seconds > 0 else 0.0,
                "model": self.model, "fingerprint": self.fingerprint, "workers": self.workers,
                "worker_restarts": self.worker_restarts,
                "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()}}

    def markdown(self) -> str:
        s = self.summary()
        lines = [
            "# Index run",
            "",
            "| indexed | skipped | failed | frames | KV bytes | seconds | frames/s |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {s['indexed']} | {s['skipped']} | {s['failed']} | {s['frames']} | {s['kv_bytes']} | "
            f"{s['seconds']} | {s['frames_per_s']} |",
            "",
            f"Model `{self.model}` (fingerprint `{(self.fingerprint or '-')[:16]}`), {self.workers} encode worker(s), "
            f"{self.worker_restarts} worker restart(s).",
        ]
        capped = [v for v in self.indexed if v.get("frame_cap")]
        if capped:
            worst = max(capped, key=lambda v: v["frame_cap"]["seconds_per_frame"])
            lines += ["", f"{len(capped)} video(s) were longer than max_frames allows at the run's fps and were "
                      f"sampled uniformly (e.g. `{worst['source_uri']}`: {worst['frame_cap']['kept']} of "
                      f"{worst['frame_cap']['wanted']} frames, one every {worst['frame_cap']['seconds_per_frame']} s)."]
        if self.failed:
            lines += ["", "## Failed by reason", "", "| error_kind | videos |", "|---|---:|"]
            lines += [f"| {k} | {n} |" for k, n in s["failed_by_kind"].items()]
            lines += ["", "| source | error_kind | error |", "|---|---|---|"]
            for f in self.failed[:200]:
                msg = (f["error"] or "").replace("|", "\\|").replace("\n", " ")[:300]
                lines.append(f"| {f['source_uri']} | {f['error_kind']} | {msg} |")
        if self.ignored:
            lines += ["", "Ignored under the sources: " + ", ".join(
                f"{r['count']} {reason}" for reason, r in self.ignored.items())]
        if self.skipped:
            reasons: dict[str, int] = {}
            for k in self.skipped:
                reasons[k["reason"]] = reasons.get(k["reason"], 0) + 1
            lines += ["", "Skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))]
        return "\n".join(lines) + "\n"


@dataclass
class Progress:
    """Snapshot passed to the progress callback after every event (and about once a second)."""

    total: int
    indexed: int
    skipped: int
    failed: int
    frames: int
    in_flight: int
    elapsed_s: float
    event: str = ""
    """"started", "indexed", "failed", "skipped", "worker_died", "tick", "done"."""
    video: str | None = None
    worker_pid: int | None = None
    dashboard_url: str | None = None
    ray: str | None = None
    encoding: list[dict] | None = None
    """Videos being encoded now: {"video", "windows_done", "windows_total", "frames_done",
    "frames_total", "frames_per_s", "eta_s"} (polled from the encode workers every 2 s)."""

    @property
    def done(self) -> int:
        return self.indexed + self.skipped + self.failed


ProgressFn = Callable[[Progress], None]

# A process-wide progress sink (the CLI's live display) for runs started through the Prefect flow,
# whose parameters must stay JSON-serialisable. `run_index(progress=...)` takes precedence.
_PROGRESS_SINK: ProgressFn | None = None


def set_progress_sink(fn: ProgressFn | None) -> None:
    global _PROGRESS_SINK
    _PROGRESS_SINK = fn


# ----------------------------------------------------------------------------------------------
# Encode actor pool (`tasks.fanout.ActorPool` of `EncodeWorker`s)


_POOLS: dict[tuple, Any] = {}  # key -> tasks.fanout.ActorPool


def shutdown_workers() -> None:
    """Kill encode actors kept alive by `run_index(reuse_workers=True)`."""
    for pool in _POOLS.values():
        pool.shutdown()
    _POOLS.clear()


def _get_pool(options: IndexOptions, num_gpus: int, num_cpus: int, reuse: bool):
    """The `ActorPool` of `EncodeWorker`s for `options` (`num_gpus=1` each with GPUs, else `num_cpus=1`),
    kept between runs when `reuse`."""
    from tasks.fanout import ActorPool
    from tasks.workers import encode_worker_class

    gpus = num_gpus > 0
    n = options.workers or (num_gpus if gpus else default_cpu_workers(num_cpus))
    key = (options.model, options.plan, n, gpus)
    if reuse and key in _POOLS and _POOLS[key].alive():
        return _POOLS[key]
    shutdown_workers()  # one kept pool at most: an idle pool would hold CPUs/GPUs the new one needs
    pool = ActorPool(encode_worker_class(), (options.model, options.plan, Path(options.model).name), n=n,
                     resources={"num_cpus": 1, **({"num_gpus": 1} if gpus else {})}, name="encode worker")
    if reuse:
        _POOLS[key] = pool
    return pool


# ----------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class _Job:
    source_uri: str
    path: str
    video_id: str


DECODE_START_TIMEOUT_S = 300.0
"""Seconds a decode task may wait for a Ray worker process before it is reported (`timeout`): the
`--decode-timeout` clock starts only when the task runs (`tasks.workers.decode_stream`)."""


@dataclass
class _Decoding:
    """A decode in flight: its streaming generator's next value is `stage` ("started", "meta" or
    "frames"); `since` is when the current clock started (submission, then the task's start)."""

    job: _Job
    since: float
    stage: str = "started"
    meta: dict | None = None


def _indexer_version() -> str:
    try:
        from importlib.metadata import version

        return f"vxl {version('vxl')}"
    except Exception:  # noqa: BLE001 - not installed as a package
        return "vxl"


def _discover(sources, ignored: list[dict] | None = None) -> list:
    """Sources (strings: folders, globs, manifests, files) -> `tasks.video.Source`s; files found and
    not taken are appended to `ignored` ({"path", "reason"})."""
    from tasks.video import Source, discover

    if all(isinstance(s, Source) for s in sources):
        return list(sources)
    try:
        return discover([str(s) for s in sources], ignored=ignored)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def open_archive_checked(archive):
    """`storage.open_archive(uri)` with failures turned into `IndexInfraError` (not writable, wrong
    format version, unreachable object store). Passes an already open archive through."""
    if not isinstance(archive, str | os.PathLike):
        return archive
    from storage import ArchiveError, open_archive

    try:
        return open_archive(archive)
    except (ArchiveError, OSError, RuntimeError, ValueError) as exc:
        raise IndexInfraError(
            f"cannot open the archive {os.fspath(archive)!r}: {exc}; check that the folder is writable "
            "or the object-store URI and credentials are right"
        ) from exc


def run_index(
    sources: Sequence,
    archive,
    options: IndexOptions | None = None,
    *,
    progress: ProgressFn | None = None,
    reuse_workers: bool = False,
    ignored: list[dict] | None = None,
) -> IndexReport:
    """Index every video of `sources` into `archive`; returns the report. See the module docstring.

    Args:
        sources: folders, globs, manifests, files (strings), or `tasks.video.Source`s already discovered.
        archive: an archive URI or an open `storage.Archive`.
        options: `IndexOptions` (defaults: tiny model, 1 fps, at most 128 frames, dynamic chunking).
        progress: called with a `Progress` after every event; default: the sink set by
            `set_progress_sink` (the CLI's live display), else nothing.
        reuse_workers: keep the encode actors (and a Ray started here) alive for the next run in this
            process (tests); `shutdown_workers()` releases them.
        ignored: files the discovery of `sources` did not take ({"path", "reason"}), when `sources`
            were discovered by the caller; otherwise collected here. Reported as `IndexReport.ignored`.

    Raises:
        UsageError: bad options, or sources that do not exist.
        IndexInfraError: archive not writable, no worker could load the model, every worker died.
        RayUnavailable: Ray could not be reached or started.
    """
    from tasks.ray_runtime import ensure_ray, shutdown_if_started

    options = options or make_options()
    options.validate()
    t_start = time.perf_counter()
    from tasks.video import ignored_summary

    ignored = [] if ignored is None else list(ignored)
    srcs = _discover(sources, ignored)
    arch = open_archive_checked(archive)
    info = ensure_ray(options.ray_address)
    report = IndexReport(total=len(srcs), model=options.model, dashboard_url=info.dashboard_url,
                         ray=info.describe(), ignored=ignored_summary(ignored))
    emit = progress or _PROGRESS_SINK or (lambda p: None)
    pool = None
    try:
        pool = _get_pool(options, info.num_gpus, info.num_cpus, reuse_workers)
        report.workers = len(pool.slots)
        run = _Run(srcs, arch, options, pool, report, emit, t_start)
        try:
            run.run()
        finally:
            run.release_all_leases()
    finally:
        if pool is not None and not reuse_workers:
            pool.shutdown()
        if not reuse_workers:
            shutdown_if_started(info)
    report.seconds = time.perf_counter() - t_start
    emit(_snapshot(report, 0, t_start, "done"))
    return report


def _snapshot(report: IndexReport, in_flight: int, t0: float, event: str, video: str | None = None,
              pid: int | None = None, encoding: list[dict] | None = None) -> Progress:
    return Progress(total=report.total, indexed=len(report.indexed), skipped=len(report.skipped),
                    failed=len(report.failed), frames=report.frames, in_flight=in_flight,
                    elapsed_s=time.perf_counter() - t0, event=event, video=video, worker_pid=pid,
                    dashboard_url=report.dashboard_url, ray=report.ray, encoding=encoding)


def encode_progress(p: dict) -> dict:
    """A worker's `EncodeWorker.progress()` as shown: frames/s so far inside the video and its ETA."""
    done, total, el = p.get("frames_done") or 0, p.get("frames_total") or 0, p.get("elapsed_s") or 0.0
    rate = done / el if el > 0 and done else 0.0
    return {"video": p.get("path"), "windows_done": p.get("windows_done") or 0, "windows_total": p.get("windows_total"),
            "frames_done": done, "frames_total": total, "frames_per_s": round(rate, 2),
            "eta_s": round((total - done) / rate, 1) if rate > 0 else None}


class _Run:
    """The driver loop of one run (state machine over Ray object refs, `ray.wait`)."""

    def __init__(self, srcs, arch, options: IndexOptions, pool, report: IndexReport, emit, t0):
        self.srcs, self.arch, self.opt, self.pool, self.report, self.emit, self.t0 = (
            srcs, arch, options, pool, report, emit, t0)
        self.model_tag = Path(options.model).name
        self.version = _indexer_version()
        import socket
        import uuid

        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        """this run's name in the archive's `leases` table."""
        self.leases: set[str] = set()
        self._leases_renewed = time.monotonic()
        self._progress_polled = 0.0
        self.encoding_now: list[dict] | None = None
        self.fp: str | None = None
        self.fan = None  # tasks.fanout.FanOut: the encode stage, once the pool is ready

    # -- events ---------------------------------------------------------------------------------
    def _progress(self, event: str, video: str | None = None, pid: int | None = None) -> None:
        self.emit(_snapshot(self.report, self._in_flight(), self.t0, event, video, pid,
                            encoding=getattr(self, "encoding_now", None)))

    def _poll_encode_progress(self) -> None:
        """Every 2 s while videos are encoding: windows done, frames/s and ETA inside each, from
        the workers' `progress` (its own concurrency group, answered while `encode` runs)."""
        import ray

        from tasks.workers import PROGRESS_GROUP

        now = time.monotonic()
        if self.fan is None or not self.fan.running or now - self._progress_polled < 2.0:
            return
        self._progress_polled = now
        slots = {id(slot): slot for (_, slot) in self.fan.running.values()}.values() if self.fan else ()
        if not slots:
            return
        refs = [slot.handle.progress.options(concurrency_group=PROGRESS_GROUP).remote() for slot in slots]
        try:
            got = ray.get(refs, timeout=1.0)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError):  # busy or restarting: next time
            return
        self.encoding_now = [encode_progress(g) for g in got if g]
        self._progress("encoding")

    def _in_flight(self) -> int:
        fan = self.fan
        return len(getattr(self, "decoding", {})) + (len(fan.queue) + len(fan.running) if fan else 0)

    def _fail(self, source_uri: str, video_id: str | None, kind: str, error: str, meta: dict | None = None) -> None:
        from tasks.metrics import record_failed

        if video_id is not None:
            rec = self._record(video_id, source_uri, meta or {})
            rec.error_kind, rec.error = kind, error
            self._archive_call(lambda: self.arch.put_failed(rec), video_id, source_uri)
            self._release_lease(video_id)
        self.report.failed.append({"source_uri": source_uri, "video_id": video_id, "error_kind": kind, "error": error})
        record_failed(kind, self.model_tag)
        self._progress("failed", source_uri)

    def _archive_call(self, fn, video_id: str, source_uri: str):
        from storage import ArchiveError

        t = time.perf_counter()
        try:
            return fn()
        except (ArchiveError, OSError, RuntimeError) as exc:
            raise IndexInfraError(
                f"writing video {video_id} ({source_uri}) to the archive {getattr(self.arch, 'uri', self.arch)} "
                f"failed: {exc}; check that the archive is writable (disk space, permissions, credentials) "
                "and rerun: videos already written are kept and skipped"
            ) from exc
        finally:
            self.report.stage_seconds["write"] += time.perf_counter() - t

    def _record(self, video_id: str, source_uri: str, meta: dict):
        from storage import VideoRecord

        return VideoRecord(
            video_id=video_id, model_fingerprint=self.fp, model_name=self.model_name, source_uri=source_uri,
            size_bytes=meta.get("size_bytes"), duration_s=meta.get("duration_s"), native_fps=meta.get("native_fps"),
            frame_count=meta.get("frame_count"), width=meta.get("width"), height=meta.get("height"),
            codec=meta.get("codec"), sampled_frames=meta.get("indices"), sampled_times=meta.get("timestamps"),
            decode_s=meta.get("decode_s"), indexer_version=self.version,
        )

    def _check_worker(self, info: dict) -> None:
        """A worker (re)started: compare its numerics probe with the archive's (record the first).

        Raises:
            NumericsChanged: beyond tolerance without `accept_numerics_change` (nothing is written).
        """
        from tasks.numerics import check_probe

        res = check_probe(self.arch, info["probe"], accept=self.opt.accept_numerics_change)
        self.report.numerics.append({"pid": info["pid"], **res})

    # -- phases ---------------------------------------------------------------------------------
    def _indexed_with_same_settings(self, video_id: str | None = None) -> set[str]:
        """Ids indexed for this fingerprint whose stored settings equal this run's (others re-index);
        only `video_id` when given."""
        want = self.opt.settings()
        same = set()
        where = f"model_fingerprint = '{self.fp}' AND status = 'indexed'"
        if video_id is not None:
            where += f" AND video_id = '{video_id}'"
        for rec in self.arch.list_videos(where):
            try:
                got = json.loads(rec.plan or "{}").get("params", {}).get("index_settings")
            except ValueError:
                got = None
            if got == want:
                same.add(rec.video_id)
        return same

    def _digest_all(self) -> list[_Job]:
        from tasks.video import DecodeError, video_id

        jobs = []
        for s in self.srcs:
            try:
                vid = video_id(s.path)
            except DecodeError as exc:  # missing (deleted since discovery)
                self._fail(s.uri, None, exc.kind, str(exc))
                continue
            except OSError as exc:
                self._fail(s.uri, None, "unreadable", f"{s.path}: cannot read the file ({exc}); check permissions")
                continue
            jobs.append(_Job(source_uri=s.uri, path=str(s.path), video_id=vid))
        return jobs

    def run(self) -> None:
        import ray

        from tasks.fanout import FanOut, PoolError

        self.decoding: dict = {}  # ray.ObjectRefGenerator -> _Decoding
        self._progress("started")
        jobs = self._digest_all()  # reads every file once, while the actors load the model
        self.pool.on_ready = lambda info, _slot: self._check_worker(info)
        try:
            ready = self.pool.wait_first_ready()
        except PoolError as exc:
            raise IndexInfraError(
                f"{exc}. Check --model (a Video-XL checkpoint folder or 'tiny') and the worker logs (`ray logs`)."
            ) from exc
        self.fp, self.model_name = ready["fingerprint"], ready["name"]
        self.report.fingerprint = self.fp
        done_ids = self._indexed_with_same_settings()
        failed_ids = self.arch.failed_ids(self.fp)
        queue: deque[_Job] = deque()
        seen: set[str] = set()
        for j in jobs:
            reason = None
            if j.video_id in seen:
                reason = "duplicate"
            elif j.video_id in done_ids and not self.opt.force:
                reason = "indexed"
            elif j.video_id in failed_ids and not (self.opt.retry_failed or self.opt.force):
                reason = "failed_before"
            seen.add(j.video_id)
            if reason:
                self.report.skipped.append({"video_id": j.video_id, "source_uri": j.source_uri, "reason": reason})
                self._progress("skipped", j.source_uri)
            else:
                queue.append(j)

        # the encode stage: decoded videos (frames in Ray's object store) over the pool's actors; an
        # item whose actor dies is encoded again from the same frames, up to --max-attempts times
        self.fan = fan = FanOut(self.pool, lambda h, p: h.encode.remote(*p),
                                in_flight_per_worker=self.opt.in_flight_per_worker, max_attempts=self.opt.max_attempts,
                                on_actor_died=self._worker_died)
        decode = decode_remote_fn()
        n_alive = lambda: len(self.pool.alive())  # noqa: E731
        while queue or self.decoding or fan.busy:
            # 1. decode ahead: enough decoded videos to keep every actor's queue full
            cap = max(2, n_alive() * self.opt.in_flight_per_worker + 1)
            while queue and len(self.decoding) + len(fan.queue) < cap and len(self.decoding) < max(2, n_alive()):
                j = queue.popleft()
                if not self._take_lease(j):
                    continue
                gen = decode.remote(
                    j.path, fps=self.opt.fps, max_frames=self.opt.max_frames, frames=self.opt.frames,
                    model_tag=self.model_tag, decoder=self.opt.decoder)
                self.decoding[gen] = _Decoding(j, time.monotonic())
            # 2. hand decoded videos to the least loaded ready actor
            try:
                fan.dispatch()
            except PoolError as exc:
                raise IndexInfraError(f"{exc}; rerun: videos already written are kept and skipped") from exc
            # 3. wait for anything
            waitables = list(self.decoding) + fan.waitables()
            if not waitables:
                continue
            done, _ = ray.wait(waitables, num_returns=1, timeout=1.0)
            if not done:
                self._progress("tick")
                self._poll_encode_progress()
            self._renew_leases()
            self._cancel_overdue_decodes(done)
            for ref in done:
                if ref in self.decoding:
                    self._on_decoded(ref)
                elif (out := fan.resolve(ref)) is not None:
                    self._on_encoded(out)

    # -- leases (storage.Archive.acquire_lease): one encode per video across concurrent runs ------
    def _take_lease(self, j: _Job) -> bool:
        """Lease `j`'s video for this run; False (and a `skipped` entry) when another live run holds
        it, or when it was indexed (same settings) since this run listed the archive."""
        holder = self._archive_call(lambda: self.arch.acquire_lease(j.video_id, self.fp, self.owner,
                                                                    self.opt.lease_ttl_s), j.video_id, j.source_uri)
        if holder is None:
            self.leases.add(j.video_id)
            if self.opt.force or not self._indexed_with_same_settings(j.video_id):
                return True
            self._release_lease(j.video_id)
            reason, extra = "indexed", {}
        else:
            reason, extra = "in_progress", {"holder": holder}
        self.report.skipped.append({"video_id": j.video_id, "source_uri": j.source_uri, "reason": reason, **extra})
        self._progress("skipped", j.source_uri)
        return False

    def _release_lease(self, video_id: str | None) -> None:
        from storage import ArchiveError

        if video_id is None or video_id not in getattr(self, "leases", ()):
            return
        self.leases.discard(video_id)
        try:
            self.arch.release_leases([(video_id, self.fp)], self.owner)
        except (ArchiveError, OSError, RuntimeError, ValueError):  # it expires anyway
            pass

    def _renew_leases(self) -> None:
        now = time.monotonic()
        if self.leases and now - self._leases_renewed >= self.opt.lease_ttl_s / 3:
            self._leases_renewed = now
            self._archive_call(lambda: self.arch.renew_leases([(v, self.fp) for v in self.leases], self.owner,
                                                              self.opt.lease_ttl_s), "(leases)", "(leases)")

    def release_all_leases(self) -> None:
        """Drop every lease this run still holds (the run ends, or fails)."""
        from storage import ArchiveError

        held = list(getattr(self, "leases", ()))
        self.leases = set()
        if held and self.fp:
            try:
                self.arch.release_leases([(v, self.fp) for v in held], self.owner)
            except (ArchiveError, OSError, RuntimeError, ValueError):  # they expire anyway
                pass

    def _cancel_overdue_decodes(self, done) -> None:
        """Kill decodes running past `--decode-timeout` (SIGKILL of their Ray worker process), counted
        from the task's start in its worker; a task that has not started after
        `DECODE_START_TIMEOUT_S` is given up too."""
        import ray

        now = time.monotonic()
        for gen, d in list(self.decoding.items()):
            started = d.stage != "started"
            limit = self.opt.decode_timeout_s if started else max(DECODE_START_TIMEOUT_S, self.opt.decode_timeout_s)
            if gen in done or now - d.since <= limit:
                continue
            ray.cancel(gen, force=True)
            del self.decoding[gen]
            j = d.job
            if started:
                msg = (f"{j.path}: decoding took longer than {self.opt.decode_timeout_s:.0f} s and was killed; "
                       "check the file (`ffprobe`), re-encode it, or raise --decode-timeout")
            else:
                msg = (f"{j.path}: the decode task did not start within {limit:.0f} s (no Ray worker process "
                       "came up); check the Ray logs (`ray logs`) and rerun")
            self._fail(j.source_uri, j.video_id, "timeout", msg)

    def _on_decoded(self, gen) -> None:
        """The decode generator `gen` has its next value: the start marker (the timeout clock
        restarts), `meta` (a failure is recorded) or the frames (handed to the encode stage)."""
        import ray

        d = self.decoding[gen]
        j = d.job
        ref = next(gen)
        if d.stage == "frames":
            del self.decoding[gen]
            from tasks.fanout import WorkItem

            self.fan.put(WorkItem(key=j.video_id, payload=(d.meta, ref), context=j))
            return
        try:
            value = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the decode task's worker died (max_retries=0)
            del self.decoding[gen]
            self._fail(j.source_uri, j.video_id, "crashed",
                       f"{j.path}: the decode task died ({type(exc).__name__}); re-encode the file or remove it")
            return
        if d.stage == "started":
            d.stage, d.since = "meta", time.monotonic()
            return
        self.report.stage_seconds["decode"] += float(value.get("decode_s") or 0.0)
        if not value["ok"]:
            del self.decoding[gen]
            self._fail(j.source_uri, j.video_id, value["error_kind"], value["error"])
            return
        d.stage, d.meta = "frames", value

    def _on_encoded(self, out) -> None:
        """A `tasks.fanout.Outcome` of the encode stage: write the memory, or the failure."""
        j, (meta, _frames_ref) = out.item.context, out.item.payload
        if out.status == "worker_died":
            self._fail(j.source_uri, j.video_id, "worker_crashed",
                       f"{j.path}: the encode worker died {out.item.attempts} times while encoding this video "
                       f"(last: {type(out.error).__name__}); it may exhaust memory: lower --max-frames or remove it",
                       meta)
            return
        if out.status == "raised":
            self._fail(j.source_uri, j.video_id, "encode_failed", f"{j.path}: {out.error}", meta)
            return
        if not out.value["ok"]:
            self._fail(j.source_uri, j.video_id, out.value["error_kind"], out.value["error"], meta)
            return
        self._write(j, meta, out.value["result"])

    def _worker_died(self, slot) -> None:
        """An actor's process died under an item: Ray restarts it (reloading the model)."""
        self.report.worker_restarts += 1
        self._progress("worker_died", pid=slot.pid)

    def _write(self, j: _Job, meta: dict, enc) -> None:
        from tasks.metrics import record_indexed

        rec = self._record(j.video_id, j.source_uri, meta)
        nframes = len(meta["indices"])
        cap = frame_cap(meta.get("duration_s"), nframes, self.opt)
        extra = {"frame_cap": cap} if cap else {}
        plan = dict(enc.plan, params={**enc.plan.get("params", {}), "index_settings": self.opt.settings(), **extra})
        rec.plan = json.dumps(plan)
        rec.plan_s, rec.encode_s = enc.plan_s, enc.encode_s
        rec.library_versions = json.dumps({**enc.library_versions, "decoder": meta.get("decoder")}, sort_keys=True)
        mem = enc.memory
        put = self._archive_call(lambda: self.arch.put(rec, mem, window_embeddings=enc.window_embeddings,
                                                       kv_codec=self.opt.kv_codec), j.video_id, j.source_uri)
        stored = getattr(put, "kv_bytes", None)
        stored = int(stored) if stored is not None else int(mem.nbytes)
        self._release_lease(j.video_id)
        self.report.indexed.append({"video_id": j.video_id, "source_uri": j.source_uri, "frames": nframes,
                                    "windows": len(mem.windows), "kv_bytes": stored,
                                    "kv_raw_bytes": int(mem.nbytes), "kv_codec": self.opt.kv_codec, **extra})
        self.report.frames += nframes
        self.report.kv_bytes += stored
        self.report.kv_raw_bytes += int(mem.nbytes)
        self.report.stage_seconds["plan"] += enc.plan_s
        self.report.stage_seconds["encode"] += enc.encode_s
        record_indexed(stored, self.model_tag)
        self._progress("indexed", j.source_uri, enc.worker_pid)


def frame_cap(duration_s: float | None, kept: int, options: IndexOptions) -> dict | None:
    """How `max_frames` thinned a long video, or None when it did not apply.

    Returns:
        {"wanted": frames at `fps` over the duration, "kept": frames sampled, "seconds_per_frame":
        the sampling interval actually used}: reported per video (IndexReport, the plan's
        `params.frame_cap`, `archive show`), because a 30-minute video at the default 1 fps and
        128 frames keeps one frame every 14 s (issue 15: it was silent).
    """
    if options.frames is not None or not duration_s or duration_s <= 0:
        return None
    wanted = int(math.floor(duration_s * options.fps))
    if wanted <= options.max_frames or kept >= wanted:
        return None
    return {"wanted": wanted, "kept": int(kept), "seconds_per_frame": round(duration_s / max(kept, 1), 3)}


def decode_remote_fn():
    from tasks.workers import decode_remote

    return decode_remote()


# ----------------------------------------------------------------------------------------------
# Prefect tasks (the flow in flows/index_corpus.py is made of these; one task per stage, never per
# video or frame: about 0.19 s of engine overhead per task run)


def _infra_retry(task, task_run, state) -> bool:
    """Retry only infrastructure failures; usage errors and per-video failures never."""
    try:
        state.result()
    except (IndexInfraError, OSError, ConnectionError):
        return True
    except Exception:  # noqa: BLE001 - anything else is not worth retrying
        return False
    return False


def _make_prefect_tasks():
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    @task(name="discover-videos", cache_policy=NO_CACHE)
    def discover_videos(sources: list[str]) -> dict:
        """Expand folders, globs and manifests into videos (uri, path), and the files not taken."""
        ignored: list[dict] = []
        videos = [{"uri": s.uri, "path": str(s.path)} for s in _discover(sources, ignored)]
        return {"videos": videos, "ignored": ignored}

    @task(name="open-archive", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE,
          retry_condition_fn=_infra_retry)
    def check_archive(archive: str) -> str:
        """Open (create) the archive once, so that an unwritable archive fails before any work."""
        open_archive_checked(archive)
        return archive

    @task(name="index-videos", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE,
          retry_condition_fn=_infra_retry)
    def index_videos(videos: list[dict], archive: str, options: dict, ignored: list[dict] | None = None) -> dict:
        """The Ray pipeline (`run_index`). A retry after an infrastructure failure resumes: videos
        written by the failed attempt are skipped."""
        from tasks.video import Source

        srcs = [Source(uri=v["uri"], path=Path(v["path"])) for v in videos]
        report = run_index(srcs, archive, options_from_dict(options), ignored=ignored)
        return dataclasses.asdict(report)

    @task(name="index-summary", cache_policy=NO_CACHE)
    def publish_summary(report: dict) -> str:
        """A markdown artifact (key `index-corpus-summary`) with the counts, failures by reason,
        frames, KV bytes and time."""
        from prefect.artifacts import create_markdown_artifact

        rep = IndexReport(**report)
        return str(create_markdown_artifact(key="index-corpus-summary", markdown=rep.markdown(),
                                            description="vxl index_corpus run summary"))

    return discover_videos, check_archive, index_videos, publish_summary


def options_to_dict(o: IndexOptions) -> dict:
    d = dataclasses.asdict(o)
    d["plan"]["ratios"] = list(d["plan"]["ratios"])
    return d


def options_from_dict(d: dict) -> IndexOptions:
    d = dict(d)
    plan = dict(d.pop("plan", {}) or {})
    if "ratios" in plan:
        plan["ratios"] = tuple(plan["ratios"])
    return IndexOptions(plan=PlanSpec(**plan), **d)


@functools.cache
def prefect_tasks():
    """(discover_videos, check_archive, index_videos, publish_summary) Prefect tasks, built once."""
    return _make_prefect_tasks()
