"""K/V codecs (storage/kvcodec.py, issue 14): round trips within the documented bound, raw stays
bit-exact, corruption of quantized blobs is detected, recode, format 2 -> 3, answers record the codec."""

from __future__ import annotations

import json

import lance
import numpy as np
import pytest
import torch
from storage_factories import FP, downgrade_archive, make_memory, make_record, video_id
from test_storage_archive import _blob_files, _flip_in_files

from storage import CorruptBlob, codec, kvcodec, open_archive
from storage.kvcodec import KV_CODECS, KVCodec
from storage.schema import FORMAT_VERSION, SCHEMAS

QUANTIZED = [n for n, c in KV_CODECS.items() if not c.is_raw]
ULP_HALF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
"""half a unit in the last place, relative: the cast of the decoded float32 to the memory's dtype."""


def _assert_within_bound(x: torch.Tensor, blob: np.ndarray, got: torch.Tensor) -> None:
    """|x - decoded| <= scale / 2 of each value's group, up to float32 rounding of `min + code * scale`
    (a few ulps of the largest magnitude) and the final cast to the memory's dtype (half an ulp)."""
    bound = kvcodec.group_error_bound(blob)  # (L, 2, Hkv, T, D) scale / 2
    xf, gf = x.float(), got.float()
    top = float(xf.abs().max()) if xf.numel() else 0.0
    slack = 2.0**-21 * top + ULP_HALF[got.dtype] * gf.abs() * 2 + 1e-30
    err = (xf - gf).abs()
    assert bool((err <= bound + slack).all()), float((err - bound - slack).max())


