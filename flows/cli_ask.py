"""`vxl ask` and `vxl ask-library`: answer from the archive (no video I/O, no vision tower).

Exit status:
  0 success;
  1 infrastructure (archive unreadable or missing, Ray unreachable, model cannot be loaded);
  2 usage (empty question, no such video id or file, bad flags, question over the context limit);
  3 `ask-library` finished, but some videos failed (their rows in `answers` say why);
  4 `ask` only: the video's stored memory cannot serve this model or request (indexed with another
    model: the message names both fingerprints; a corrupted blob; `--top-windows` on a video without
    window embeddings). The message names the video and the fix.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer

from tasks.ask import EXIT_FAILURES, AskError, open_archive_or_fail


def _archive_uri(uri: str | None) -> str:
    return uri or os.environ.get("VXL_ARCHIVE") or "archive"


def _fail(exc: AskError, as_json: bool) -> typer.Exit:
    if as_json:
        typer.echo(json.dumps({"error": str(exc), "error_kind": exc.kind, "video_id": exc.video_id}))
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(exc.exit_code)


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else (f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s")


def _print_answer(r: dict) -> None:
    typer.echo(r["answer"])
    if "scores" in r:
        for i, (c, s) in enumerate(zip(r["choices"], r["scores"], strict=True)):
            mark = "*" if i == r["chosen"] else " "
            typer.echo(f"  {mark} [{i}] {s:9.3f}  {c}")
    tps = f"{r['tokens_per_s']:.1f} tokens/s" if r.get("tokens_per_s") else "-"
    wins = (f"{len(r['windows'])}/{r['num_windows']} windows" if r["windows"] is not None else "-")
    typer.echo(
        f"-- video {r['video_id']}: time to first token {_fmt_s(r['ttft_s'])} (memory load {_fmt_s(r['load_s'])}, "
        f"prefill {_fmt_s(r['model_ttft_s'])}), {r['num_tokens']} tokens, {tps}, memory {r['memory_tokens']} "
        f"tokens, {wins}",
        err=False,
    )


def register(app: typer.Typer) -> None:
    @app.command("ask")
    def ask(
        question: str = typer.Argument(None, help="The question (or --question-file)."),
        archive: str = typer.Option(None, "--archive", "-a", help="Archive URI. Default: $VXL_ARCHIVE or ./archive."),
        video: str = typer.Option(..., "--video", "-v", help="Video id (or unique prefix) or a local video file."),
        max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Tokens to generate at most."),
        model: str = typer.Option("tiny", "--model", help="'tiny', 'toy' (trained, shipped) or a Video-XL checkpoint folder."),
        choice: list[str] = typer.Option(None, "--choice", help="A multiple-choice option (repeat)."),
        question_file: str = typer.Option(None, "--question-file",
                                          help='JSON {"question": ..., "choices": [...]} instead of QUESTION.'),
        top_windows: int = typer.Option(None, "--top-windows",
                                        help="Load only the K windows closest to the question (CLIP) + first + last."),
        clip_weights: str = typer.Option(None, "--clip-weights", envvar="VXL_CLIP_WEIGHTS",
                                         help="CLIP state dict for --top-windows (the one the videos were indexed "
                                         "with; a path named by the archive is never loaded)."),
        accept_numerics_change: bool = typer.Option(
            False, "--accept-numerics-change", help="Answer even though this environment's numerics probe differs "
            "from the archive's (the change is recorded in the archive)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Answer QUESTION about one video from its stored memory (no decoding, no vision tower)."""
        if clip_weights:
            os.environ["VXL_CLIP_WEIGHTS"] = clip_weights  # tasks.ask.configured_clip_weights
        from tasks.ask import ask_video, load_questions_file

        try:
            choices = list(choice) if choice else None
            if question_file is not None:
                if question is not None:
                    raise AskError("usage", "give QUESTION or --question-file, not both")
                qs = load_questions_file(question_file)
                if len(qs) != 1:
                    raise AskError("usage", f"{question_file} holds {len(qs)} questions; `vxl ask` takes one "
                                   "(use `vxl ask-library --questions` for many)")
                question = qs[0].question
                if qs[0].choices is not None:
                    if choices:
                        raise AskError("usage", "choices come from --question-file or --choice, not both")
                    choices = list(qs[0].choices)
            if question is None:
                raise AskError("usage", "question is empty: give QUESTION or --question-file")
            r = ask_video(_archive_uri(archive), video, question, model=model, max_new_tokens=max_new_tokens,
                          top_windows=top_windows, choices=choices, accept_numerics_change=accept_numerics_change)
        except AskError as exc:
            raise _fail(exc, as_json) from None
        if as_json:
            out = {k: v for k, v in r.items() if k != "token_ids"}
            typer.echo(json.dumps(out, indent=2))
        else:
            _print_answer(r)

    @app.command("ask-library")
    def ask_library_cmd(
        archive: str = typer.Option(None, "--archive", "-a", help="Archive URI. Default: $VXL_ARCHIVE or ./archive."),
        question: list[str] = typer.Option(None, "--question", "-q", help="A question (repeat for several)."),
        questions: str = typer.Option(None, "--questions",
                                      help='JSON/JSONL file: ["q", {"question": ..., "choices": [...], "id": ...}]'),
        where: str = typer.Option(None, "--where", help="SQL filter on table videos, e.g. \"duration_s > 60\"."),
        model: str = typer.Option("tiny", "--model", help="'tiny', 'toy' (trained, shipped) or a Video-XL checkpoint folder."),
        max_new_tokens: int = typer.Option(32, "--max-new-tokens"),
        top_windows: int = typer.Option(None, "--top-windows", help="Question-aware loading (see `vxl ask`)."),
        clip_weights: str = typer.Option(None, "--clip-weights", envvar="VXL_CLIP_WEIGHTS",
                                         help="CLIP state dict for --top-windows (see `vxl ask`)."),
        workers: int = typer.Option(None, "--workers", help="Ray answer workers (default: GPUs, else CPUs)."),
        ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster (default $RAY_ADDRESS, else local)."),
        force: bool = typer.Option(False, "--force", help="Answer again even if already stored."),
        accept_numerics_change: bool = typer.Option(
            False, "--accept-numerics-change", help="Answer even though this environment's numerics probe differs "
            "from the archive's (the change is recorded in the archive)."),
        no_prefect: bool = typer.Option(False, "--no-prefect", help="Run without the Prefect flow engine."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Ask questions of every indexed video (or those matching --where); results go to `answers`."""
        if clip_weights:
            os.environ["VXL_CLIP_WEIGHTS"] = clip_weights  # read by the answer workers (tasks.ask)
        try:
            if question and questions:
                raise AskError("usage", "give --question or --questions, not both")
            kwargs: dict[str, Any] = dict(
                archive_uri=_archive_uri(archive), questions=list(question) if question else None,
                questions_file=questions, where=where, model=model, max_new_tokens=max_new_tokens,
                top_windows=top_windows, workers=workers, ray_address=ray_address, force=force,
                accept_numerics_change=accept_numerics_change)
            from tasks.ask_library import questions_from

            questions_from(kwargs["questions"], kwargs["questions_file"])  # usage errors before Prefect and Ray
            open_archive_or_fail(kwargs["archive_uri"])
            if no_prefect:
                from tasks.ask_library import run_ask_library

                summary = run_ask_library(**kwargs)
            else:
                from flows.ask_library import ask_library
                from flows.outcome import run_flow

                summary = run_flow(ask_library, **kwargs)
        except AskError as exc:
            raise _fail(exc, as_json) from None
        if as_json:
            typer.echo(json.dumps(summary, indent=2, default=str))
        else:
            typer.echo(
                f"{summary['videos']} videos x {summary['questions']} questions: {summary['answered']} answered, "
                f"{summary['skipped']} already answered, {summary['failed']} failed "
                f"({summary['workers']} workers, {summary.get('seconds', 0):.1f} s)"
            )
            for vid, kind in sorted(summary["failed_videos"].items()):
                typer.echo(f"  failed: {vid}: {kind}", err=True)
            if summary["not_indexed"]:
                typer.echo(f"  {len(summary['not_indexed'])} matching videos are not indexed", err=True)
        sys.stdout.flush()
        if summary["failed"]:
            raise typer.Exit(EXIT_FAILURES)
