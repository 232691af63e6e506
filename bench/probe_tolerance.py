"""Numerics canary: how far the probe moves under harmless and harmful changes (model/probe.py TOLERANCE).

    .venv/bin/python bench/probe_tolerance.py

For the tiny and the oracle model (float32, CPU): sdpa vs eager attention, 1 vs 2 threads (harmless),
1e-3 added to every attention output (the drift the canary must refuse), and bfloat16 vs float32.
Prints one row per case: relative max differences of the probe memory and logits (`compare_probes`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from model import load_model
from model.modeling import VSTAttention
from model.probe import compare_probes, compute_probe

ORACLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "oracle" / "checkpoint"


def perturbed_probe(vx):
    original = VSTAttention.forward

    def forward(self, *args, **kwargs):
        out, weights = original(self, *args, **kwargs)
        return out + 1e-3, weights

    VSTAttention.forward = forward
    try:
        return compute_probe(vx)
    finally:
        VSTAttention.forward = original


def one_thread_probe(vx):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return compute_probe(vx)
    finally:
        torch.set_num_threads(n)


def main() -> None:
    print(f"{'model':8} {'change':28} {'memory_rel':>11} {'logits_rel':>11}  refused at 2e-4")
    for name, path in (("tiny", "tiny"), ("oracle", ORACLE)):
        vx = load_model(path, device="cpu")
        t0 = time.perf_counter()
        ref = compute_probe(vx)
        print(f"{name:8} probe took {time.perf_counter() - t0:.2f} s, memory {ref.memory.shape}")
        cases = {
            "eager instead of sdpa": lambda p=path: compute_probe(load_model(p, device="cpu", attn_implementation="eager")),
            "1 thread": lambda v=vx: one_thread_probe(v),
            "+1e-3 on attention output": lambda v=vx: perturbed_probe(v),
            "bfloat16 instead of float32": lambda p=path: compute_probe(load_model(p, device="cpu", dtype="bfloat16")),
        }
        for label, fn in cases.items():
            c = compare_probes(ref, fn())
            print(f"{name:8} {label:28} {c.memory_rel:11.2e} {c.logits_rel:11.2e}  {not c.ok}")


if __name__ == "__main__":
    main()
