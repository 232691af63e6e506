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

import typer

from tasks.ask import EXIT_FAILURES, AskError, open_archive_or_fail


def _archive_uri(uri: str | None) -> str:
    from tasks.options import archive_or_default

    return archive_or_default(uri)


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

    from tasks.ask_library import AskLibraryOptions
    from tasks.options import cli_command
    from tasks.options import cli_flag as p

    app.command("ask-library")(cli_command(AskLibraryOptions, ask_library_cmd, extra=[
        p("clip_weights", str, None, "--clip-weights", help="CLIP state dict for --top-windows (see `vxl ask`); "
          "default $VXL_CLIP_WEIGHTS."),
        p("ray_address", str, None, "--ray-address", help="Ray cluster (default $RAY_ADDRESS, else local)."),
        p("no_prefect", bool, False, "--no-prefect", help="Run without the Prefect flow engine."),
        p("as_json", bool, False, "--json", help="Print the summary as JSON."),
    ]))


def ask_library_cmd(options: dict, *, clip_weights: str | None = None, ray_address: str | None = None,
                    no_prefect: bool = False, as_json: bool = False) -> None:
    """Ask questions of every indexed video (or those matching --where); results go to `answers`.

    Flags: `tasks.ask_library.AskLibraryOptions` plus --clip-weights, --ray-address, --no-prefect, --json."""
    from tasks.ask_library import AskLibraryOptions

    if clip_weights:
        os.environ["VXL_CLIP_WEIGHTS"] = clip_weights  # read by the answer workers (tasks.ask)
    try:
        if options.get("questions") and options.get("questions_file"):
            raise AskError("usage", "give --question or --questions, not both")
        opts = AskLibraryOptions.checked(**options)  # usage errors before Prefect and Ray
        open_archive_or_fail(opts.archive)
        if no_prefect:
            from tasks.ask_library import run_ask_library

            summary = run_ask_library(opts, ray_address=ray_address)
        else:
            from flows.ask_library import ask_library
            from flows.outcome import run_flow

            summary = run_flow(ask_library, **opts.model_dump(), ray_address=ray_address)
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
