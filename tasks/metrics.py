"""Ray metrics of the index pipeline (`ray.util.metrics`), visible on the Ray dashboard and on its
Prometheus endpoint (names get Ray's `ray_` prefix there, e.g. `ray_vxl_frames_decoded_total`).

| metric | type | recorded by | tags |
|---|---|---|---|
| `vxl_frames_decoded` | Counter | decode task (Ray worker) | `model` |
| `vxl_videos_indexed` | Counter | driver, after the archive commit | `model` |
| `vxl_videos_failed` | Counter | driver, after the failed row is written | `model`, `error_kind` |
| `vxl_kv_bytes_written` | Counter | driver, after the archive commit | `model` |
| `vxl_encode_seconds` | Histogram | encode worker (plan + encode of one video) | `model` |

Metric objects are created lazily, once per process, and only where Ray is initialised; every
`record_*` function is a no-op otherwise (pure unit tests, benchmarks without Ray).
"""

from __future__ import annotations

ENCODE_SECONDS_BOUNDARIES = [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
"""Histogram bucket upper bounds, seconds."""

_METRICS: dict | None = None


def _metrics() -> dict | None:
    global _METRICS
    if _METRICS is not None:
        return _METRICS
    try:
        import ray
        from ray.util import metrics
    except ImportError:  # pragma: no cover - ray is a dependency
        return None
    if not ray.is_initialized():
        return None
    _METRICS = {
        "frames": metrics.Counter("vxl_frames_decoded", description="Sampled frames decoded.", tag_keys=("model",)),
        "indexed": metrics.Counter("vxl_videos_indexed", description="Videos written to the archive.",
                                   tag_keys=("model",)),
        "failed": metrics.Counter("vxl_videos_failed", description="Videos that failed to index.",
                                  tag_keys=("model", "error_kind")),
        "kv_bytes": metrics.Counter("vxl_kv_bytes_written", description="Raw VST K/V bytes written (bytes).",
                                    tag_keys=("model",)),
        "encode_s": metrics.Histogram("vxl_encode_seconds", description="Plan + encode seconds per video.",
                                      boundaries=ENCODE_SECONDS_BOUNDARIES, tag_keys=("model",)),
    }
    return _METRICS


def _inc(name: str, value: float, tags: dict[str, str]) -> None:
    m = _metrics()
    if m is not None and value > 0:
        m[name].inc(value, tags=tags)


def record_frames_decoded(n: int, model: str) -> None:
    _inc("frames", n, {"model": model})


def record_indexed(kv_bytes: int, model: str) -> None:
    _inc("indexed", 1, {"model": model})
    _inc("kv_bytes", kv_bytes, {"model": model})


def record_failed(error_kind: str, model: str) -> None:
    _inc("failed", 1, {"model": model, "error_kind": error_kind})


def record_encode_seconds(seconds: float, model: str) -> None:
    m = _metrics()
    if m is not None:
        m["encode_s"].observe(seconds, tags={"model": model})
