"""`vxl demo` (`make demo`): sample videos -> index -> ask, with the trained `toy` model.

Toy-family sample videos (`tasks.samples.make_toy_videos`: H.264, VP9 and MPEG-4, seeds the toy
model never saw in training), a local archive in `./demo_out/archive`, local Ray, Prefect
in-process (ephemeral). Then, from the archive only, every question type of `tasks.qa` about every
video, answered by option log-likelihood (as `vxl ask --choice`); one line per video and the
accuracy over all questions. Idempotent: a rerun keeps the videos, skips what is indexed, and asks again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

DEMO_SEED_BASE = 900_000
"""Seeds of the demo videos: outside the toy model's training seeds (0 .. 999_999 per `toy:N[:0]`
source use 0 .. N-1) and its held-out test seeds (5_000_000 ..)."""


def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for the sample videos and the archive."),
    count: int = typer.Option(3, "--count", help="Sample videos (1-50)."),
    model: str = typer.Option("toy", "--model", help="'toy' (trained, shipped), 'tiny' or a checkpoint folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Make sample videos, index them, and answer questions about them from the archive."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import numpy as np

    from flows.cli_index import LiveProgress, _human_bytes
    from tasks.index import IndexInfraError, IndexReport, set_progress_sink
    from tasks.qa import QUESTION_TYPES, accuracy_by_type, make_questions
    from tasks.ray_runtime import RayUnavailable
    from tasks.samples import make_toy_videos

    def say(msg: str) -> None:
        if not as_json:
            typer.echo(msg)

    def fail(msg: str, kind: str, code: int):
        if as_json:
            typer.echo(json.dumps({"error": msg, "error_kind": kind}))
        else:
            typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(code)

    if not 1 <= count <= 50:
        fail(f"--count must be in 1..50, got {count}", "usage", 2)
    t0 = time.perf_counter()
    videos, archive = out / "videos", out / "archive"
    say(f"1/3 sample videos in {videos} (toy family: 2-8 scenes, one shape; H.264, VP9, MPEG-4)")
    paths = make_toy_videos(videos, [DEMO_SEED_BASE + i for i in range(count)], prefix="sample",
                            width=320, height=240, fps=8, scene_s=(2.0, 8.0))
    say(f"2/3 indexing into {archive} ({model} model, local Ray, Prefect in-process)")
    from flows.index_corpus import index_corpus
    from flows.outcome import run_flow

    live = LiveProgress(enabled=not as_json)
    set_progress_sink(live)
    try:
        with live:
            report = IndexReport(**run_flow(index_corpus, sources=[str(p) for p in paths], archive=str(archive), model=model))
    except (IndexInfraError, RayUnavailable) as exc:
        fail(str(exc), "infrastructure", 1)
    finally:
        set_progress_sink(None)
    s = report.summary()
    say(f"    indexed {s['indexed']}, skipped {s['skipped']}, failed {s['failed']}; "
        f"{_human_bytes(s['kv_bytes'])} K/V written")

    from storage import open_archive
    from tasks.ask import AskError, ask_video, get_model

    arch = open_archive(str(archive))
    by_path = {Path(r.source_uri).name: r for r in arch.list_videos()
               if r.status == "indexed" and r.model_fingerprint == report.fingerprint and r.source_uri}
    missing = [p.name for p in paths if p.name not in by_path]
    if len(missing) == len(paths):
        fail("nothing indexed; see the messages above", "index_failed", 3)
    vx = get_model(model)
    say(f"3/3 asking {len(QUESTION_TYPES)} questions per video from the archive (no video decoded, no vision "
        "tower run); multiple choice by option log-likelihood")
    results, lines = [], []
    for n, path in enumerate(paths):
        if path.name in missing:
            say(f"    {path.name}: not indexed (see above)")
            continue
        truth = json.loads(path.with_suffix(".json").read_text())
        qs = make_questions(truth, np.random.default_rng([DEMO_SEED_BASE, n]), video_key=path.name)
        shown = qs[n % len(qs)]
        for q in qs:
            try:
                ans = ask_video(str(archive), by_path[path.name].video_id, q.question, model=model,
                                choices=list(q.options), vx=vx, archive=arch)
            except AskError as exc:
                fail(f"{path.name}: {exc}", exc.kind, 1)
            chosen = q.options[ans["chosen"]]  # ask_video returns the option's index
            r = {"video": path.name, "type": q.type, "question": q.question, "answer": q.answer,
                 "chosen": chosen, "correct": chosen == q.answer, "ttft_s": ans["ttft_s"]}
            results.append(r)
            if q is shown:
                lines.append(r)
                mark = "right" if r["correct"] else "WRONG"
                question = q.question.replace("\n", " ")
                if len(question) > 90:
                    question = question[:87] + "..."
                say(f"    {path.name}: {question!r}\n        truth {q.answer!r}, model {chosen!r} ({mark})")
    acc = accuracy_by_type(results)
    o = acc["overall"]
    summary = {"videos": [str(p) for p in paths], "archive": str(archive), "model": model,
               "accuracy": o["accuracy"], "correct": o["correct"], "num_questions": o["total"],
               "per_type": acc["per_type"], "questions": results, "seconds": time.perf_counter() - t0,
               "index": s}
    if as_json:
        typer.echo(json.dumps(summary, default=str))
    else:
        per = ", ".join(f"{t} {d['correct']}/{d['total']}" for t, d in acc["per_type"].items())
        say(f"    accuracy {o['correct']}/{o['total']} = {o['accuracy']:.0%} over all questions ({per}); chance ~30%")
        say(f"done in {summary['seconds']:.0f} s. Try: vxl ask --archive {archive} --model {model} "
            f"--video {paths[0]} --choice teal --choice navy --choice black --choice gray "
            "'What is the background colour at the start of the video?'")
    if report.failed:
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    """Add `demo` to the `vxl` app."""
    app.command("demo")(demo)
