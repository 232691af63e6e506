"""Why the toy model misses the object: two measurements behind docs/EVALUATION.md ("Stage 3").

`answers`: per-type accuracy of a model on toy videos rendered at their sampled times (no file,
fixed chunking at one ratio), on training seeds or held-out seeds. Same accuracy on both says the
model does not see the object at all (not that it memorised the training videos).

    python bench/toy_diagnostics.py answers --model toy --seeds 1000000 --videos 30 --ratio 2
    python bench/toy_diagnostics.py answers --model toy --seeds 7000000 --videos 30 --ratio 2

`frames`: per-frame accuracy of the frame-label head of a `vxl train --objective frames`
checkpoint (`trainer_state.pt` holds the head) on held-out toy videos: whether the visual tokens
carry background, object presence, colour and shape.

    python bench/toy_diagnostics.py frames --checkpoint runs/visB/checkpoints/step_001500 --videos 30

`orders`: where the ordering and counting questions fail. Event order (`--draws` questions per
video) split by how many of its 3 events are cuts (a cuts-only question is decided by the
background order alone, which `bg_order` shows the model knows), and whether the first number is
right; "which comes first" by how many scenes apart the two backgrounds are; the scene count as
(true, chosen) pairs; `event_label` (which number a quoted event line has: the lookup event order
needs, from the question text alone) and `event_pair` (which of two numbered lines happens first,
split by how many of the two are cuts), `--draws` each per video.

    python bench/toy_diagnostics.py orders --model toy --videos 40
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sampled(seed: int):
    from tasks.samples import plan_toy_video, render_frames
    from tasks.video import sample_indices

    truth = plan_toy_video(seed)
    idx = sample_indices(truth["num_frames"], truth["fps"], fps=1.0, max_frames=128)
    return truth, idx, np.stack(list(render_frames(truth, only=idx)))


def answers(args) -> dict:
    from model.video_xl import load_model
    from tasks.qa import make_questions, score_questions
    from tasks.workers import Encoder, PlanSpec

    vx = load_model(args.model, device="cpu")
    enc = Encoder(vx, None, PlanSpec(chunking="fixed", ratio=args.ratio))
    types = ["object_color", "object_shape", "event_order", "scene_count", "bg_start"]
    res: dict[str, list[bool]] = {t: [] for t in types}
    for i in range(args.videos):
        truth, idx, frames = _sampled(args.seeds + i)
        memory = enc.encode(frames, np.asarray(idx, dtype=np.float64) / truth["fps"]).memory
        for r in score_questions(vx, memory, make_questions(truth, np.random.default_rng([3, i]), types)):
            res[r["type"]].append(bool(r["correct"]))
    return {t: {"correct": sum(v), "total": len(v), "accuracy": sum(v) / max(1, len(v))} for t, v in res.items()}


def frames(args) -> dict:
    import torch

    from model.training import frame_label_logits
    from model.video_xl import load_model
    from tasks.samples import FRAME_LABELS, frame_labels

    vx = load_model(args.checkpoint, device="cpu")
    state = torch.load(Path(args.checkpoint) / "trainer_state.pt", map_location="cpu", weights_only=False)
    head = torch.nn.Linear(vx.config.hidden_size, sum(FRAME_LABELS.values()))
    head.load_state_dict(state["head"])
    pool = state["config"].get("frame_pool", "max")  # the --frame-pool it was trained with
    hits: dict[str, list[bool]] = {k: [] for k in FRAME_LABELS}
    for i in range(args.videos):
        truth, idx, fr = _sampled(args.seeds + i)
        labels = frame_labels(truth, idx)
        with torch.no_grad():  # `max`: one prediction per frame; `token`: every visual token's own
            logits, rows = frame_label_logits(vx, fr, head, pool)
        start = 0
        for name, k in FRAME_LABELS.items():
            pred = logits[:, start : start + k].argmax(1).numpy()
            y = np.repeat(labels[name], rows)
            hits[name] += list(pred[y >= 0] == y[y >= 0])
            start += k
    return {k: {"correct": int(sum(v)), "total": len(v), "accuracy": float(np.mean(v))} for k, v in hits.items()}


def orders(args) -> dict:
    from collections import Counter, defaultdict

    from model.video_xl import load_model
    from tasks.qa import make_question, score_questions
    from tasks.workers import Encoder, PlanSpec

    vx = load_model(args.model, device="cpu")
    enc = Encoder(vx, None, PlanSpec(chunking="fixed", ratio=args.ratio))
    by_cuts: dict[int, list[bool]] = defaultdict(list)
    first: list[bool] = []
    by_gap: dict[int, list[bool]] = defaultdict(list)
    count: Counter = Counter()
    labels: list[bool] = []
    pairs: dict[int, list[bool]] = defaultdict(list)
    for i in range(args.videos):
        truth, idx, frames = _sampled(args.seeds + i)
        memory = enc.encode(frames, np.asarray(idx, dtype=np.float64) / truth["fps"]).memory
        rng = np.random.default_rng([5, i])
        scenes = [s["background"] for s in truth["scenes"]]
        for _ in range(args.draws):
            q = make_question(truth, "event_order", rng)
            if q is not None:
                (r,) = score_questions(vx, memory, [q])
                cuts = sum(line.startswith(f"{n}. The scene cuts") for n in (1, 2, 3) for line in q.question.split("\n"))
                by_cuts[cuts].append(bool(r["correct"]))
                first.append(r["chosen"].split(",")[0] == q.answer.split(",")[0])
            q = make_question(truth, "bg_first", rng)
            if q is not None:
                (r,) = score_questions(vx, memory, [q])
                by_gap[abs(scenes.index(q.options[0]) - scenes.index(q.options[1]))].append(bool(r["correct"]))
        q = make_question(truth, "scene_count", rng)
        if q is not None:
            (r,) = score_questions(vx, memory, [q])
            count[f"{q.answer}->{r['chosen']}"] += 1
        label_rng = np.random.default_rng([6, i])  # their own draws: the numbers above do not move
        pair_rng = np.random.default_rng([7, i])
        for _ in range(args.draws):
            q = make_question(truth, "event_label", label_rng)
            if q is not None:
                labels.extend(bool(r["correct"]) for r in score_questions(vx, memory, [q]))
            q = make_question(truth, "event_pair", pair_rng)
            if q is not None:
                (r,) = score_questions(vx, memory, [q])
                cuts = sum(line.startswith(f"{n}. The scene cuts") for n in q.options for line in q.question.split("\n"))
                pairs[cuts].append(bool(r["correct"]))

    def acc(v):
        return {"correct": int(sum(v)), "total": len(v)}

    return {"event_order_by_cuts": {k: acc(v) for k, v in sorted(by_cuts.items())},
            "event_order_first_number": acc(first),
            "event_label": acc(labels),
            "event_pair_by_cuts": {k: acc(v) for k, v in sorted(pairs.items())},
            "bg_first_by_scene_gap": {k: acc(v) for k, v in sorted(by_gap.items())},
            "scene_count_true_to_chosen": dict(sorted(count.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("answers")
    a.add_argument("--model", default="toy")
    a.add_argument("--seeds", type=int, default=7_000_000, help="first seed (training: 1000000; held out: 7000000)")
    a.add_argument("--videos", type=int, default=30)
    a.add_argument("--ratio", type=int, default=8)
    f = sub.add_parser("frames")
    f.add_argument("--checkpoint", required=True)
    f.add_argument("--seeds", type=int, default=7_000_000)
    f.add_argument("--videos", type=int, default=30)
    o = sub.add_parser("orders")
    o.add_argument("--model", default="toy")
    o.add_argument("--seeds", type=int, default=7_000_000)
    o.add_argument("--videos", type=int, default=40)
    o.add_argument("--ratio", type=int, default=8)
    o.add_argument("--draws", type=int, default=6, help="event-order and which-first questions per video")
    args = ap.parse_args()
    out = {"answers": answers, "frames": frames, "orders": orders}[args.cmd](args)
    print(json.dumps({"args": vars(args), "result": out}, indent=1))


if __name__ == "__main__":
    main()
