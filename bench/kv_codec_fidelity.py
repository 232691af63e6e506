"""Fidelity of the archive's K/V codecs (storage/kvcodec.py) against raw memories.

For each model (the oracle checkpoint in tests/data/oracle/checkpoint, the built-in tiny model)
it encodes a few videos into memories, then for every codec variant (the registry's `int8`/`int4`
and the grouping alternatives measured to choose them) it round-trips every window row through the
codec (sink kept raw unless the variant says otherwise) and compares, per question:

  * max and mean |Δ logits| over the vocabulary, over 32 answer positions;
  * KL(raw || quantized) of the next-token distribution (nats, mean over the 32 positions; max);
  * greedy-token agreement over 32 tokens: teacher-forced (the raw model's greedy continuation is
    fed to both; fraction of the 32 positions whose argmax agrees), and free-running (the quantized
    memory's own greedy 32 tokens equal to the raw ones, up to the first difference);
  * the memory error itself: max |Δ| / max |x| of keys and values, and bytes / raw bytes (at these
    models' geometry: head dim 16, float32 unless --dtype; bench/archive_io.py has Video-XL-7B's).

A first row, the noise floor, moves every window value of the raw memory by one unit in the last
place of its dtype: what the same metrics give for a numerically insignificant change (these
random-weight models have near-tied logits, so a free-running greedy decode can flip on it).

Also: a zstd stage (pyarrow's zstd, level 3) over raw and quantized blobs: compressed / input bytes.

    .venv/bin/python bench/kv_codec_fidelity.py [--models oracle tiny] [--tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.memory import VSTMemory  # noqa: E402
from storage import kvcodec  # noqa: E402
from storage.kvcodec import KVCodec  # noqa: E402

QUESTIONS = (
    "What happens first in the video?",
    "Describe the video in detail.",
    "What color is the moving square, and where does it go?",
)


def variants() -> list[KVCodec]:
    """The registry's codecs and the grouping alternatives measured against them."""
    out = [kvcodec.KV_CODECS["int8"], kvcodec.KV_CODECS["int4"]]
    for bits in (8, 4):
        def v(name, bits=bits, **kw):
            return KVCodec(f"int{bits} {name}", bits=bits, **{"key_axis": "channel", "value_axis": "channel", **kw})

        out += [
            v("K channel/32 V channel/128", key_group=32),
            v("K channel/64 V channel/128", key_group=64),
            v("K token/128 V channel/128", key_axis="token"),
            v("K channel/128 V channel/32", value_group=32),
            v("K channel/128 V channel/64", value_group=64),
            v("K channel/128 V token/128", value_axis="token"),
            v("K token/128 V token/128", key_axis="token", value_axis="token"),
            v("K channel/128 V channel/128, sink quantized", sink_raw=False),
        ]
    return out


def label(c: KVCodec) -> str:
    if c.name in kvcodec.KV_CODECS:
        return f"{c.name} (K {c.key_axis}/{c.key_group} V {c.value_axis}/{c.value_group})"
    return c.name


NOISE_FLOOR = KVCodec("noise floor: raw, every window value moved 1 ulp")


def ulp_noise(t: torch.Tensor, seed: int) -> torch.Tensor:
    """`t` with every value moved by one unit in the last place of its dtype, up or down at random."""
    ints = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype]
    g = torch.Generator().manual_seed(seed)
    step = torch.randint(0, 2, t.shape, generator=g, dtype=ints) * 2 - 1
    return (t.contiguous().view(ints) + step).view(t.dtype)


def roundtrip(mem: VSTMemory, c: KVCodec) -> tuple[VSTMemory, int, int]:
    """(memory after encode + decode with `c`, bytes stored, raw bytes), as the archive would store it."""
    tensors = [mem.sink, *mem.window_kv]
    if c is NOISE_FLOOR:
        out = [mem.sink, *(ulp_noise(t, k) for k, t in enumerate(mem.window_kv))]
        raw = sum(t.numel() * t.element_size() for t in tensors)
        return VSTMemory(out[0], out[1:], list(mem.windows), mem.fingerprint, dict(mem.meta)), raw, raw
    out, stored, raw = [], 0, 0
    for k, t in enumerate(tensors):
        raw += t.numel() * t.element_size()
        if k == 0 and c.sink_raw:
            out.append(t)
            stored += t.numel() * t.element_size()
            continue
        blob = kvcodec.encode_tensor(t, c)
        stored += blob.nbytes
        out.append(kvcodec.decode_tensor(blob, device=t.device))
    return VSTMemory(out[0], out[1:], list(mem.windows), mem.fingerprint, dict(mem.meta)), stored, raw


