"""Archive maintenance streams (issue 15): `verify`, `stats`, `compact` and the skip check read record
batches, so their memory does not grow with the archive, and the streamed `verify` still finds every
broken invariant. The archive is built with `bench/archive_maintenance.py` (rows of `Archive.put`,
written in bulk); the expectations come from the tampering done here, not from `verify` itself."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.archive_maintenance import FP, build_synthetic_archive, measure  # noqa: E402
from storage import open_archive  # noqa: E402

WINDOWS = 30


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("maint") / "arch"
    build_synthetic_archive(path, 1200, WINDOWS, chunk=400)
    return path


def _vid(i: int) -> str:
    return f"xxh3-128:{i:032x}"


def _copy_rows(arch, where: str, **changes) -> pa.Table:
    """The `vst_kv` rows matching `where`, blobs included, with `changes` applied (new rows to add)."""
    from storage.archive import _table_from_rows
    from storage.schema import VST_KV_META_COLUMNS, VST_KV_SCHEMA

    ds = arch._ds("vst_kv")
    tab = ds.to_table(columns=VST_KV_META_COLUMNS, filter=where, with_row_id=True)
    blobs = ds.take_blobs("kv", ids=tab.column("_rowid").to_pylist())
    rows = [dict(r, kv=b.readall(), **changes) for r, b in zip(tab.to_pylist(), blobs, strict=True)]
    return _table_from_rows(rows, VST_KV_SCHEMA)


def test_streamed_verify_finds_each_broken_invariant(tmp_path):
    path = tmp_path / "arch"
    build_synthetic_archive(path, 40, 6, embed_dim=8, chunk=20)
    arch = open_archive(path, create=False)
    clean = arch.verify()
    assert clean.ok and clean.videos_checked == 40 and clean.blobs_checked == 40 * 7, clean.problems
    vst = arch._table("vst_kv")
    # video 3: window 2 row deleted; video 5: window 4 row duplicated; video 7: a garbage row of a
    # write that was never committed (not a problem, counted as garbage)
    vst.delete(f"video_id = '{_vid(3)}' AND window = 2")
    vst.add(_copy_rows(arch, f"video_id = '{_vid(5)}' AND window = 4"))
    vst.add(_copy_rows(arch, f"video_id = '{_vid(7)}' AND window = 0", write_id="never-committed"))

    rep = open_archive(path, create=False).verify()
    assert rep.videos_checked == 40 and rep.garbage_rows == 1
    assert rep.blobs_checked == 40 * 7 - 1 + 1  # one row gone, one duplicated (both copies read)
    by_video: dict[str, list] = {}
    for p in rep.problems:
        assert p.kind == "invariant", p
        by_video.setdefault(p.video_id, []).append(p)
    assert sorted(by_video) == [_vid(3), _vid(5)]
    v3 = {p.detail.split(" ")[0] + " " + p.detail.split(" ")[1]: p for p in by_video[_vid(3)]}
    assert v3["window rows:"].window == 2 and "missing [2]" in v3["window rows:"].detail
    # the deleted row's tokens, bytes and raw bytes are missing from each sum
    assert {"window tokens", "blob bytes", "raw sizes"} <= set(v3)
    v5 = {p.detail.split(" ")[0] + " " + p.detail.split(" ")[1]: p for p in by_video[_vid(5)]}
    assert "duplicated [4]" in v5["window rows:"].detail and v5["window rows:"].window is None
    assert {"window tokens", "blob bytes"} <= set(v5)


def test_stats_compact_and_ids_agree_with_the_rows(synthetic):
    arch = open_archive(synthetic, create=False)
    st = arch.stats()
    assert (st["videos"], st["indexed"], st["failed"], st["windows"]) == (1200, 1200, 0, 1200 * WINDOWS)
    assert st["vst_kv_rows"] == 1200 * (WINDOWS + 1) and st["garbage_rows"] == 0
    # per video: 3 sink + 4 per window VSTs; blob bytes = tokens x (2 layers x 2 x 1 head x 8 dims x 2 bytes)
    assert st["vst_tokens"] == 1200 * 4 * WINDOWS
    assert st["kv_bytes"] == 1200 * (3 + 4 * WINDOWS) * 2 * 2 * 1 * 8 * 2
    assert arch.indexed_ids(FP) == {_vid(i) for i in range(1200)}
    assert arch.compact()["garbage_rows_deleted"] == 0


@pytest.mark.timeout(900)
def test_maintenance_memory_does_not_follow_the_table(synthetic):
    """Peak RSS growth of each operation, in a fresh process, against reading the two tables whole
    (what `verify` did before it streamed): 1,200 videos x 30 windows with 512-float CLIP embeddings
    are about 75 MB as Arrow and over a GB as Python rows; the streamed operations stay far below.
    The 100,000-video figures are in docs/PERFORMANCE.md (bench/archive_maintenance.py)."""
    whole = measure("load_tables", synthetic)
    assert whole["vst_kv_rows"] == 1200 * (WINDOWS + 1)
    for op in ("verify", "stats", "ids"):
        got = measure(op, synthetic)
        assert got["delta_mb"] < 0.3 * whole["delta_mb"], (got, whole)
    got = measure("verify", synthetic)
    assert got["ok"] and got["blobs_checked"] == 1200 * (WINDOWS + 1)
