"""Ray workers of the index pipeline: decode tasks and encode actors (model loaded once per actor).

Pure functions first (usable without Ray: tests, benchmarks), then their Ray wrappers:

- `PlanSpec`: how windows and ratios are chosen (`fixed` at one ratio, or `dynamic` from CLIP).
- `load_encoder(model, spec)` -> `Encoder`: the Video-XL model plus, for `dynamic`, the CLIP embedder,
  both on the worker's device.
- `Encoder.plan(frames)` / `Encoder.encode(frames, timestamps)`: plan, then compress into a
  `VSTMemory`; returns an `EncodedVideo` (memory on the CPU, plan, per-window CLIP means, timings).
- `decode_job(path, ...)`: `tasks.video.decode` turned into `(meta, frames)` where a
  `DecodeError` becomes `meta["error_kind"]` instead of an exception (so one bad file is a value).
- `decode_remote()`: `decode_job` as a Ray streaming generator task (a start marker, `meta`,
  `frames`); the driver reads only the small marker and `meta` and hands the `frames` reference
  straight to an encode actor (frames never travel through the driver).
- `encode_worker_class()`: the `EncodeWorker` Ray actor class (see docs/ARCHITECTURE.md).

No Prefect here: Ray workers never run Prefect's engine (ECOSYSTEM.md).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `vxl --help` builds `vxl index` from tasks.index, which imports PlanSpec
    import numpy as np

CHUNKING_MODES = ("dynamic", "fixed")
DEFAULT_CLIP = "ViT-B-32"


@dataclass(frozen=True)
class PlanSpec:
    """Chunk planning parameters (stored with every video's plan).

    Attributes:
        chunking: "dynamic" (CLIP-driven windows and ratios) or "fixed" (Video-XL's demo).
        ratio: fixed: the compression ratio of every window (visual tokens per VST).
        target_ratio: dynamic: average ratio; VST budget = visual tokens / target_ratio.
        ratios: dynamic: allowed ratios.
        alpha: dynamic: boundary threshold `mean + alpha * std` of the depth scores.
        clip_model: dynamic: open_clip config name ("vxl-tiny-clip" for the tiny model).
        clip_weights: dynamic: local state-dict file, None for deterministic random weights.
        clip_batch: dynamic: frames per CLIP forward pass.
    """

    chunking: str = "dynamic"
    ratio: int = 8
    target_ratio: int = 8
    ratios: tuple[int, ...] = (2, 4, 8, 16)
    alpha: float = 0.5
    clip_model: str = DEFAULT_CLIP
    clip_weights: str | None = None
    clip_batch: int = 32

    def validate(self) -> None:
        """Raises ValueError for an unknown mode or a ratio that cannot work."""
        if self.chunking not in CHUNKING_MODES:
            raise ValueError(f"--chunking must be one of {list(CHUNKING_MODES)}, got {self.chunking!r}")
        if self.chunking == "fixed" and (not isinstance(self.ratio, int) or self.ratio < 1):
            raise ValueError(f"--ratio must be a positive integer, got {self.ratio!r}")
        if self.chunking == "dynamic":
            if not min(self.ratios) <= self.target_ratio <= max(self.ratios):
                raise ValueError(f"--target-ratio {self.target_ratio} is outside the allowed ratios {list(self.ratios)}")
            if self.clip_weights is not None and not os.path.isfile(self.clip_weights):
                raise ValueError(f"clip_weights (--clip-weights) {self.clip_weights!r} is not a file")


@dataclass
class EncodedVideo:
    """What an encode worker returns for one video.

    Attributes:
        memory: the `VSTMemory`, on the CPU.
        plan: `ChunkPlan.to_dict()` (dynamic: with the similarity curve in `extras`).
        window_embeddings: float32 (W, E) per-window mean CLIP embeddings (dynamic), else None.
        plan_s: seconds for CLIP embedding + planning.
        encode_s: seconds for `VideoXL.encode`.
        library_versions: `model.environment.library_versions()` of the worker (stored per memory).
        worker_pid: process id of the worker that encoded (tests kill it).
    """

    memory: object
    plan: dict
    window_embeddings: np.ndarray | None
    plan_s: float
    encode_s: float
    library_versions: dict = field(default_factory=dict)
    worker_pid: int = field(default_factory=os.getpid)


class Encoder:
    """A loaded model (+ CLIP for dynamic chunking) that plans and encodes videos. See `load_encoder`."""

    def __init__(self, vx, clip, spec: PlanSpec):
        from model.environment import library_versions

        self.vx = vx
        self.clip = clip
        self.spec = spec
        self.library_versions = library_versions(vx.device)
        """the stack this encoder computes memories with (stored on every `videos` row)."""

    def plan(self, frames: np.ndarray):
        """-> (ChunkPlan, per-window embeddings or None) for uint8 (F, H, W, 3) frames."""
        if self.spec.chunking == "fixed":
            return self.vx.plan(int(frames.shape[0]), ratio=self.spec.ratio), None
        from model.dynamic import plan_dynamic, window_mean_embeddings

        emb = self.clip.embed_images(frames)  # (F, E) float32, unit rows
        plan = plan_dynamic(
            emb, tokens_per_frame=self.vx.config.tokens_per_frame, window_tokens=self.vx.config.beacon_window,
            target_ratio=self.spec.target_ratio, ratios=self.spec.ratios, alpha=self.spec.alpha,
        )
        plan.extras["clip_model"] = self.spec.clip_model
        plan.extras["clip_weights"] = self.spec.clip_weights
        plan.extras["clip_fingerprint"] = self.clip.fingerprint
        return plan, window_mean_embeddings(plan, emb)

    def encode(self, frames: np.ndarray, timestamps=None, on_window=None) -> EncodedVideo:
        """Plan and encode one video's sampled frames (`on_window`: see `VideoXL.encode`).
        Raises ValueError for unusable frames."""
        t0 = time.perf_counter()
        plan, wemb = self.plan(frames)
        t1 = time.perf_counter()
        memory = self.vx.encode(frames, plan, timestamps=timestamps, on_window=on_window)
        memory = memory.to("cpu")
        t2 = time.perf_counter()
        return EncodedVideo(memory=memory, plan=plan.to_dict(), window_embeddings=wemb,
                            plan_s=t1 - t0, encode_s=t2 - t1, library_versions=self.library_versions)


def load_encoder(model: str, spec: PlanSpec, device: str | None = None) -> Encoder:
    """Load Video-XL (`"tiny"` or a checkpoint folder) and, for dynamic chunking, the CLIP embedder."""
    from model import load_model

    vx = load_model(model, device=device)
    clip = None
    if spec.chunking == "dynamic":
        import model.dynamic  # noqa: F401  (registers the "dynamic" planner)
        from model.clip_embed import ClipEmbedder

        clip = ClipEmbedder(spec.clip_model, weights=spec.clip_weights, device=str(vx.device),
                            batch_size=spec.clip_batch)
    return Encoder(vx, clip, spec)


# ----------------------------------------------------------------------------------------------
# Decoding


def decode_job(path: str, *, fps: float, max_frames: int, frames: int | None, model_tag: str = "",
               timeout_s: float | None = None, decoder: str = "auto") -> tuple[dict, np.ndarray | None]:
    """Decode one video in this (Ray worker) process; never raises for a bad file.

    The Ray task is the unit that can be killed: the driver cancels it with `ray.cancel(force=True)`
    (SIGKILL of the worker process) when it runs past `--decode-timeout`, which also ends a decord
    `get_batch` hang that holds the GIL (dmlc/decord#373). Run outside Ray (`timeout_s` given), the
    decode goes to a killable child process instead (`tasks.video.decode_with_timeout`).

    Returns:
        (meta, frames): on success meta holds `ok=True`, the probe (`DecodedVideo.probe()`), `indices`
        and `timestamps` as lists, and frames is uint8 (F, H, W, 3); on failure meta holds
        `ok=False`, `error_kind` (a `DecodeError.kind`) and `error`, and frames is None.
    """
    from tasks.metrics import record_frames_decoded
    from tasks.video import DecodeError, decode, decode_with_timeout

    try:
        if timeout_s is None:
            dv = decode(path, fps=fps, max_frames=max_frames, frames=frames, decoder=decoder)
        else:
            dv = decode_with_timeout(path, timeout_s=timeout_s, fps=fps, max_frames=max_frames, frames=frames,
                                     decoder=decoder)
    except DecodeError as exc:
        return {"ok": False, "error_kind": exc.kind, "error": str(exc)}, None
    except ValueError as exc:  # sampling arguments impossible for this file (e.g. fps with no frame rate)
        return {"ok": False, "error_kind": "decode_failed", "error": f"{path}: {exc}"}, None
    from importlib.metadata import version  # not model.environment: importing `model` loads torch

    record_frames_decoded(len(dv.indices), model_tag)
    meta = dv.probe()
    dist = {"pyav": "av"}.get(dv.decoder, dv.decoder)
    meta.update(ok=True, indices=[int(i) for i in dv.indices], timestamps=[float(t) for t in dv.timestamps],
                decoder=f"{dv.decoder} {version(dist)}")
    return meta, dv.frames


_DECODE_REMOTE = None
DECODE_MAX_CALLS = 16
"""Decode worker processes are replaced after this many videos (bounds decord's memory growth on
4K input, dmlc/decord#197 and #208)."""


def decode_stream(path: str, **kwargs):
    """`decode_job` as a generator of three values, for a Ray streaming generator task.

    Yields, in order: None (the start marker) as soon as the task runs in its worker process (the
    driver starts `--decode-timeout` here, not at submission: a cold Ray worker start on loaded
    cores took over 20 s and a good file was reported as timed out), then `meta`, then `frames`
    (both as `decode_job` returns them; frames None on failure).
    """
    yield None
    meta, frames = decode_job(path, **kwargs)
    yield meta
    yield frames


def decode_remote():
    """`decode_stream` as a Ray streaming generator task (`ray.ObjectRefGenerator` of 3 refs).

    The driver reads the small start marker and `meta` and hands the `frames` reference straight to
    an encode actor (frames never travel through the driver); `ray.wait` takes the generator itself
    (ready when its next value is). `num_cpus=0`: the driver bounds the decodes in flight, so
    decoding never waits behind encode actors that hold every logical CPU. `max_retries=0`: a file
    that kills its decoder is reported (kind `crashed`), not retried: the next value's `ray.get`
    raises `ray.exceptions.RayError`.
    """
    global _DECODE_REMOTE
    if _DECODE_REMOTE is None:
        import ray

        _DECODE_REMOTE = ray.remote(num_returns="streaming", num_cpus=0, max_retries=0,
                                    max_calls=DECODE_MAX_CALLS)(decode_stream)
    return _DECODE_REMOTE


# ----------------------------------------------------------------------------------------------
# Encode actor


class EncodeWorker:
    """Ray actor body: loads the model once, then encodes video after video.

    Created with `max_restarts` by the driver: when its process dies (OOM, SIGKILL, segfault), Ray
    starts it again (reloading the model) and the driver resubmits the videos it had in flight.
    """

    def __init__(self, model: str, spec: PlanSpec, model_tag: str = ""):
        import torch

        try:  # one intra-op thread per logical CPU Ray gave this actor
            import ray

            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
            torch.set_num_threads(max(1, int(round(cpus))))
        except Exception:  # noqa: BLE001 - outside Ray (tests call the class directly)
            pass
        self.encoder = load_encoder(model, spec)
        self.model_tag = model_tag or self.encoder.vx.name
        self._probe = None
        self._current: dict | None = None
        """the video being encoded: path, windows done/total, frames done, start time (`progress`)."""

    def ready(self) -> dict:
        """The loaded model's identity and its numerics probe (`model.probe`, computed once).

        Raises:
            UpstreamDriftError: the probe broke one of the model's invariants (the driver stops).
        """
        from model.probe import compute_probe

        vx = self.encoder.vx
        if self._probe is None:
            self._probe = compute_probe(vx)
        return {"fingerprint": vx.fingerprint, "name": vx.name, "pid": os.getpid(), "device": str(vx.device),
                "dtype": str(vx.dtype), "probe": self._probe, "library_versions": self.encoder.library_versions}

    def pid(self) -> int:
        return os.getpid()

    def progress(self) -> dict | None:
        """The encode in progress: {"path", "windows_done", "windows_total", "frames_done",
        "frames_total", "elapsed_s"}, or None when idle. Call it in `PROGRESS_GROUP` (it runs while
        `encode` does)."""
        cur = self._current
        if cur is None:
            return None
        return {**{k: v for k, v in cur.items() if k != "started"}, "elapsed_s": time.monotonic() - cur["started"]}

    def encode(self, meta: dict, frames: np.ndarray) -> dict:
        """Plan and encode one decoded video. Returns {"ok": True, "result": EncodedVideo} or
        {"ok": False, "error_kind": "encode_failed", "error": ...} for frames the model refuses."""
        from tasks.metrics import record_encode_seconds

        cur = self._current = {"path": meta.get("path"), "windows_done": 0, "windows_total": None, "frames_done": 0,
                               "frames_total": int(frames.shape[0]), "started": time.monotonic()}

        def on_window(done: int, total: int, frames_done: int) -> None:
            cur.update(windows_done=done, windows_total=total, frames_done=frames_done)

        try:
            res = self.encoder.encode(frames, timestamps=meta.get("timestamps"), on_window=on_window)
        except (ValueError, RuntimeError) as exc:  # bad frames, out of memory, shape limits
            return {"ok": False, "error_kind": "encode_failed", "error": f"{meta.get('path')}: {type(exc).__name__}: {exc}"}
        finally:
            self._current = None
        record_encode_seconds(res.plan_s + res.encode_s, self.model_tag)
        return {"ok": True, "result": res}


PROGRESS_GROUP = "progress"
"""The actor's concurrency group for `progress` calls: answered from their own thread while `encode`
runs (encodes stay one at a time in the default group)."""


def encode_worker_class():
    """The `EncodeWorker` actor class (`ray.remote(EncodeWorker)`, with the `PROGRESS_GROUP`
    concurrency group); options are set per pool."""
    import ray

    return ray.remote(concurrency_groups={PROGRESS_GROUP: 1})(EncodeWorker)
