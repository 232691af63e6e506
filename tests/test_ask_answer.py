"""`vxl ask` and tasks/ask.py: answers from the archive equal answers from a fresh encode, no
re-encoding, question-aware window loading (issue 6), multiple choice, and clear errors.

Real H.264 sample videos (conftest `sample_dir`), a real archive, the tiny model on the CPU. The
videos are indexed in-process with the indexer's own `tasks.workers.Encoder` (dynamic chunking,
tiny CLIP), so no Ray is needed here.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from storage import Archive, VideoRecord, open_archive
from tasks.ask import AskError, ask_video, get_clip, load_memory, select_windows
from tasks.video import decode, video_id

FPS = 1.5  # 30 frames of a 20 s sample: 4+ windows with dynamic chunking


def index_in_process(archive, vx, path: Path) -> VideoRecord:
    """Decode + plan (dynamic, tiny CLIP) + encode + put, as the indexer's encode worker does."""
    from model.clip_embed import TINY_CLIP
    from tasks.workers import Encoder, PlanSpec

    dec = decode(path, fps=FPS, max_frames=128)
    enc = Encoder(vx, get_clip(TINY_CLIP), PlanSpec(chunking="dynamic", clip_model=TINY_CLIP)).encode(
        dec.frames, timestamps=dec.timestamps)
    rec = VideoRecord(video_id=video_id(path), model_fingerprint=vx.fingerprint, model_name=vx.name,
                      source_uri=str(path), sampled_frames=dec.indices.tolist(),
                      sampled_times=dec.timestamps.tolist(), plan=json.dumps(enc.plan))
    return archive.put(rec, enc.memory, window_embeddings=enc.window_embeddings)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, sample_dir, tiny_vx):
    """An archive with sample_00 and sample_01 indexed; sample_01's file is then deleted."""
    root = tmp_path_factory.mktemp("ask")
    arch = open_archive(str(root / "archive"))
    gone = root / "gone.mp4"
    shutil.copy(sample_dir / "sample_01.mp4", gone)
    recs = [index_in_process(arch, tiny_vx, sample_dir / "sample_00.mp4"), index_in_process(arch, tiny_vx, gone)]
    gone.unlink()
    return arch, recs


@pytest.fixture
def no_vision(monkeypatch):
    """The vision tower raises if anything calls it."""
    from transformers import CLIPVisionModel

    def boom(*a, **k):
        raise AssertionError("vision tower called")

    monkeypatch.setattr(CLIPVisionModel, "forward", boom)


def _cli(*args):
    from flows.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


# -- select_windows (pure) ---------------------------------------------------------------------

def test_select_windows_ranks_and_keeps_ends():
    w = np.eye(6, 4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]  # (6, 4) windows 0..5
    w[4] = [0.0, 0.0, 0.9, 0.1]
    q = np.array([0.0, 0.0, 1.0, 0.0], dtype=np.float32)
    assert select_windows(q, w, 1) == [0, 2, 5]  # best is 2 (1.0 > 0.99 of window 4)
    assert select_windows(q, w, 2) == [0, 2, 4, 5]
    assert select_windows(q, w, 0) == [0, 5]  # K = 0: first and last only
    assert select_windows(q, w, 6) == list(range(6)) == select_windows(q, w, 99)
    assert select_windows(q * 7, w * 3, 2) == [0, 2, 4, 5]  # scale-free
    assert select_windows(q, w[:1], 0) == [0]
    tie = np.ones((5, 4), dtype=np.float32)
    assert select_windows(q, tie, 1) == [0, 1, 4]  # ties go to the earlier window
    with pytest.raises(ValueError, match=">= 0"):
        select_windows(q, w, -1)
    with pytest.raises(ValueError, match="width"):
        select_windows(q[:3], w, 1)


# -- equivalence with a fresh encode -----------------------------------------------------------

@pytest.mark.fidelity
def test_archive_answers_bit_identical_to_fresh_encode(indexed, tiny_vx, sample_dir):
    from model.plan import ChunkPlan

    arch, recs = indexed
    rec = arch.get_video(recs[0].video_id, tiny_vx.fingerprint)
    stored = arch.load_memory(rec.video_id, tiny_vx.fingerprint)
    dec = decode(sample_dir / "sample_00.mp4", fps=FPS, max_frames=128)
    fresh = tiny_vx.encode(dec.frames, ChunkPlan.from_dict(json.loads(rec.plan)), timestamps=dec.timestamps)
    assert stored.equal(fresh)
    for q in ("What happens first?", "Which shape appears after the cut?"):
        a, b = tiny_vx.answer(stored, q, max_new_tokens=12), tiny_vx.answer(fresh, q, max_new_tokens=12)
        assert a.token_ids == b.token_ids and a.text == b.text
        la, lb = tiny_vx.next_token_logits(stored, q), tiny_vx.next_token_logits(fresh, q)
        assert la.dtype == torch.float32 and torch.equal(la.view(torch.int32), lb.view(torch.int32))
    r = ask_video(arch.uri, rec.video_id, "What happens first?", max_new_tokens=12, vx=tiny_vx)
    assert r["answer"] == tiny_vx.answer(fresh, "What happens first?", max_new_tokens=12).text


