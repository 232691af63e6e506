"""A training sample's question turns: one batched pass against the memory, or one pass per turn.

`model.training.sample_loss` scores all of a sample's questions in one right-padded pass
(`turns_logits`, `VideoXLForCausalLM.step_rows`). This measures it side by side with the per-turn
loop it replaced (`turn_logits` once per question; same memory, same targets, same loss), forward
and backward, on toy videos rendered at their sampled times (1 fps, at most 128 frames), one
torch thread. Alternates the two variants sample by sample and prints medians, their ratio, and
the largest loss difference (the two compute the same loss up to float reordering).

    .venv/bin/python bench/turn_batching.py --model toy --videos 24 --questions 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--questions", type=int, default=9, help="questions per sample")
    ap.add_argument("--seeds", type=int, default=7_000_000)
    ap.add_argument("--ratio", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from model.training import Turn, answer_token_ids, sample_loss, turn_logits
    from model.video_xl import load_model
    from tasks.qa import TRAINING_TYPES, make_questions
    from tasks.samples import plan_toy_video, render_frames
    from tasks.video import sample_indices

    torch.set_num_threads(1)
    vx = load_model(args.model, device="cpu")
    vx.model.train()
    times: dict[str, list[float]] = {"per-turn": [], "batched": []}
    diffs, frames_total = [], 0
    for i in range(args.videos):
        truth = plan_toy_video(args.seeds + i)
        idx = sample_indices(truth["num_frames"], truth["fps"], fps=1.0, max_frames=128)
        frames = torch.from_numpy(np.stack(list(render_frames(truth, only=idx))))
        frames_total += len(idx)
        plan = vx.plan(len(idx), ratio=args.ratio)
        qs = make_questions(truth, np.random.default_rng([9, i]), TRAINING_TYPES)[: args.questions]
        turns = [Turn(q.question, q.answer) for q in qs]
        losses = {}
        order = ("per-turn", "batched") if i % 2 == 0 else ("batched", "per-turn")
        for variant in order:
            vx.model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            if variant == "batched":
                loss, _, _ = sample_loss(vx, frames, plan, turns, weighting="turn")
            else:
                memory = vx.encode_memory(frames, plan)
                loss = 0.0
                for t in turns:
                    target = answer_token_ids(vx, t.answer)
                    logits = turn_logits(vx, memory, t.question, target)
                    loss = loss + torch.nn.functional.cross_entropy(logits, torch.tensor(target)) / len(turns)
            loss.backward()
            times[variant].append(time.perf_counter() - t0)
            losses[variant] = float(loss)
        diffs.append(abs(losses["batched"] - losses["per-turn"]))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"videos": args.videos, "frames_per_video": frames_total / args.videos, "questions": args.questions,
           "median_s_per_sample": med, "speedup": med["per-turn"] / med["batched"], "max_loss_diff": max(diffs),
           "command": "python bench/turn_batching.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print("| variant | median s / sample (forward + backward) |\n|---|---|")
        for k, v in med.items():
            print(f"| {k} | {v:.3f} |")
        print(f"\nbatched is {out['speedup']:.2f}x faster; largest loss difference {out['max_loss_diff']:.1e}; "
              f"{args.videos} videos, {out['frames_per_video']:.0f} frames each on average, {args.questions} "
              f"questions per sample\n{out['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
