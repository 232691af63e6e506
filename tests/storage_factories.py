"""Small factories for the storage tests: random memories and records, no model needed."""

from __future__ import annotations

import hashlib

import torch

from model.memory import VSTMemory, WindowSpan
from storage import VideoRecord

FP = "f" * 64
FP_OTHER = "e" * 64


def make_memory(
    *,
    num_windows: int = 4,
    layers: int = 2,
    kv_heads: int = 2,
    head_dim: int = 8,
    sink_tokens: int = 3,
    tokens: tuple[int, ...] | None = None,
    dtype: torch.dtype = torch.float16,
    fingerprint: str | None = FP,
    seed: int = 0,
    seconds_per_window: float = 10.0,
) -> VSTMemory:
    """A random `VSTMemory`; window i spans frames [10i, 10i+10) and seconds [i*s, (i+1)*s - 0.5]."""
    g = torch.Generator().manual_seed(seed)
    tokens = tokens or tuple(5 + (i % 3) for i in range(num_windows))

    def rnd(t: int) -> torch.Tensor:
        x = torch.randn((layers, 2, kv_heads, t, head_dim), generator=g, dtype=torch.float32)
        return x.to(dtype)  # (L, 2, Hkv, T, D)

    windows = [
        WindowSpan(
            index=i,
            frame_start=10 * i,
            frame_end=10 * i + 10,
            ratio=8,
            num_vst=t,
            carry_in=i % 2,
            start_s=i * seconds_per_window,
            end_s=(i + 1) * seconds_per_window - 0.5,
        )
        for i, t in enumerate(tokens)
    ]
    return VSTMemory(
        sink=rnd(sink_tokens),
        window_kv=[rnd(w.num_vst) for w in windows],
        windows=windows,
        fingerprint=fingerprint,
        meta={"seed": seed},
    )


def video_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def make_record(name: str = "a", fingerprint: str = FP, **kw) -> VideoRecord:
    """A `VideoRecord` for a video named `name` (id = digest of the name)."""
    base = dict(
        video_id=video_id(name),
        model_fingerprint=fingerprint,
        model_name="tiny",
        source_uri=f"/videos/{name}.mp4",
        size_bytes=1234,
        duration_s=40.0,
        native_fps=30.0,
        frame_count=1200,
        width=64,
        height=48,
        codec="h264",
        sampled_frames=list(range(0, 1200, 30)),
        sampled_times=[i * 1.0 for i in range(40)],
        plan='{"planner": "fixed"}',
        decode_s=0.1,
        plan_s=0.01,
        encode_s=1.5,
        indexer_version="test",
    )
    base.update(kw)
    return VideoRecord(**base)


# -- process workers (module-level so `spawn` children can import them) -------------------------
def memory_for(name: str) -> VSTMemory:
    """The deterministic memory of video `name` (about 1 MiB), the same in every process."""
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return make_memory(seed=seed, num_windows=4, tokens=(128, 129, 130, 131), head_dim=64, kv_heads=2, layers=4)


def put_worker(uri: str, names: list[str], ready, repeat: int = 1) -> None:
    """Put `memory_for(name)` for each name (`repeat` times), setting `ready` once imports are done."""
    from storage import open_archive

    arch = open_archive(uri)
    ready.set()
    for _ in range(repeat):
        for n in names:
            arch.put(make_record(n), memory_for(n))


def recode_worker(uri: str, names: list[str], ready, kv_codec: str) -> None:
    """Recode the memory of each name to `kv_codec`, setting `ready` once imports are done."""
    from storage import open_archive

    arch = open_archive(uri)
    ready.set()
    for n in names:
        arch.recode(video_id(n), FP, kv_codec)


#: Tables a format version added (the rest exist since version 1).
TABLES_ADDED = {"probes": "2", "eval_runs": "3"}


def downgrade_archive(root, version: str) -> None:
    """Make the archive at `root` look as a vxl of format `version` left it: the columns
    `storage.schema.ADDED_COLUMNS` lists for later versions dropped, tables added later removed,
    `vxl.format_version` = `version` in every remaining table."""
    import shutil
    from pathlib import Path

    import lance

    from storage.schema import ADDED_COLUMNS, SCHEMAS

    root = Path(root)
    for name in SCHEMAS:
        path = root / f"{name}.lance"
        if int(TABLES_ADDED.get(name, "1")) > int(version):
            shutil.rmtree(path, ignore_errors=True)
            continue
        if not path.exists():
            continue
        drops = [f.name for v, f in ADDED_COLUMNS.get(name, []) if int(v) > int(version)]
        ds = lance.dataset(str(path))
        if drops:
            ds.drop_columns(drops)
            ds = lance.dataset(str(path))
        meta = {k.decode(): v.decode() for k, v in SCHEMAS[name].metadata.items()}
        ds.update_schema_metadata(meta | {"vxl.format_version": version}, replace=True)


def lease_worker(uri: str, keys: list[str], owner: str, ready, go, results) -> None:
    """Wait for `go`, then try to take the lease of every key in `keys`; put (owner, key, won) in `results`."""
    from storage import open_archive

    arch = open_archive(uri)
    ready.set()
    go.wait(60)
    for k in keys:
        results.put((owner, k, arch.acquire_lease(k, FP, owner, 60.0) is None))