# -- question-aware loading --------------------------------------------------------------------

def _count_blob_reads(monkeypatch) -> list[list[int]]:
    calls: list[list[int]] = []
    orig = Archive._read_blobs

    def counting(ds, rows):
        calls.append([r["window"] for r in rows])
        return orig(ds, rows)

    monkeypatch.setattr(Archive, "_read_blobs", staticmethod(counting))
    return calls


def test_top_windows_reads_only_k_plus_2_blobs(indexed, tiny_vx, monkeypatch):
    arch, recs = indexed
    vid = recs[0].video_id
    embs, spans = arch.window_embeddings(vid, tiny_vx.fingerprint)
    n = len(spans)
    assert n >= 4 and embs.shape == (n, 32)
    q = "a red circle appears"
    want = select_windows(get_clip("vxl-tiny-clip").embed_text([q])[0], embs, 1)
    calls = _count_blob_reads(monkeypatch)
    mem, used, _, _ = load_memory(arch, tiny_vx, vid, q, top_windows=1)
    assert used == want and len(want) == 3 and want[0] == 0 and want[-1] == n - 1
    assert calls == [[-1, *want]]  # the sink + K + 2 windows, nothing else
    assert [w.index for w in mem.windows] == want
    full = arch.load_memory(vid, tiny_vx.fingerprint)
    assert mem.equal(full.select(want))

    calls.clear()
    mem0, used0, _, _ = load_memory(arch, tiny_vx, vid, q, top_windows=0)
    assert used0 == [0, n - 1] and calls == [[-1, 0, n - 1]]
    for k in (n, n + 5):
        memk, usedk, _, _ = load_memory(arch, tiny_vx, vid, q, top_windows=k)
        assert usedk == list(range(n)) and memk.equal(full)
    with pytest.raises(AskError) as e:
        load_memory(arch, tiny_vx, vid, q, top_windows=-1)
    assert e.value.kind == "usage"


def test_cli_ask_json_top_windows_without_video_or_vision(indexed, tiny_vx, no_vision):
    arch, recs = indexed
    gone = recs[1]  # its file was deleted after indexing
    assert not Path(gone.source_uri).exists()
    res = _cli("ask", "--archive", arch.uri, "--video", gone.video_id, "--json", "--max-new-tokens", 8,
               "What happens at the end?")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) >= {"video_id", "question", "answer", "ttft_s", "total_s", "num_tokens", "windows"}
    assert out["video_id"] == gone.video_id and out["num_tokens"] <= 8
    mem = arch.load_memory(gone.video_id, tiny_vx.fingerprint)
    assert out["answer"] == tiny_vx.answer(mem, "What happens at the end?", max_new_tokens=8).text
    assert out["windows"] == list(range(len(mem.windows)))

    res = _cli("ask", "--archive", arch.uri, "--video", gone.video_id[:20], "--json", "--top-windows", 1, "red?")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert len(out["windows"]) == 3 and out["windows"][0] == 0 and out["windows"][-1] == len(mem.windows) - 1

    res = _cli("ask", "--archive", arch.uri, "--video", gone.video_id, "What happens?")  # human output
    assert res.exit_code == 0 and "time to first token" in res.output and "tokens/s" in res.output


def test_cli_ask_by_path_and_multiple_choice(indexed, tiny_vx, sample_dir, tmp_path):
    arch, recs = indexed
    path = sample_dir / "sample_00.mp4"
    opts = ["a red circle appears", "a blue square moves", "nothing happens"]
    args = ["ask", "--archive", arch.uri, "--video", path, "--json"]
    res = _cli(*args, *sum((["--choice", o] for o in opts), []), "What happens first?")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    mem = arch.load_memory(recs[0].video_id, tiny_vx.fingerprint)
    scores = tiny_vx.score_options(mem, "What happens first?", opts)
    assert out["video_id"] == recs[0].video_id and out["scores"] == scores
    assert out["chosen"] == int(np.argmax(scores)) and out["answer"] == opts[out["chosen"]]
    qf = tmp_path / "q.json"
    qf.write_text(json.dumps({"question": "What happens first?", "choices": opts}))
    res2 = _cli(*args, "--question-file", qf)
    assert res2.exit_code == 0, res2.output
    assert json.loads(res2.output)["scores"] == scores
    res3 = _cli("ask", "--archive", arch.uri, "--video", path, *sum((["--choice", o] for o in opts), []), "first?")
    assert res3.exit_code == 0 and "*" in res3.output