@pytest.mark.parametrize("name", QUANTIZED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tensor_round_trip_within_half_a_step(name, dtype):
    g = torch.Generator().manual_seed(7)
    for shape in [(2, 2, 3, 200, 32), (1, 2, 2, 37, 16), (2, 2, 2, 1, 8), (1, 2, 1, 64, 6), (2, 2, 2, 0, 16)]:
        # an outlier channel, as in real keys, and per-channel offsets
        x = torch.randn(shape, generator=g) * torch.linspace(0.1, 3.0, shape[-1]) + torch.randn(shape[-1], generator=g)
        x = x.to(dtype)
        c = KV_CODECS[name]
        blob = kvcodec.encode_tensor(x, c)
        want = kvcodec.encoded_nbytes(c, shape, dtype)
        assert want is None or blob.nbytes == want
        got32 = kvcodec.decode_tensor(blob, shape=shape, dtype=dtype, out_dtype=torch.float32)
        _assert_within_bound(x, blob, got32)
        got = kvcodec.decode_tensor(blob, shape=shape, dtype=dtype)
        assert got.dtype == dtype and got.shape == shape
        _assert_within_bound(x, blob, got)
        if shape[3]:
            levels = (1 << c.bits) - 1
            step = kvcodec.group_error_bound(blob) * 2
            assert bool((step <= (x.float().amax() - x.float().amin()) / levels * 1.01 + 1e-3).all())


def test_other_groupings_round_trip_and_constant_groups():
    x = torch.randn(2, 2, 2, 150, 64)
    x[:, :, :, :, 3] = 0.25  # a constant channel: scale 0, exact
    for c in (KVCodec("t", bits=4, key_axis="token", value_axis="token", key_group=32, value_group=16),
              KVCodec("c", bits=8, key_group=32, value_group=64), KVCodec("z", bits=4, entropy="zstd")):
        blob = kvcodec.encode_tensor(x, c)
        got = kvcodec.decode_tensor(blob)
        _assert_within_bound(x, blob, got)
        for i, axis in enumerate((c.key_axis, c.value_axis)):
            if axis == "channel":
                assert torch.equal(got[:, i, :, :, 3], x[:, i, :, :, 3])


def test_group_counts():
    assert [kvcodec.n_groups(t, 128) for t in (0, 1, 63, 64, 148, 191, 192, 720)] == [0, 1, 1, 1, 1, 1, 2, 6]
    c = KV_CODECS["int4"]
    # Video-XL-7B geometry, one window of 148 VSTs: 0.26x of bf16 with every scale and minimum
    shape = (28, 2, 4, 148, 128)
    assert kvcodec.encoded_nbytes(c, shape, torch.bfloat16) / (np.prod(shape) * 2) < 0.27
    assert kvcodec.encoded_nbytes(KV_CODECS["int8"], shape, torch.bfloat16) / (np.prod(shape) * 2) < 0.52


def test_raw_codec_stays_bit_exact_and_default(tmp_path):
    arch = open_archive(tmp_path / "arch")
    for dtype in (torch.float32, torch.bfloat16):
        mem = make_memory(dtype=dtype, num_windows=3, seed=2)
        mem.window_kv[0].view(-1)[:3] = torch.tensor([float("nan"), -0.0, float("inf")]).to(dtype)
        for kw in ({}, {"kv_codec": "raw"}):
            rec = arch.put(make_record(f"r{dtype}{kw}"), mem, **kw)
            got = arch.load_memory(rec.video_id, FP)
            assert got.equal(mem) and got.meta["kv_codec"] == "raw"
            assert rec.kv_codec == "raw" and rec.kv_bytes == rec.kv_raw_bytes == mem.nbytes


@pytest.mark.parametrize("name", QUANTIZED)
def test_archive_round_trip_per_codec(tmp_path, name):
    arch = open_archive(tmp_path / "arch")
    mem = make_memory(dtype=torch.bfloat16, num_windows=4, tokens=(150, 40, 1, 260), head_dim=32, seed=4)
    rec = arch.put(make_record("q"), mem, kv_codec=name)
    assert rec.kv_codec == name and rec.kv_raw_bytes == mem.nbytes and rec.kv_bytes < mem.nbytes
    got = arch.load_memory(rec.video_id, FP)
    assert got.meta == {"seed": 4, "kv_codec": name} and got.dtype == torch.bfloat16
    assert got.windows == mem.windows
    assert torch.equal(got.sink.view(torch.int16), mem.sink.view(torch.int16))  # the sink stays raw
    for t, g in zip(mem.window_kv, got.window_kv, strict=True):
        _assert_within_bound(t, kvcodec.encode_tensor(t, KV_CODECS[name]), g)
    part = arch.load_memory(rec.video_id, FP, windows=[3, 1], device="cpu")
    assert [w.index for w in part.windows] == [1, 3] and torch.equal(part.window_kv[1], got.window_kv[3])
    rows = arch._ds("vst_kv").to_table(columns=["window", "kv_codec", "nbytes"]).to_pylist()
    assert {r["window"]: r["kv_codec"] for r in rows} == {-1: "raw", 0: name, 1: name, 2: name, 3: name}
    assert sum(r["nbytes"] for r in rows) == rec.kv_bytes
    assert arch.get_video(rec.video_id, FP).kv_codec == name
    assert arch.verify().ok
    st = arch.stats()
    assert st["kv_codecs"] == {name: {"videos": 1, "kv_bytes": rec.kv_bytes, "kv_raw_bytes": mem.nbytes,
                                      "ratio_to_raw": rec.kv_bytes / mem.nbytes}}
    assert st["kv_bytes"] == rec.kv_bytes and st["kv_raw_bytes"] == mem.nbytes


def test_values_out_of_float16_range_are_stored_raw(tmp_path):
    arch = open_archive(tmp_path / "arch")
    mem = make_memory(dtype=torch.float32, num_windows=3, seed=1)
    mem.window_kv[1].view(-1)[5] = 1e6
    rec = arch.put(make_record("big"), mem, kv_codec="int8")
    rows = sorted(arch._ds("vst_kv").to_table(columns=["window", "kv_codec"]).to_pylist(), key=lambda r: r["window"])
    assert [r["kv_codec"] for r in rows] == ["raw", "int8", "raw", "int8"]
    got = arch.load_memory(rec.video_id, FP)
    assert torch.equal(got.window_kv[1], mem.window_kv[1])
    assert arch.verify().ok


def _quantized_rows(name="int4", **kw):
    mem = make_memory(num_windows=2, tokens=(100, 60), head_dim=16, **kw)
    tab = codec.memory_to_arrow(mem, video_id="vidQ", fingerprint=FP, write_id="w", kv_codec=name)
    rows = tab.drop(["kv"]).to_pylist()
    blobs = [bytearray(tab.column("kv")[i].as_py()) for i in range(tab.num_rows)]
    return mem, rows, blobs


def test_corrupted_quantized_blob_is_detected():
    mem, rows, blobs = _quantized_rows()
    assert codec.memory_from_rows(rows, [bytes(b) for b in blobs]).windows == mem.windows
    for pos in (3, 20, kvcodec.HEADER_BYTES + 5, len(blobs[2]) - 1):  # magic, shape, scales, codes
        b = bytearray(blobs[2])
        b[pos] ^= 0x10
        with pytest.raises(CorruptBlob, match=r"vidQ.*window 1.*checksum"):
            codec.memory_from_rows(rows, [bytes(x) for x in blobs[:2]] + [bytes(b)])
    # a header that lies, with a checksum recomputed over it (written wrong, not damaged later)
    b = bytearray(blobs[2])
    b[16 + 12] += 1  # T of the shape
    bad = dict(rows[2], checksum=codec.checksum(bytes(b)))
    with pytest.raises(CorruptBlob, match=r"window 1.*int4 blob.*shape"):
        codec.decode_blob(bad, bytes(b))
    with pytest.raises(CorruptBlob, match="int4 blob.*shape"):
        codec.check_blob(bad, bytes(b))
    # an int8 row holding an int4 blob
    with pytest.raises(CorruptBlob, match="4-bit"):
        codec.decode_blob(dict(rows[2], kv_codec="int8"), bytes(blobs[2]))


def test_corrupted_sizes_are_refused_before_allocating(tmp_path, monkeypatch):
    from storage import blobread as blobread_mod

    _, rows, _ = _quantized_rows()
    for bad in (dict(rows[1], nbytes=2**50), dict(rows[1], nbytes=3), dict(rows[0], nbytes=rows[0]["nbytes"] + 2),
                dict(rows[1], shape=[2, 2, 2, 10**12, 16]), dict(rows[1], kv_codec="int3")):
        with pytest.raises(CorruptBlob, match="window|sink"):
            codec.check_row(bad)
    arch = open_archive(tmp_path / "arch")
    mem = make_memory(num_windows=2, tokens=(100, 60), head_dim=16)
    rec = arch.put(make_record("s"), mem, kv_codec="int4")
    arch.load_memory(rec.video_id, FP)  # rows cached
    hit = arch._kv_cache[(rec.key, rec.write_id)]
    hit[2]["nbytes"] = 2**50  # a corrupted size in the (cached) row
    reads = []
    monkeypatch.setattr(blobread_mod, "pread_blobs", lambda locs: reads.append(locs) or [])
    got = arch.load_memory(rec.video_id, FP)  # refused on the cached row, read again through Lance
    assert not any(reads) and got.windows == mem.windows  # nothing read through the bad row


def test_verify_reports_flipped_quantized_bytes(tmp_path):
    root = tmp_path / "arch"
    arch = open_archive(root)
    mem = make_memory(num_windows=3, tokens=(300, 301, 302), head_dim=32, seed=9)
    rec = arch.put(make_record("v"), mem, kv_codec="int8")
    blob = kvcodec.encode_tensor(mem.window_kv[1], KV_CODECS["int8"]).tobytes()
    needle = blob[-2000:-1936]
    for p in _blob_files(root):
        data = p.read_bytes()
        pos = data.find(needle)
        if pos >= 0:
            with open(p, "r+b") as f:
                f.seek(pos + 10)
                f.write(bytes([data[pos + 10] ^ 0xFF]))
            break
    else:
        raise AssertionError("quantized blob not found on disk")
    rep = arch.verify()
    assert [(p.video_id, p.window, p.kind) for p in rep.problems] == [(rec.video_id, 1, "checksum")]
    with pytest.raises(CorruptBlob, match="window 1"):
        open_archive(root).load_memory(rec.video_id, FP)


def test_recode_rewrites_and_keeps_everything_else(tmp_path):
    arch = open_archive(tmp_path / "arch")
    mem = make_memory(dtype=torch.bfloat16, num_windows=3, tokens=(130, 20, 70), head_dim=32, seed=3)
    emb = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    rec = arch.put(make_record("r"), mem, window_embeddings=emb)
    out = arch.recode(rec.video_id, FP, "int4")
    assert (out["status"], out["from"], out["to"], out["kv_bytes_before"], out["kv_raw_bytes"]) == (
        "recoded", "raw", "int4", mem.nbytes, mem.nbytes)
    new = arch.get_video(rec.video_id, FP)
    assert new.kv_codec == "int4" and new.kv_bytes == out["kv_bytes"] < mem.nbytes
    assert (new.plan, new.indexed_at, new.memory_meta, new.sampled_frames) == (
        rec.plan, rec.indexed_at, rec.memory_meta, rec.sampled_frames)
    assert new.write_id != rec.write_id
    got = arch.load_memory(rec.video_id, FP)
    put_int4 = open_archive(tmp_path / "other").put(make_record("r"), mem, kv_codec="int4")
    want = open_archive(tmp_path / "other").load_memory(put_int4.video_id, FP)
    assert got.equal(want)  # recode from raw = indexing with int4 directly, bit for bit
    e, spans = arch.window_embeddings(rec.video_id, FP)
    assert np.array_equal(e, emb) and spans == mem.windows
    assert arch.recode(rec.video_id, FP, "int4")["status"] == "unchanged"
    assert arch.recode(rec.video_id, FP, "int4", force=True)["status"] == "recoded"
    cur = arch.load_memory(rec.video_id, FP)  # int4 of int4-dequantized values (rounded to bf16)
    for a, b in zip(want.window_kv, cur.window_kv, strict=True):
        _assert_within_bound(a, kvcodec.encode_tensor(a, KV_CODECS["int4"]), b)
    back = arch.recode(rec.video_id, FP, "raw")  # the dequantized values, stored bit-exactly
    assert back["kv_bytes"] == mem.nbytes and arch.load_memory(rec.video_id, FP).equal(cur)
    rep = arch.verify()
    assert rep.ok and rep.garbage_rows == 0
    assert len(arch._ds("vst_kv").to_table(columns=["key"])) == 4  # old rows deleted after each commit


def test_recode_loses_to_a_concurrent_write(tmp_path):
    arch = open_archive(tmp_path / "arch")
    m1, m2 = make_memory(seed=1), make_memory(seed=2)
    rec = arch.put(make_record("c"), m1)
    stale = arch.get_video(rec.video_id, FP)
    arch.put(make_record("c"), m2)  # another writer replaced the memory
    kv = codec.memory_to_arrow(m1, video_id=rec.video_id, fingerprint=FP, write_id="x" * 32, kv_codec="int8")
    import dataclasses

    ok = arch._write_and_commit(dataclasses.replace(stale, write_id="x" * 32, kv_codec="int8"), kv,
                                replaces=stale.write_id)
    assert ok is False
    assert arch.load_memory(rec.video_id, FP).equal(m2)
    assert arch.verify().ok and arch.verify().garbage_rows == 0
    arch.rm(rec.video_id)  # a removed video is not resurrected either
    assert arch._write_and_commit(dataclasses.replace(stale, write_id="y" * 32), kv, replaces=stale.write_id) is False
    assert arch.list_videos() == []


def _downgrade_to_v2(root) -> None:
    """What a vxl of format version 2 left on disk (`storage_factories.downgrade_archive`)."""
    downgrade_archive(root, "2")


def test_version_2_archive_reads_unchanged_and_takes_codecs(tmp_path):
    root = tmp_path / "arch"
    mem = make_memory(num_windows=3, seed=8)
    rec = open_archive(root).put(make_record("old"), mem)
    _downgrade_to_v2(root)
    assert "kv_codec" not in lance.dataset(str(root / "vst_kv.lance")).schema.names
    arch = open_archive(root)
    for name, want in SCHEMAS.items():
        got = arch.schema(name)
        assert got.metadata[b"vxl.format_version"] == FORMAT_VERSION.encode() == b"3", name
        assert got.names == want.names, name
    got = arch.load_memory(rec.video_id, FP)
    assert got.equal(mem) and got.meta["kv_codec"] == "raw"  # null codec = raw, bit for bit
    old = arch.get_video(rec.video_id, FP)
    assert (old.kv_codec, old.kv_raw_bytes, old.codec_name, old.raw_bytes) == (None, None, "raw", mem.nbytes)
    st = arch.stats()
    assert st["kv_codecs"]["raw"]["kv_raw_bytes"] == mem.nbytes and st["kv_over_raw"] == 1.0
    assert arch.verify().ok
    assert arch.recode(rec.video_id, FP, "int8")["status"] == "recoded"
    new = arch.put(make_record("new"), make_memory(seed=9), kv_codec="int4")
    assert arch.load_memory(new.video_id, FP).meta["kv_codec"] == "int4"
    assert set(arch.stats()["kv_codecs"]) == {"int8", "int4"} and arch.verify().ok


def test_answers_record_the_codec_they_read(tmp_path, tiny_vx):
    from model.probe import probe_frames
    from tasks.ask import Question, answer_video_questions, ask_video

    arch = open_archive(tmp_path / "arch")
    frames = probe_frames(tiny_vx.config)
    mem = tiny_vx.encode(frames, tiny_vx.plan(frames.shape[0], ratio=8))
    vid = video_id("answered")
    arch.put(make_record("answered", fingerprint=tiny_vx.fingerprint), mem, kv_codec="int4")
    rows = answer_video_questions(arch, tiny_vx, vid, [Question("What happens?"), Question("Which?", ("a", "b"))],
                                  max_new_tokens=4)
    assert [r["kv_codec"] for r in rows] == ["int4", "int4"] and all(r["status"] == "ok" for r in rows)
    arch.put_answers(rows)
    assert {r["kv_codec"] for r in arch.list_answers()} == {"int4"}
    out = ask_video(str(tmp_path / "arch"), vid, "What happens?", vx=tiny_vx, archive=arch, max_new_tokens=2)
    assert out["kv_codec"] == "int4"
    # the fingerprint is the model's: the codec is a storage property
    assert arch.get_video(vid).model_fingerprint == tiny_vx.fingerprint


def test_cli_recode_stats_ls(tmp_path):
    import typer
    from typer.testing import CliRunner

    from flows import cli_archive

    app = typer.Typer()
    cli_archive.register(app)
    root = tmp_path / "arch"
    arch = open_archive(root)
    mems = {n: make_memory(seed=i, num_windows=2, tokens=(150, 90), head_dim=64, dtype=torch.bfloat16)
            for i, n in enumerate("ab")}
    for n, m in mems.items():
        arch.put(make_record(n), m)

    def run(*a):
        return CliRunner().invoke(app, ["archive", *a, "--archive", str(root)])

    res = run("recode", video_id("a")[:8], "--kv-codec", "int4", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["recoded"], out["videos"], out["failed"]) == (1, 1, 0)
    assert out["results"][0]["from"] == "raw" and out["kv_bytes"] < out["kv_bytes_before"]
    st = json.loads(run("stats", "--json").stdout)
    raw = mems["a"].nbytes
    assert st["kv_codecs"]["raw"] == {"videos": 1, "kv_bytes": raw, "kv_raw_bytes": raw, "ratio_to_raw": 1.0}
    assert st["kv_codecs"]["int4"]["kv_raw_bytes"] == raw and st["kv_codecs"]["int4"]["ratio_to_raw"] < 0.35
    assert st["kv_raw_bytes"] == 2 * raw
    res = run("stats")
    assert res.exit_code == 0 and "int4: 1 video(s)" in res.stdout
    ls = {r["video_id"]: r for r in json.loads(run("ls", "--json").stdout)}
    assert ls[video_id("a")]["kv_codec"] == "int4" and ls[video_id("a")]["kv_raw_bytes"] == raw
    res = run("recode", "--kv-codec", "int8")
    assert res.exit_code == 0 and "recoded 2," in res.stdout
    assert run("recode", "--kv-codec", "int3").exit_code == 2
    assert run("verify").exit_code == 0
    a2 = open_archive(root)
    ds = a2._ds("vst_kv")
    rows = a2._kv_meta(a2.get_video(video_id("b"), FP), ds, cached=False)
    blob = bytes(a2._read_blobs(ds, [r for r in rows if r["window"] == 0])[0])  # as stored
    _flip_in_files(root, blob[-300:-236])  # damage b's window 0
    res = run("recode", "--kv-codec", "raw", "--json")
    assert res.exit_code == 3, res.output
    out = json.loads(res.stdout)
    assert (out["recoded"], out["failed"]) == (1, 1)
    bad = next(r for r in out["results"] if r["status"] == "failed")
    assert bad["video_id"] == video_id("b") and "checksum" in bad["error"]
    assert open_archive(root).get_video(video_id("b"), FP).kv_codec == "int8"  # left as it was
