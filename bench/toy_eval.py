"""Accuracy of a trained model on held-out toy-family videos, per question type (docs/EVALUATION.md).

Writes real files (H.264, VP9, MPEG-4 in turn; resolutions 160x120 .. 1280x720 and frame rates
8-30 fps from `tasks.samples.TOY_RESOLUTIONS`/`TOY_FPS`; 2-8 scenes of 2-20 s), decodes and plans
them as `vxl index` does (dynamic chunking, tiny CLIP, 1 fps, at most 128 frames), and scores every
question type by option log-likelihood (as `vxl ask --choice`). Prints a markdown table with 95%
Wilson intervals; `--curve RUN_DIR --plot out.png` also plots the run's training loss.

    python bench/toy_eval.py --model toy --videos 40 --out /tmp/toy_eval
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEED_BASE = 6_000_000  # held out: training uses seeds < 1_000_000, the CI test 5_000_000+


def plot_curve(run_dir: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = json.loads((run_dir / "final" / "config.json").read_text())["vxl_training"]
    from tasks.train_ray import read_log

    rows = read_log(run_dir)  # the last line per step: a resumed run logs the redone steps again
    steps = [r["step"] for r in rows] or list(range(1, hist["steps_done"] + 1))
    losses = [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps[: len(losses)], losses, lw=0.6, alpha=0.5, label="loss per step")
    k = 25
    if len(losses) > k:
        sm = [sum(losses[i - k : i]) / k for i in range(k, len(losses) + 1)]
        ax.plot(steps[k - 1 : len(losses)], sm, lw=1.5, label=f"mean of {k}")
    for first, ratios in hist["curriculum"]["stages"][1:]:
        ax.axvline(first, color="gray", ls="--", lw=0.8)
        ax.text(first, ax.get_ylim()[1] * 0.9, f" ratios {ratios}", fontsize=7)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("answer-token cross-entropy (nats)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--videos", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("/tmp/toy_eval"))
    ap.add_argument("--chunking", default="dynamic", choices=["dynamic", "fixed"])
    ap.add_argument("--ratio", type=int, default=8)
    ap.add_argument("--curve", type=Path, help="a `vxl train` run folder to plot")
    ap.add_argument("--plot", type=Path, help="PNG for the training curve")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    from model.video_xl import load_model
    from tasks.evaluate import wilson_interval
    from tasks.qa import accuracy_by_type, evaluate_videos
    from tasks.samples import make_toy_videos

    t0 = time.perf_counter()
    paths = make_toy_videos(a.out / "videos", [SEED_BASE + i for i in range(a.videos)])
    t1 = time.perf_counter()
    vx = load_model(a.model, device="cpu")
    results = evaluate_videos(vx, paths, seed=SEED_BASE, chunking=a.chunking, ratio=a.ratio)
    t2 = time.perf_counter()
    acc = accuracy_by_type(results)
    (a.out / "results.json").write_text(json.dumps({"accuracy": acc, "results": results}, indent=1))
    if a.curve and a.plot:
        plot_curve(a.curve, a.plot)
    if a.json:
        print(json.dumps(acc))
        return
    print(f"`python bench/toy_eval.py --model {a.model} --videos {a.videos} --chunking {a.chunking}` on "
          f"{platform.machine()} {platform.processor() or ''}, CPU; {len(paths)} videos written in {t1 - t0:.0f} s, "
          f"evaluated in {t2 - t1:.0f} s\n")
    print("| question type | correct / total | accuracy | 95% CI (Wilson) |")
    print("|---|---|---|---|")
    for t, d in [*acc["per_type"].items(), ("**overall**", acc["overall"])]:
        lo, hi = wilson_interval(d["correct"], d["total"])
        print(f"| {t} | {d['correct']} / {d['total']} | {d['accuracy']:.1%} | {lo:.1%} - {hi:.1%} |")


if __name__ == "__main__":
    main()