def oracle_frames(case: str, repeat: int = 1) -> np.ndarray:
    f = np.load(ROOT / "tests" / "data" / "oracle" / "cases" / case / "frames.npy")
    return np.concatenate([f] * repeat) if repeat > 1 else f


def synthetic_frames(n: int, h: int = 336, w: int = 336) -> np.ndarray:
    """Integer-arithmetic frames (gradients and a moving square, as model.probe), n of them."""
    y = np.arange(h, dtype=np.int64)[:, None]
    x = np.arange(w, dtype=np.int64)[None, :]
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        frames[i, ..., 0] = (x * 255 // (w - 1) + 17 * i) % 256
        frames[i, ..., 1] = (y * 255 // (h - 1) + 29 * i) % 256
        frames[i, ..., 2] = ((x + y) * 3 + 41 * i) % 256
        top, left = (7 * i) % (h - 40), (11 * i) % (w - 40)
        frames[i, top : top + 40, left : left + 40] = (255, 255 - 9 * i % 256, 20 * i % 256)
    return frames


@dataclass
class Run:
    """Reference outputs of one (memory, question): raw greedy tokens and teacher-forced logits."""

    ids: list[int]
    greedy: list[int]
    logits: torch.Tensor  # (tokens, V) float32


@torch.inference_mode()
def teacher_forced(vx, mem: VSTMemory, ids: list[int], cont: list[int]) -> torch.Tensor:
    """float32 logits `(len(cont), V)`: after the question, then after each of cont[:-1]."""
    cache = vx.model.rotated_cache(mem.kv().to(vx.device, vx.dtype))
    return vx.model.step(vx._embed_ids(ids + cont[:-1]), cache, logits_for_last=len(cont)).float()


@torch.inference_mode()
def greedy(vx, mem: VSTMemory, ids: list[int], n: int) -> list[int]:
    """n greedy tokens (no stop at EOS: every position is compared)."""
    cache = vx.model.rotated_cache(mem.kv().to(vx.device, vx.dtype))
    logits = vx.model.step(vx._embed_ids(ids), cache, logits_for_last=1)[0]
    out = []
    for _ in range(n):
        nxt = int(torch.argmax(logits))
        out.append(nxt)
        logits = vx.model.step(vx._embed_ids([nxt]), cache, logits_for_last=1)[0]
    return out


def reference(vx, mem: VSTMemory, question: str, n: int) -> Run:
    from model.tokenizer import split_prompt

    ids = vx._encode_text(split_prompt(question)[1])
    g = greedy(vx, mem, ids, n)
    return Run(ids, g, teacher_forced(vx, mem, ids, g))


def compare(vx, ref: Run, qmem: VSTMemory, n: int) -> dict:
    lq = teacher_forced(vx, qmem, ref.ids, ref.greedy)
    d = (lq - ref.logits).abs()
    lp, lqq = torch.log_softmax(ref.logits.double(), -1), torch.log_softmax(lq.double(), -1)  # KL in float64
    kl = (lp.exp() * (lp - lqq)).sum(-1)  # (n,)
    agree_tf = float((lq.argmax(-1) == ref.logits.argmax(-1)).float().mean())
    free = greedy(vx, qmem, ref.ids, n)
    prefix = next((i for i, (a, b) in enumerate(zip(free, ref.greedy, strict=True)) if a != b), n)
    return {"max_dlogit": float(d.max()), "mean_dlogit": float(d.mean()), "kl_mean": float(kl.mean()),
            "kl_max": float(kl.max()), "agree_tf": agree_tf, "free_prefix": prefix / n}


def mem_error(mem: VSTMemory, qmem: VSTMemory) -> tuple[float, float]:
    a, b = mem.kv().float(), qmem.kv().float()
    k = float((a[:, 0] - b[:, 0]).abs().max() / a[:, 0].abs().max())
    v = float((a[:, 1] - b[:, 1]).abs().max() / a[:, 1].abs().max())
    return k, v


def zstd_ratio(mem: VSTMemory, c: KVCodec | None, level: int = 3) -> tuple[float, float]:
    """(compressed / input bytes, decompression MB/s of input) of the window blobs under zstd."""
    import pyarrow as pa

    blobs = []
    for t in mem.window_kv:
        if c is None:
            blobs.append(t.contiguous().view(-1).view(torch.uint8).numpy())
        else:
            blobs.append(kvcodec.encode_tensor(t, c)[kvcodec.HEADER_BYTES:])
    data = np.concatenate(blobs)
    zc = pa.Codec("zstd", compression_level=level)
    comp = zc.compress(data, asbytes=True)
    t0 = time.perf_counter()
    zc.decompress(comp, decompressed_size=data.nbytes, asbytes=True)
    dt = time.perf_counter() - t0
    return len(comp) / data.nbytes, data.nbytes / dt / 1e6


def memories(model: str, vx) -> list[tuple[str, VSTMemory]]:
    out = []
    if model == "oracle":
        specs = [("f12_r8 (12 frames, r8)", oracle_frames("f12_r8"), 8),
                 ("f12_r8 x4 (48 frames, r4)", oracle_frames("f12_r8", 4), 4),
                 ("f12_r8 x4 (48 frames, r16)", oracle_frames("f12_r8", 4), 16)]
    else:
        specs = [("synthetic 12 frames, r8", synthetic_frames(12), 8),
                 ("synthetic 48 frames, r4", synthetic_frames(48), 4),
                 ("synthetic 48 frames, r16", synthetic_frames(48), 16)]
    for name, frames, ratio in specs:
        mem = vx.encode(frames, vx.plan(frames.shape[0], ratio=ratio))
        out.append((f"{name}: {mem.num_vst} VSTs in {len(mem.windows)} windows "
                    f"({', '.join(str(w.num_vst) for w in mem.windows)})", mem))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["oracle", "tiny"])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default=None, help="model dtype (default: the checkpoint's, float32 here)")
    ap.add_argument("--quick", action="store_true", help="registry codecs only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from model import load_model

    print(f"# torch {torch.__version__}, {args.threads} thread(s), {args.tokens} tokens per question, "
          f"{len(QUESTIONS)} questions per memory")
    codecs = [NOISE_FLOOR, kvcodec.KV_CODECS["int8"], kvcodec.KV_CODECS["int4"]]
    codecs += [] if args.quick else variants()[2:]
    for model in args.models:
        path = ROOT / "tests" / "data" / "oracle" / "checkpoint" if model == "oracle" else model
        vx = load_model(path, device="cpu", dtype=args.dtype)
        mems = memories(model, vx)
        print(f"\n## {model} ({vx.dtype}); memories:")
        for name, _ in mems:
            print(f"#  {name}")
        refs = {(mi, q): reference(vx, m, q, args.tokens) for mi, (_, m) in enumerate(mems) for q in QUESTIONS}
        # logit scale, to read |Δ logits| against
        scale = max(float(r.logits.abs().max()) for r in refs.values())
        spread = float(np.mean([float(r.logits.std(-1).mean()) for r in refs.values()]))
        print(f"#  raw logits: max |logit| {scale:.3f}, mean std over the vocabulary {spread:.3f}")
        hdr = (f"| {'codec':<42} | bytes/raw | K err | V err | max Δlogit | mean Δlogit | KL mean | KL max "
               f"| greedy agree (forced) | greedy prefix (free) |")
        print(hdr)
        print("|" + "|".join("---" for _ in range(hdr.count("|") - 1)) + "|")
        for c in codecs:
            rows, stored, raw, kerr, verr = [], 0, 0, 0.0, 0.0
            for mi, (_, m) in enumerate(mems):
                qm, s, r = roundtrip(m, c)
                stored, raw = stored + s, raw + r
                ke, ve = mem_error(m, qm)
                kerr, verr = max(kerr, ke), max(verr, ve)
                for q in QUESTIONS:
                    rows.append(compare(vx, refs[(mi, q)], qm, args.tokens))

            def agg(k, fn=np.mean, rows=rows):
                return fn([x[k] for x in rows])

            print(f"| {label(c):<42} | {stored / raw:.3f} | {kerr:.4f} | {verr:.4f} | {agg('max_dlogit', np.max):.2e} "
                  f"| {agg('mean_dlogit'):.2e} | {agg('kl_mean'):.2e} | {agg('kl_max', np.max):.2e} "
                  f"| {agg('agree_tf'):.3f} (min {agg('agree_tf', np.min):.3f}) "
                  f"| {agg('free_prefix'):.3f} (min {agg('free_prefix', np.min):.3f}) |")
        print("\nzstd (pyarrow, level 3) over the window blobs, compressed / input bytes (decompress MB/s):")
        raw_rows = [("raw " + str(vx.dtype).removeprefix("torch."), None)]
        raw_rows += [("raw bfloat16", "bf16")] if vx.dtype != torch.bfloat16 else []
        for name, cc in (*raw_rows,
                         ("int8 payload", kvcodec.KV_CODECS["int8"]), ("int4 payload", kvcodec.KV_CODECS["int4"])):
            ratios = []
            for _, m in mems:
                mm = m.to(dtype=torch.bfloat16) if cc == "bf16" else m
                ratios.append(zstd_ratio(mm, None if cc in (None, "bf16") else cc))
            r = np.mean([x[0] for x in ratios])
            sp = np.mean([x[1] for x in ratios])
            print(f"  {name:<16} {r:.3f}  ({sp:.0f} MB/s)")


if __name__ == "__main__":
    main()
