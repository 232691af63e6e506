"""storage.Archive on a local LanceDB folder: round trips, partial loads, errors, corruption."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from storage_factories import FP, FP_OTHER, make_memory, make_record, video_id

from storage import (
    CorruptBlob,
    FingerprintMismatch,
    VideoNotFound,
    answer_key,
    open_archive,
)
from storage.schema import SCHEMAS


@pytest.fixture
def arch(tmp_path):
    return open_archive(tmp_path / "arch")


def _kv_rows(arch) -> list[dict]:
    return arch._ds("vst_kv").to_table(columns=["video_id", "write_id", "window"]).to_pylist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_put_load_bit_exact(arch, dtype):
    mem = make_memory(dtype=dtype, num_windows=5, seed=3)
    rec = arch.put(make_record("a"), mem)
    got = arch.load_memory(rec.video_id, FP)
    assert got.equal(mem)
    assert got.dtype == dtype and got.fingerprint == FP and got.meta == {"seed": 3, "kv_codec": "raw"}
    stored = arch.get_video(rec.video_id, FP)
    assert (stored.status, stored.num_windows, stored.num_vst_tokens, stored.kv_bytes) == (
        "indexed", 5, mem.num_vst, mem.nbytes
    )
    assert stored.sampled_frames == make_record("a").sampled_frames


def test_partial_loads(arch):
    mem = make_memory(num_windows=6, seconds_per_window=10.0)
    rec = arch.put(make_record("a"), mem)
    got = arch.load_memory(rec.video_id, FP, windows=[4, 1])
    assert [w.index for w in got.windows] == [1, 4]
    assert got.equal(mem.select([1, 4]))
    got = arch.load_memory(rec.video_id, FP, windows=(15.0, 31.0))  # overlaps windows 1, 2, 3
    assert [w.index for w in got.windows] == [1, 2, 3]
    assert got.equal(mem.select(mem.windows_in_time_range(15.0, 31.0)))
    assert arch.load_memory(rec.video_id, FP, windows=[]).num_vst == 0
    with pytest.raises(KeyError, match=r"\[9\]"):
        arch.load_memory(rec.video_id, FP, windows=[9])


def test_partial_load_reads_only_requested_blobs(arch, monkeypatch):
    mem = make_memory(num_windows=6)
    rec = arch.put(make_record("a"), mem)
    read: list[int] = []
    orig = type(arch)._read_blobs

    def spy(ds, rows):
        read.extend(r["window"] for r in rows)
        return orig(ds, rows)

    monkeypatch.setattr(type(arch), "_read_blobs", staticmethod(spy))
    arch.load_memory(rec.video_id, FP, windows=[2, 5])
    assert read == [-1, 2, 5]


def test_put_is_idempotent(arch):
    m1, m2 = make_memory(seed=1), make_memory(seed=2, num_windows=2)
    arch.put(make_record("a"), m1)
    arch.put(make_record("a"), m1)
    rec = arch.put(make_record("a"), m2)
    assert len(arch.list_videos()) == 1
    rows = _kv_rows(arch)
    assert len(rows) == 3 and {r["write_id"] for r in rows} == {rec.write_id}
    assert arch.load_memory(rec.video_id, FP).equal(m2)
    assert arch.verify().ok


def test_fingerprint_mismatch_and_not_found(arch):
    rec = arch.put(make_record("a", model_name="video-xl-7b"), make_memory())
    with pytest.raises(FingerprintMismatch) as ei:
        arch.load_memory(rec.video_id, FP_OTHER)
    msg = str(ei.value)
    assert FP in msg and FP_OTHER in msg and "video-xl-7b" in msg and rec.video_id in msg
    with pytest.raises(VideoNotFound, match="nope"):
        arch.load_memory("nope", FP)
    with pytest.raises(ValueError, match="fingerprint"):
        arch.put(make_record("b", fingerprint=FP_OTHER), make_memory(fingerprint=FP))


def test_two_fingerprints_coexist(arch):
    m1, m2 = make_memory(seed=1), make_memory(seed=2, fingerprint=FP_OTHER)
    arch.put(make_record("a"), m1)
    arch.put(make_record("a", fingerprint=FP_OTHER), m2)
    vid = video_id("a")
    assert arch.load_memory(vid, FP).equal(m1)
    assert arch.load_memory(vid, FP_OTHER).equal(m2)
    assert arch.indexed_ids(FP) == {vid} == arch.indexed_ids(FP_OTHER)


def test_failed_videos(arch):
    ok = arch.put_failed(make_record("bad", error_kind="DecodeError", error="moov atom not found"))
    assert ok
    vid = video_id("bad")
    assert arch.failed_ids(FP) == {vid} and arch.indexed_ids(FP) == set()
    rec = arch.get_video(vid)
    assert (rec.status, rec.error_kind, rec.error, rec.write_id) == ("failed", "DecodeError", "moov atom not found", None)
    with pytest.raises(VideoNotFound, match="DecodeError"):
        arch.load_memory(vid, FP)
    mem = make_memory()
    arch.put(make_record("bad"), mem)  # a rerun that succeeds replaces the failure
    assert arch.failed_ids(FP) == set() and arch.indexed_ids(FP) == {vid}
    assert not arch.put_failed(make_record("bad", error_kind="X", error="y"))  # keeps the good memory
    assert arch.load_memory(vid, FP).equal(mem)
    assert len(arch.list_videos()) == 1
    assert [r.video_id for r in arch.list_videos("status = 'indexed'")] == [vid]


def test_window_embeddings(arch):
    mem = make_memory(num_windows=3)
    emb = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    rec = arch.put(make_record("a"), mem, window_embeddings=emb)
    got, spans = arch.window_embeddings(rec.video_id, FP)
    assert got.dtype == np.float32 and np.array_equal(got, emb)
    assert spans == mem.windows
    rec2 = arch.put(make_record("b"), mem)
    assert arch.window_embeddings(rec2.video_id, FP)[0] is None


def test_rm(arch):
    arch.put(make_record("a"), make_memory())
    arch.put(make_record("b"), make_memory())
    assert arch.rm(video_id("a")) == 1
    assert [r.video_id for r in arch.list_videos()] == [video_id("b")]
    assert {r["video_id"] for r in _kv_rows(arch)} == {video_id("b")}
    with pytest.raises(VideoNotFound):
        arch.rm(video_id("a"))


def test_schema_equals_documented(arch, tmp_path):
    arch.put(make_record("a"), make_memory())
    doc = (Path(__file__).parents[1] / "docs" / "ARCHIVE_FORMAT.md").read_text()
    for name, want in SCHEMAS.items():
        got = arch.schema(name)
        assert got.metadata == want.metadata, name
        assert got.names == want.names, name
        for f in want:
            g = got.field(f.name)
            if f.name == "kv":  # Lance reports its blob v2 extension type for the blob column
                assert getattr(g.type, "extension_name", None) == "lance.blob.v2" or g.type == pa.large_binary()
                assert f"`{f.name}`" in doc
                continue
            assert g.type == f.type and g.nullable == f.nullable, (name, f.name)
            assert f"`{f.name}`" in doc, f"{name}.{f.name} not documented"
        assert f"### `{name}`" in doc
    # reopening an existing archive works and sees the data
    assert open_archive(tmp_path / "arch").indexed_ids(FP) == {video_id("a")}


def _blob_files(root: Path) -> list[Path]:
    return [p for p in (root / "vst_kv.lance" / "data").rglob("*") if p.is_file()]


def _flip_in_files(root: Path, needle: bytes) -> Path:
    for p in _blob_files(root):
        data = p.read_bytes()
        pos = data.find(needle)
        if pos >= 0:
            with open(p, "r+b") as f:
                f.seek(pos + len(needle) // 2)
                b = f.read(1)
                f.seek(pos + len(needle) // 2)
                f.write(bytes([b[0] ^ 0xFF]))
            return p
    raise AssertionError("blob bytes not found in any data file")


def test_corruption_detected(tmp_path):
    root = tmp_path / "arch"
    arch = open_archive(root)
    mems = {n: make_memory(seed=i, num_windows=4, tokens=(300, 301, 302, 303), head_dim=32) for i, n in enumerate("abc")}
    for n, m in mems.items():
        arch.put(make_record(n), m)
    assert arch.verify().ok
    target = mems["b"].window_kv[2].contiguous().view(torch.uint8).numpy().tobytes()
    path = _flip_in_files(root, target[1000:1064])
    assert path.stat().st_size > 0
    rep = arch.verify()
    assert not rep.ok
    assert [(p.video_id, p.window, p.kind) for p in rep.problems] == [(video_id("b"), 2, "checksum")]
    arch2 = open_archive(root)  # a fresh reader (no cache)
    with pytest.raises(CorruptBlob, match=rf"{video_id('b')}.*window 2"):
        arch2.load_memory(video_id("b"), FP)
    assert arch2.load_memory(video_id("b"), FP, windows=[0, 1, 3]).equal(mems["b"].select([0, 1, 3]))
    for n in "ac":
        assert arch2.load_memory(video_id(n), FP).equal(mems[n])


def test_answers_and_vico_samples(arch):
    key = answer_key(video_id("a"), FP, "what color?", ["red", "blue"], {"max_new_tokens": 8})
    assert key == answer_key(video_id("a"), FP, "what color?", ["red", "blue"], {"max_new_tokens": 8})
    assert key != answer_key(video_id("a"), FP, "what color?", ["blue", "red"], {"max_new_tokens": 8})
    row = dict(
        key=key, video_id=video_id("a"), model_fingerprint=FP, question="what color?",
        choices=["red", "blue"], answer="red", chosen=0, scores=[-0.1, -2.0], windows_used=[0, 1],
        settings={"max_new_tokens": 8}, ttft_s=0.2, total_s=0.5, num_tokens=3, status="ok",
    )
    assert arch.put_answers([row, row]) == 1
    arch.put_answers([dict(row, answer="blue", chosen=1)])
    assert arch.answer_keys() == {key}
    (got,) = arch.list_answers()
    assert got["answer"] == "blue" and got["choices"] == '["red", "blue"]' and got["created_at"] is not None
    samples = [
        dict(sample_id=f"s{i}", video_id=video_id("a"), split="train", form="mcq", sample_json={"q": i})
        for i in range(3)
    ]
    arch.put_vico_samples(samples)
    arch.put_vico_samples(samples[:1])
    assert arch.vico_sample_ids() == {"s0", "s1", "s2"}
    assert len(arch.list_vico_samples("split = 'train'")) == 3


def test_stats_and_compact(tmp_path):
    root = tmp_path / "arch"
    arch = open_archive(root)
    mem = make_memory(num_windows=3, tokens=(64, 64, 64), head_dim=64)
    for _ in range(3):
        arch.put(make_record("a"), mem)
    arch.put(make_record("b"), mem)
    # a write that was never committed (as left by a killed writer)
    from storage import codec

    arch._table("vst_kv").add(
        codec.memory_to_arrow(mem, video_id=video_id("c"), fingerprint=FP, write_id="dead")
    )
    st = arch.stats()
    assert (st["videos"], st["indexed"], st["windows"], st["kv_bytes"]) == (2, 2, 6, 2 * mem.nbytes)
    assert st["garbage_rows"] == 4
    rep = arch.verify()
    assert rep.ok and rep.garbage_rows == 4 and rep.blobs_checked == 8
    before = sum(st["disk_bytes"].values())
    out = arch.compact(older_than=timedelta(0), garbage_grace=timedelta(0))
    assert out["garbage_rows_deleted"] == 4
    st2 = arch.stats()
    assert st2["garbage_rows"] == 0 and st2["vst_kv_rows"] == 8
    assert sum(st2["disk_bytes"].values()) < before
    assert arch.load_memory(video_id("a"), FP).equal(mem)
    assert arch.verify().ok
    assert os.path.isdir(root / "videos.lance")


# -- read caches: kept snapshots, cached K/V rows, direct sidecar reads ---------------------------
def _big_memory(seed: int, **kw):
    """Windows large enough for Lance to keep them in blob sidecar files (read directly)."""
    return make_memory(seed=seed, num_windows=3, tokens=(300, 301, 302), head_dim=32, **kw)


def test_cached_reads_use_sidecars_and_follow_replacement(arch):
    m1, m2 = _big_memory(1), _big_memory(2)
    rec = arch.put(make_record("a"), m1)
    assert arch.load_memory(rec.video_id, FP).equal(m1)
    _, _, rows = arch._committed(rec.video_id, FP)
    assert any("_blob" in r for r in rows)  # the direct path is really taken
    assert arch.load_memory(rec.video_id, FP).equal(m1)  # from the caches
    rec2 = arch.put(make_record("a"), m2)  # same key, new write: the next load must see it
    assert rec2.write_id != rec.write_id
    assert arch.load_memory(rec.video_id, FP).equal(m2)
    other = open_archive(arch.uri)  # a second handle (another reader) sees its puts at once
    other.load_memory(rec.video_id, FP)
    arch.put(make_record("a"), m1)
    assert other.load_memory(rec.video_id, FP).equal(m1)
    arch.rm(rec.video_id)
    with pytest.raises(VideoNotFound):
        other.load_memory(rec.video_id, FP)


def test_cached_reads_survive_compaction(arch):
    mems = {n: _big_memory(i) for i, n in enumerate("abc")}
    for n, m in mems.items():
        arch.put(make_record(n), m)
    for n, m in mems.items():
        assert arch.load_memory(video_id(n), FP).equal(m)
    before = {k: [r["_rowaddr"] for r in v] for k, v in arch._kv_cache.items()}
    arch.compact(older_than=timedelta(0), garbage_grace=timedelta(0))  # new fragments, old files gone
    for n, m in mems.items():
        assert arch.load_memory(video_id(n), FP).equal(m)
    after = {k: [r["_rowaddr"] for r in v] for k, v in arch._kv_cache.items()}
    assert after.keys() == before.keys() and after != before  # stale addresses were re-read
    assert arch.load_memory(video_id("b"), FP, windows=[2]).equal(mems["b"].select([2]))


def test_stale_blob_location_falls_back_to_lance(arch, monkeypatch, caplog):
    """A fast-path read that fails its checksums is re-read through Lance, counted and logged with
    the video's id (storage/blobread.py: the one module that relies on Lance's blob layout)."""
    from storage import blobread

    mem = _big_memory(5)
    rec = arch.put(make_record("a"), mem)
    arch.load_memory(rec.video_id, FP)
    before = blobread.counters()
    assert before["direct_blobs"] > 0  # the fast path was taken for the first load
    (rows,) = arch._kv_cache.values()
    for r in rows:  # poison the cache: every sidecar location points at the wrong bytes
        if "_blob" in r:
            path, off, size = r["_blob"]
            r["_blob"] = (path, off + 8, size)
    poisoned = [r["_blob"] for r in rows if "_blob" in r]
    assert poisoned
    with caplog.at_level("WARNING", logger="vxl.storage.blobread"):
        assert arch.load_memory(rec.video_id, FP).equal(mem)  # checksums catch it; Lance re-reads
    assert blobread.counters()["fallbacks"] == before["fallbacks"] + 1
    assert [r for r in caplog.records if rec.video_id in r.getMessage() and "through Lance" in r.getMessage()]
    assert (rec.key, rec.write_id) not in arch._kv_cache  # the stale entry is dropped
    assert arch.load_memory(rec.video_id, FP).equal(mem)
    fresh = [r["_blob"] for r in arch._kv_cache[(rec.key, rec.write_id)] if "_blob" in r]
    assert [(p, o + 8, n) for p, o, n in fresh] == poisoned


def test_forged_sizes_are_refused_before_any_allocation(tmp_path):
    """A `vst_kv` row whose shape, token count and byte count were changed together (consistent with
    each other, so per-row checks pass) asks for about 128 GB: the load refuses it from the videos
    row's total before allocating (issue 15: sizes read from the archive drove allocations)."""
    from storage import CorruptBlob

    arch = open_archive(tmp_path / "a")
    mem = make_memory(num_windows=3)
    rec = make_record("a")
    arch.put(rec, mem)
    L, two, H, T, D = mem.window_kv[1].shape
    huge_t = 2_000_000_000  # num_tokens is int32
    nbytes = L * two * H * huge_t * D * 2  # float16
    arch._table("vst_kv").update(where=f"video_id = '{rec.video_id}' AND window = 1",
                                 values={"shape": [L, two, H, huge_t, D], "num_tokens": huge_t, "nbytes": nbytes})
    fresh = open_archive(tmp_path / "a", create=False)
    with pytest.raises(CorruptBlob, match="sum to"):
        fresh.load_memory(rec.video_id, rec.model_fingerprint)
