"""Ablations at toy scale, from the archive (issues 13 and 14; docs/EVALUATION.md).

Each experiment writes held-out toy-family videos and a question file (vxl layout, every question
type of `tasks.qa` per video), then indexes and scores them with `tasks.evaluate.run_eval` (the
`vxl eval` machinery: Ray actors, answers stored in the archive) once per setting, one archive per
setting, and prints a markdown table: accuracy per question type with 95% Wilson intervals, and
the paired difference to the first setting with McNemar's exact p-value.

    python bench/ablations.py ratio --videos 24          # test-time compression ratio 2/4/8/16/32
    python bench/ablations.py top-windows --videos 24    # question-aware partial reload, K = 1/2/4/8/all
    python bench/ablations.py codec --videos 24          # raw vs int8 vs int4 memories (issue 14)
    python bench/ablations.py chunking --videos 24       # dynamic vs fixed chunking at test time
    python bench/ablations.py models --models curriculum=runs/c/final direct=runs/d/final --ratio 16
                                                         # models trained differently, tested at 16x
    python bench/ablations.py trained-chunking --models dynamic=runs/d/final fixed=runs/f/final
                                                         # each model tested with dynamic and fixed chunking

`--model` defaults to the shipped `toy`; `--out` keeps the videos and archives (reruns skip work).
Ablations that need models trained differently (pooling baseline, direct 16x training, dynamic vs
fixed in training) take `--models NAME=FOLDER ...` trained by `vxl train` and compare them the same
way (`models` experiment).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEED_BASE = 6_500_000  # held out from training (< 1_000_000) and the tests (5_000_000 ..)

# The two chunkings compared at test time, at the same average ratio (8 visual tokens per VST).
TEST_CHUNKINGS = (("dynamic", {"chunking": "dynamic", "target_ratio": 8}), ("fixed 8", {"chunking": "fixed", "ratio": 8}))


def make_set(out: Path, n: int) -> tuple[list[Path], Path]:
    from tasks.qa import write_questions_file
    from tasks.samples import make_toy_videos

    vids = make_toy_videos(out / "videos", [SEED_BASE + i for i in range(n)], width=320, height=240, fps=10)
    qfile = out / "videos" / "questions.json"
    if not qfile.is_file():
        write_questions_file(vids, qfile, seed=SEED_BASE)
    return vids, qfile


def settings_for(exp: str, models: dict[str, str], model: str, ratio: int | None = None) -> list[tuple[str, dict]]:
    """(label, run_eval keyword arguments) per setting of experiment `exp`; `ratio`: the `models`
    experiment indexes with fixed chunking at this ratio (default: dynamic chunking)."""
    if exp == "ratio":
        return [(f"ratio {r}", {"index_options": {"chunking": "fixed", "ratio": r}}) for r in (2, 4, 8, 16, 32)]
    if exp == "top-windows":
        return [("all windows", {})] + [(f"top {k}", {"top_windows": k}) for k in (8, 4, 2, 1)]
    if exp == "codec":
        return [(c, {"index_options": {"kv_codec": c}}) for c in ("raw", "int8", "int4")]
    if exp == "chunking":
        return [(label, {"index_options": opts}) for label, opts in TEST_CHUNKINGS]
    if exp == "trained-chunking":
        return [(f"{name} model, {label} test", {"model": folder, "index_options": opts})
                for name, folder in models.items() for label, opts in TEST_CHUNKINGS]
    if exp == "models":
        fixed = {"index_options": {"chunking": "fixed", "ratio": ratio}} if ratio else {}
        return [(name if not ratio else f"{name} @{ratio}x", {"model": folder, **fixed})
                for name, folder in models.items()]
    raise SystemExit(f"unknown experiment {exp!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=["ratio", "top-windows", "codec", "chunking", "models", "trained-chunking"])
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--models", nargs="*", default=[], help="NAME=FOLDER for the `models` and "
                    "`trained-chunking` experiments")
    ap.add_argument("--ratio", type=int, default=None, help="`models`: index with fixed chunking at this ratio "
                    "(e.g. 16, as the paper tests curriculum against direct 16x training)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/vxl-ablations"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    from tasks.evaluate import EvalOptions, compare_runs, wilson_interval
    from tasks.evaluate import run_eval as _run_eval

    models = dict(m.split("=", 1) for m in a.models)
    t0 = time.perf_counter()
    vids, qfile = make_set(a.out, a.videos)
    runs = []
    for label, kw in settings_for(a.experiment, models, a.model, a.ratio):
        kw = dict(kw)
        model = kw.pop("model", a.model)
        archive = a.out / "archives" / f"{a.experiment}-{label.replace(' ', '_').replace(',', '')}"
        t = time.perf_counter()
        index_options = kw.pop("index_options", None)
        res = _run_eval(EvalOptions(archive=str(archive), questions_file=str(qfile), model=model, run_name=label, **kw),
                        index_options=index_options)
        res["seconds"] = time.perf_counter() - t
        ttft = [r.get("ttft_s") for r in res["results"] if r.get("ttft_s") is not None]
        res["ttft_median_s"] = sorted(ttft)[len(ttft) // 2] if ttft else None
        runs.append(res)
    (a.out / f"{a.experiment}.json").write_text(json.dumps(runs, default=str))
    if a.json:
        print(json.dumps([{k: r[k] for k in ("run", "accuracy", "num_questions", "per_type")} for r in runs]))
        return
    what = (" --models " + " ".join(a.models) if a.models else f" --model {a.model}") + (
        f" --ratio {a.ratio}" if a.ratio else "")
    print(f"`python bench/ablations.py {a.experiment} --videos {a.videos}{what}` on {platform.machine()}, "
          f"CPU; {len(vids)} held-out videos (320x240, 10 fps, H.264/VP9/MPEG-4), {runs[0]['num_questions']} "
          f"questions per setting; {time.perf_counter() - t0:.0f} s\n")
    types = sorted({t for r in runs for t in r["per_type"]})
    print("| setting | " + " | ".join(types) + " | overall (95% CI) | vs first: diff, McNemar p |")
    print("|---|" + "---|" * len(types) + "---|---|")
    for r in runs:
        cells = [f"{r['per_type'][t]['accuracy']:.0%}" if t in r["per_type"] else "-" for t in types]
        lo, hi = wilson_interval(r["correct"], r["num_questions"])
        cmp = compare_runs(runs[0], r)["overall"]
        print(f"| {r['run']} | " + " | ".join(cells) + f" | {r['accuracy']:.1%} ({lo:.0%}-{hi:.0%}) | "
              f"{cmp['difference'] * 100:+.1f} points, p = {cmp['p_value']:.3f} |")


if __name__ == "__main__":
    main()
