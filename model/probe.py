"""The numerics canary: a small fixed input whose memory and next-token logits an archive records.

Two environments with the same model fingerprint (same weights, config, tokenizer, dtype) must
make the same memories up to kernel rounding; a newer transformers, torch or CUDA that changes the
computation beyond that must not mix its memories into an archive silently. At the first index
into an archive, the probe of each model is stored (`storage` table `probes`); every later process
that indexes into or answers from the archive recomputes it when it loads the model and compares
(`compare_probes`). docs/OPERATIONS.md, "Numerics canary", says what to do when it refuses.

The input: `probe_frames(config)`, frames made by arithmetic (no random generator, no file), two
windows' worth (a full window of `beacon_window` tokens and one more frame), non-square so that
the resize and crop run; planned with the fixed planner at ratio 8; question `PROBE_QUESTION`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch

#: Bump when the probe input or what is recorded changes (probes of another version do not compare).
PROBE_VERSION = 1
PROBE_QUESTION = "What happens in the video, and in what order?"
PROBE_RATIO = 8
PROBE_FRAME_HW = (90, 160)
"""height, width of the probe frames, pixels (resized and cropped by the model's preprocessing)."""

#: Relative tolerance per dtype: max |a - b| <= tol * max |reference|, on the memory and on the logits
#: separately. Measured on the tiny and oracle models, float32, CPU (docs/PERFORMANCE.md, "Numerics
#: canary"): sdpa against eager attention differs by 2e-7 to 4e-7, 1 thread against 2 by 0; adding 1e-3
#: to every attention output (the drift test) moves the probe by 9e-4 to 4e-3. float32: 2e-4, 500x the
#: kernel noise and 4x below that drift. bfloat16/float16: 2e-2, about 5 units in the last place of
#: bfloat16's 8-bit mantissa relative to the largest value (GPU kernels accumulate in other orders; not
#: measured here: no GPU). A GPU reading a CPU-written float32 archive with TF32 convolutions (torch's
#: default) may exceed 2e-4: that is a numerics change, and `--accept-numerics-change` records it.
TOLERANCE = {"torch.float32": 2e-4, "torch.bfloat16": 2e-2, "torch.float16": 2e-2}


@dataclass
class NumericsProbe:
    """The probe of one model in one environment.

    Attributes:
        fingerprint: the model fingerprint.
        memory: float32 `(L, 2, Hkv, M, D)`: the probe video's memory (sink + VSTs, pre-RoPE keys).
        logits: float32 `(V,)`: next-token logits of `PROBE_QUESTION` against that memory.
        token_ids: the sink's and the question's token ids (tokenization must match exactly).
        dtype: the model's dtype (`"torch.float32"`...).
        environment: `model.environment.library_versions()` of the process that computed it.
        probe_version: `PROBE_VERSION`.
    """

    fingerprint: str
    memory: np.ndarray
    logits: np.ndarray
    token_ids: list[int]
    dtype: str
    environment: dict = field(default_factory=dict)
    probe_version: int = PROBE_VERSION

    def digest(self) -> str:
        """sha256 hex of the probe's values (memory, logits, token ids): equal digests, equal probes."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.memory, dtype="<f4").tobytes())
        h.update(np.ascontiguousarray(self.logits, dtype="<f4").tobytes())
        h.update(json.dumps(self.token_ids).encode())
        return h.hexdigest()


@dataclass
class ProbeComparison:
    """`compare_probes(reference, current)`: differences relative to the reference's largest value."""

    ok: bool
    memory_rel: float
    """max |Δ memory| / max |reference memory|."""
    logits_rel: float
    """max |Δ logits| / max |reference logits|."""
    tolerance: float
    tokens_equal: bool
    reason: str = ""

    def to_dict(self) -> dict:
        return {"ok": self.ok, "memory_rel": self.memory_rel, "logits_rel": self.logits_rel,
                "tolerance": self.tolerance, "tokens_equal": self.tokens_equal, "reason": self.reason}


def probe_frames(config) -> np.ndarray:
    """uint8 `(F, H, W, 3)` probe frames: F = frames per window + 1 (two windows), H, W = PROBE_FRAME_HW.

    Smooth gradients and a moving bright square, from integer arithmetic only (identical on every
    machine and numpy version).
    """
    f = config.beacon_window // config.tokens_per_frame + 1
    h, w = PROBE_FRAME_HW
    y = np.arange(h, dtype=np.int64)[:, None]
    x = np.arange(w, dtype=np.int64)[None, :]
    frames = np.empty((f, h, w, 3), dtype=np.uint8)
    for i in range(f):
        frames[i, ..., 0] = (x * 255 // (w - 1) + 17 * i) % 256
        frames[i, ..., 1] = (y * 255 // (h - 1) + 29 * i) % 256
        frames[i, ..., 2] = ((x + y) * 3 + 41 * i) % 256
        top, left = (7 * i) % (h - 20), (11 * i) % (w - 20)
        frames[i, top : top + 20, left : left + 20] = (255, 255, 255 - 20 * i % 256)
    return frames


@torch.inference_mode()
def compute_probe(vx) -> NumericsProbe:
    """Run the probe input through `vx` (a `model.VideoXL`): encode, then next-token logits.

    Raises:
        model.environment.UpstreamDriftError: from the model's invariants, if the stack drifted.
    """
    from .environment import library_versions
    from .tokenizer import split_prompt

    frames = probe_frames(vx.config)
    memory = vx.encode(frames, vx.plan(frames.shape[0], ratio=PROBE_RATIO))
    logits = vx.next_token_logits(memory, PROBE_QUESTION)
    ids = list(vx._sink_ids) + vx._encode_text(split_prompt(PROBE_QUESTION)[1])
    return NumericsProbe(
        fingerprint=vx.fingerprint, memory=memory.kv().float().cpu().numpy(), logits=logits.float().cpu().numpy(),
        token_ids=[int(i) for i in ids], dtype=str(vx.dtype), environment=library_versions(vx.device),
    )


@torch.inference_mode()
def compute_answer_probe(vx, reference: NumericsProbe) -> NumericsProbe:
    """The answering side of the probe: next-token logits of `PROBE_QUESTION` against the
    *reference's* memory, with `vx`'s decoder only (no frames, no vision tower: what answering uses).

    `memory` is the reference's (so `compare_probes` checks the logits and the tokenization).
    """
    from .environment import library_versions
    from .memory import VSTMemory
    from .tokenizer import split_prompt

    kv = torch.from_numpy(np.array(reference.memory, dtype=np.float32)).to(vx.device, vx.dtype)  # (L, 2, Hkv, M, D)
    memory = VSTMemory(sink=kv, window_kv=[], windows=[], fingerprint=vx.fingerprint)
    logits = vx.next_token_logits(memory, PROBE_QUESTION)
    ids = list(vx._sink_ids) + vx._encode_text(split_prompt(PROBE_QUESTION)[1])
    return NumericsProbe(
        fingerprint=vx.fingerprint, memory=reference.memory, logits=logits.float().cpu().numpy(),
        token_ids=[int(i) for i in ids], dtype=str(vx.dtype), environment=library_versions(vx.device),
    )


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.abs(a).max()) if a.size else 0.0
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
    return diff / scale if scale > 0 else diff


def compare_probes(reference: NumericsProbe, current: NumericsProbe) -> ProbeComparison:
    """Compare `current` against the archive's `reference` (same fingerprint) within `TOLERANCE`.

    Not ok when the token ids differ, the shapes differ, or either relative difference exceeds the
    tolerance of the reference's dtype. Probes of another `PROBE_VERSION` are not compared (ok, with
    the reason said).
    """
    tol = TOLERANCE.get(reference.dtype, 2e-2)
    if reference.probe_version != current.probe_version:
        return ProbeComparison(True, float("nan"), float("nan"), tol, True,
                               f"probe versions {reference.probe_version} and {current.probe_version} differ; not compared")
    tokens_equal = reference.token_ids == current.token_ids
    if reference.memory.shape != current.memory.shape or reference.logits.shape != current.logits.shape:
        return ProbeComparison(False, float("inf"), float("inf"), tol, tokens_equal,
                               f"shapes differ: memory {reference.memory.shape} vs {current.memory.shape}, "
                               f"logits {reference.logits.shape} vs {current.logits.shape}")
    mem, log = _rel(reference.memory, current.memory), _rel(reference.logits, current.logits)
    ok = tokens_equal and mem <= tol and log <= tol
    reason = "" if ok else (
        "tokenization differs" if not tokens_equal else
        f"memory differs by {mem:.3g} and logits by {log:.3g} relative (tolerance {tol:g} for {reference.dtype})")
    return ProbeComparison(ok, mem, log, tol, tokens_equal, reason)