# -- bad input ---------------------------------------------------------------------------------

def test_cli_ask_bad_input(indexed, tiny_vx, tmp_path):
    arch, recs = indexed
    vid = recs[0].video_id
    cases = [
        (["--video", "xxh3-128:" + "0" * 32, "what?"], 2, "not in archive|no video with id"),
        (["--video", str(tmp_path / "missing.mp4"), "what?"], 2, "no video file"),
        (["--video", vid, "   "], 2, "question is empty"),
        (["--video", vid, "word " * 40000], 2, "context limit"),
        (["--video", vid, "--max-new-tokens", 0, "what?"], 2, "max-new-tokens"),
        (["--video", vid, "--choice", "", "what?"], 2, "choices"),
    ]
    for args, code, msg in cases:
        res = _cli("ask", "--archive", arch.uri, *args)
        assert res.exit_code == code, (args[:3], res.output)
        assert re.search(msg, res.output), res.output
    res = _cli("ask", "--archive", tmp_path / "no-archive", "--video", vid, "what?")
    assert res.exit_code == 1 and "no archive" in res.output


def test_cli_ask_other_model_and_corrupt_blob(indexed, tiny_vx, tmp_path):
    arch, recs = indexed
    mem = arch.load_memory(recs[0].video_id, tiny_vx.fingerprint)
    root = tmp_path / "arch2"
    arch2 = open_archive(str(root))
    other = "e" * 64
    arch2.put(dataclasses.replace(recs[0], model_fingerprint=other, model_name="other-model", write_id=None),
              dataclasses.replace(mem, fingerprint=other))
    res = _cli("ask", "--archive", root, "--video", recs[0].video_id, "--json", "what?")
    assert res.exit_code == 4, res.output
    err = json.loads(res.output.splitlines()[0])
    assert err["error_kind"] == "fingerprint_mismatch"
    assert other in err["error"] and tiny_vx.fingerprint in err["error"] and recs[0].video_id in err["error"]

    root = tmp_path / "arch3"  # a fresh archive: the bytes below must occur in one write only
    open_archive(str(root)).put(dataclasses.replace(recs[0], write_id=None), mem)
    assert _cli("ask", "--archive", root, "--video", recs[0].video_id, "what?").exit_code == 0
    needle = mem.window_kv[1].contiguous().view(torch.uint8).numpy().tobytes()[200:264]
    hits = 0
    for p in (root / "vst_kv.lance" / "data").rglob("*"):
        data = p.read_bytes() if p.is_file() else b""
        pos = data.find(needle)
        if pos >= 0:  # flip one byte of every copy Lance holds
            with open(p, "r+b") as f:
                f.seek(pos + 30)
                f.write(bytes([data[pos + 30] ^ 0xFF]))
            hits += 1
    assert hits >= 1, "blob bytes not found"
    res = _cli("ask", "--archive", root, "--video", recs[0].video_id, "what?")
    assert res.exit_code == 4, res.output
    assert re.search(r"window \d+: checksum", res.output), res.output
    assert recs[0].video_id in res.output and "re-index" in res.output


def test_top_windows_never_loads_a_weights_path_named_by_the_archive(indexed, tiny_vx, monkeypatch, tmp_path):
    """A CLIP weights path read from the archive is data, not configuration: answering refuses to
    load it and asks for --clip-weights; the configured file is the only one loaded (issue 15)."""
    import tasks.ask as ask

    arch, recs = indexed
    vid = recs[0].video_id
    planted = tmp_path / "planted.pt"
    planted.write_bytes(b"not weights")
    monkeypatch.setattr(ask, "clip_model_for", lambda rec, name: ("vxl-tiny-clip", str(planted), None))
    loaded = []
    real_get_clip = ask.get_clip

    def spy(name, weights=None):
        loaded.append(weights)
        return real_get_clip(name)  # the random tiny CLIP the videos were indexed with

    monkeypatch.setattr(ask, "get_clip", spy)
    monkeypatch.delenv("VXL_CLIP_WEIGHTS", raising=False)
    with pytest.raises(AskError) as e:
        load_memory(arch, tiny_vx, vid, "a red circle", top_windows=1)
    assert e.value.kind == "clip_mismatch" and "--clip-weights" in str(e.value) and str(planted) in str(e.value)
    assert loaded == []  # nothing was loaded
    configured = tmp_path / "configured.pt"
    monkeypatch.setenv("VXL_CLIP_WEIGHTS", str(configured))
    _, used, _, _ = load_memory(arch, tiny_vx, vid, "a red circle", top_windows=1)
    assert loaded == [str(configured)] and len(used) == 3
