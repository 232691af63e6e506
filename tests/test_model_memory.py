"""VSTMemory: sizes, plain-bytes round trip, determinism across processes, no global random state."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from model.memory import VSTMemory, WindowSpan
from model.plan import ChunkPlan, PlannedWindow, plan_fixed

ROOT = Path(__file__).resolve().parents[1]


def _frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 336, 336, 3), dtype=np.uint8)


@pytest.mark.parametrize("num_frames,ratio", [(10, 8), (12, 8), (12, 7), (25, 32), (3, 7), (1, 1)])
def test_memory_size_is_sink_plus_vst_counts(tiny_vx, num_frames, ratio):
    frames = _frames(num_frames, seed=num_frames)
    plan = tiny_vx.plan(frames, ratio=ratio)
    mem = tiny_vx.encode(frames, plan)
    # independent count: carry the remainder window by window
    expect, carry = [], 0
    for s in range(0, num_frames, 10):
        n = (min(s + 10, num_frames) - s) * 144
        expect.append((n + carry) // ratio)
        carry = (n + carry) % ratio
    assert [w.num_vst for w in mem.windows] == expect
    assert mem.sink_tokens == 14
    assert mem.num_tokens == 14 + sum(expect)
    cfg = tiny_vx.config
    assert mem.nbytes == mem.num_tokens * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim_ * 4
    assert [(w.frame_start, w.frame_end) for w in mem.windows] == [
        (s, min(s + 10, num_frames)) for s in range(0, num_frames, 10)]


def test_fixed_plan_accepts_any_positive_ratio_and_is_deterministic():
    for r in (1, 2, 7, 8, 16, 32, 1441):
        a = plan_fixed(33, tokens_per_frame=144, window_tokens=1440, ratio=r)
        assert a == plan_fixed(33, tokens_per_frame=144, window_tokens=1440, ratio=r)
        assert [w.num_frames for w in a.windows] == [10, 10, 10, 3]
        assert ChunkPlan.from_dict(a.to_dict()) == a
    for bad in (0, -1, 2.5, "8", True):
        with pytest.raises(ValueError, match="ratio"):
            plan_fixed(10, tokens_per_frame=144, window_tokens=1440, ratio=bad)


def _to_bytes(mem: VSTMemory) -> list[tuple[tuple, str, bytes]]:
    tensors = [mem.sink, *mem.window_kv]
    return [(tuple(t.shape), str(t.dtype), t.contiguous().view(torch.uint8).numpy().tobytes()) for t in tensors]


def _from_bytes(parts, windows, fingerprint) -> VSTMemory:
    tensors = []
    for shape, dtype, raw in parts:
        dt = getattr(torch, dtype.split(".")[1])
        tensors.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dt).reshape(shape))
    return VSTMemory(sink=tensors[0], window_kv=tensors[1:], windows=list(windows), fingerprint=fingerprint)


def test_bytes_round_trip_gives_identical_logits_and_answer(tiny_vx):
    frames = _frames(14, seed=3)
    mem = tiny_vx.encode(frames, tiny_vx.plan(frames, ratio=8))
    back = _from_bytes(_to_bytes(mem), mem.windows, mem.fingerprint)
    assert back.equal(mem)
    q = "What happens first?"
    a, b = tiny_vx.next_token_logits(mem, q), tiny_vx.next_token_logits(back, q)
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))
    assert tiny_vx.answer(mem, q, max_new_tokens=6).token_ids == tiny_vx.answer(back, q, max_new_tokens=6).token_ids


def test_select_subset_is_a_valid_compacted_memory(tiny_vx):
    frames = _frames(25, seed=4)
    mem = tiny_vx.encode(frames, tiny_vx.plan(frames, ratio=16), timestamps=np.arange(25) * 0.5)
    sub = mem.select([2, 0])
    assert [w.index for w in sub.windows] == [0, 2]
    assert sub.num_tokens == 14 + mem.windows[0].num_vst + mem.windows[2].num_vst
    assert torch.equal(sub.kv(), torch.cat([mem.sink, mem.window_kv[0], mem.window_kv[2]], dim=3))
    assert mem.windows[1].start_s == 5.0 and mem.windows[1].end_s == 9.5
    assert mem.windows_in_time_range(5.0, 6.0) == [1]
    logits = tiny_vx.next_token_logits(sub, "What is in the first and last part?")
    assert torch.isfinite(logits).all()
    with pytest.raises(KeyError):
        mem.select([7])


def _digest(mem: VSTMemory) -> str:
    h = hashlib.sha256()
    for shape, dtype, raw in _to_bytes(mem):
        h.update(repr((shape, dtype)).encode())
        h.update(raw)
    return h.hexdigest()


def test_same_frames_same_memory_in_two_processes(tiny_vx, tmp_path):
    frames = _frames(12, seed=5)
    np.save(tmp_path / "frames.npy", frames)
    script = textwrap.dedent(f"""
        import hashlib, sys, numpy as np, torch
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
        from model import load_model
        from test_model_memory import _digest
        vx = load_model("tiny", device="cpu")
        frames = np.load({str(tmp_path / 'frames.npy')!r})
        mem = vx.encode(frames, vx.plan(frames, ratio=7))
        print(vx.fingerprint, _digest(mem))
    """)
    outs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    mem = tiny_vx.encode(frames, tiny_vx.plan(frames, ratio=7))
    assert outs[0] == outs[1] == [tiny_vx.fingerprint, _digest(mem)]


def test_no_global_random_state_is_used(tiny_vx):
    from model import load_model

    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    vx = load_model("tiny", device="cpu")
    frames = _frames(11, seed=6)
    mem = vx.encode(frames, vx.plan(frames))
    vx.answer(mem, "Describe the video.", max_new_tokens=4, do_sample=True, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    assert (np_state == np.random.get_state()[1]).all()


def test_sampling_is_seeded(tiny_vx):
    frames = _frames(4, seed=7)
    mem = tiny_vx.encode(frames, tiny_vx.plan(frames))
    a = tiny_vx.answer(mem, "Describe.", max_new_tokens=8, do_sample=True, seed=1)
    b = tiny_vx.answer(mem, "Describe.", max_new_tokens=8, do_sample=True, seed=1)
    assert a.token_ids == b.token_ids


def test_memory_rejects_inconsistent_parts():
    sink = torch.zeros(2, 2, 2, 14, 16)
    with pytest.raises(ValueError, match="window 0"):
        VSTMemory(sink=sink, window_kv=[torch.zeros(2, 2, 2, 5, 16)],
                  windows=[WindowSpan(index=0, frame_start=0, frame_end=1, ratio=8, num_vst=4)])
    with pytest.raises(ValueError, match="dtype"):
        VSTMemory(sink=sink, window_kv=[torch.zeros(2, 2, 2, 4, 16, dtype=torch.bfloat16)],
                  windows=[WindowSpan(index=0, frame_start=0, frame_end=1, ratio=8, num_vst=4)])


def test_plan_validation_names_the_problem():
    plan = ChunkPlan((PlannedWindow(0, 10, 8), PlannedWindow(11, 12, 8)), 144)
    with pytest.raises(ValueError, match="window 1"):
        plan.validate(12)
    with pytest.raises(ValueError, match="covers 10 frames but the video has 12"):
        ChunkPlan((PlannedWindow(0, 10, 8),), 144).validate(12)
    with pytest.raises(ValueError, match="more than the window limit"):
        ChunkPlan((PlannedWindow(0, 11, 8),), 144).validate(11, 1440)
