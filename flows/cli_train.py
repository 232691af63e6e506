"""`vxl train --out DIR`: train Video-XL (curriculum over compression ratios) on Ray Train workers
(Prefect flow `train_videoxl`, issue 12).

Exit status: 0 trained (or the run in DIR had already finished: reported again, nothing trained);
1 training failed (a worker or Ray failed; rerunning the same command resumes from the newest
checkpoint) or Ray could not be reached; 2 usage error (bad option, missing data, more workers than
the machine has), reported before Ray or Prefect start.

Heavy imports (prefect, ray, torch) happen inside the command, so `vxl --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys

import typer

_EXIT = {"usage": 2, "data": 2}  # any other TrainError kind (train, model): 1


class TrainProgress:
    """Rich live display on stderr: data preparation, then steps done/total, loss, samples/s, ETA."""

    def __init__(self, enabled: bool = True):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task = None

    def __enter__(self):
        if self.enabled:
            self.progress.start()
            self.task = self.progress.add_task("preparing data", total=None, stats="")
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()

    def __call__(self, e: dict) -> None:
        if not self.enabled or self.task is None:
            return
        ev = e.get("event")
        if ev == "prepare":
            self.progress.update(self.task, total=e["total"], completed=e["done"], stats=e.get("key", ""))
        elif ev == "start":
            if e.get("dashboard_url"):
                self.console.print(f"Ray dashboard: {e['dashboard_url']}")
            resumed = f"resuming after step {e['step']}; " if e.get("step") else ""
            self.progress.reset(self.task, total=e["steps"], completed=e.get("step", 0), description="training",
                                stats=f"{resumed}starting {e['workers']} worker(s)")
        elif ev == "step":
            stats = f"loss {e['loss']:.4f}  {e['samples_per_s']:.2f} samples/s"
            if e.get("world_size", 1) > 1:
                stats += f"  {e['world_size']} workers"
            self.progress.update(self.task, completed=e["step"], description="training", stats=stats)
        elif ev == "done" and e.get("steps"):
            self.progress.update(self.task, total=max(e["steps"], 1), completed=e["steps"], description="training")


def _fail(message: str, kind: str, as_json: bool) -> None:
    code = _EXIT.get(kind, 1)
    if as_json:
        typer.echo(json.dumps({"error": message, "error_kind": kind}))
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def train(
    out: str = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, frame cache, train_log.jsonl, "
                                                      "final/ (the trained model)."),
    data: list[str] = typer.Option(None, "--data", help="Training data (repeatable): toy:COUNT[:SEED][:scenes=N][:seconds=A-B], a folder "
                                   "of videos with NAME.json ground truth, or a LLaVA .json/.jsonl. Default toy:400."),
    model: str = typer.Option("toy-init", "--model", help="'toy-init' (a fresh toy-size model) or a Video-XL "
                                                          "checkpoint folder to fine-tune."),
    init_vision: str = typer.Option(None, "--init-vision", help="A checkpoint folder whose vision tower and "
                                    "projector replace --model's before training (e.g. --model toy-init on a tower "
                                    "pretrained with --objective frames)."),
    video_root: str = typer.Option(None, "--video-root", help="Folder of a LLaVA file's relative video paths "
                                                              "(default: the file's folder)."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Samples per step over all workers (a multiple of "
                                                           "--workers)."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate (warmup, then cosine)."),
    vision_lr: float = typer.Option(None, "--vision-lr", help="The vision tower's learning rate (default --lr)."),
    warmup_steps: int = typer.Option(50, "--warmup-steps", help="Linear warmup steps."),
    trainable: str = typer.Option("llm,projector,vision", "--trainable", help="Comma-separated parts to train: "
                                  "vst, llm (includes vst), projector, vision."),
    curriculum: str = typer.Option("0:2,4;300:2,4,8,12,16", "--curriculum", help="Compression-ratio sets by "
                                   "step: 'STEP:R1,R2;STEP:...'; each window draws its ratio from the set in force."),
    planner: str = typer.Option("fixed", "--planner", help="Chunk planner while training: fixed, dynamic (CLIP "
                                                           "windows and ratios) or mixed."),
    question_types: str = typer.Option(None, "--question-types", help="Comma-separated tasks.qa question types "
                                       "drawn for ground-truth videos (default: all of them)."),
    questions_per_sample: int = typer.Option(4, "--questions-per-sample", help="Question/answer turns per video "
                                             "and step (each against the same memory)."),
    objective: str = typer.Option("answers", "--objective", help="answers (the answer-token loss: Video-XL's "
                                  "training) or frames (vision pretraining: the vision tower and projector learn "
                                  "each frame's ground-truth background and object; truth-JSON data only)."),
    fps: float = typer.Option(1.0, "--fps", help="Sampled frames per second of video (as vxl index)."),
    max_frames: int = typer.Option(128, "--max-frames", help="At most this many frames per video."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Steps between checkpoints (0: only at "
                                                                         "the end)."),
    keep_checkpoints: int = typer.Option(2, "--keep-checkpoints", help="Newest checkpoints kept."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="Recompute each window in "
                                            "backward (less memory, about a third more compute)."),
    workers: int = typer.Option(1, "--workers", help="Ray Train workers (DDP); one CPU, or one GPU with --gpu, "
                                                     "each."),
    gpu: bool = typer.Option(False, "--gpu", help="One GPU per worker (NCCL); bf16 autocast."),
    strategy: str = typer.Option("ddp", "--strategy", help="ddp, or fsdp (GPU only)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the initial weights, data order, questions and ratios."),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, else "
                                    "a local Ray). On a cluster --out must be a folder every node sees."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object on stdout."),
    no_flow: bool = typer.Option(False, "--no-flow", hidden=True, help="Run without Prefect's engine (tests)."),
    local: bool = typer.Option(False, "--local", hidden=True, help="One worker in this process, no Ray (tests)."),
) -> None:
    """Train Video-XL: curriculum over compression ratios, on Ray Train (DDP over --workers).

    Data is decoded once into OUT/cache; checkpoints go to OUT/checkpoints/step_N/ and the trained
    model to OUT/final/ (a Video-XL checkpoint folder: `vxl index --model OUT/final ...`). Rerunning
    the same command resumes an interrupted run from its newest checkpoint, and reports a finished
    one without training. Exit status: 0 trained (or already trained), 1 training failed (rerun to
    resume) or Ray unreachable, 2 usage or data error.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from tasks.train import TrainConfig, TrainError

    kw = dict(data=list(data) if data else ["toy:400"], model=model, init_vision=init_vision, video_root=video_root, steps=steps,
              batch_size=batch_size, lr=lr, vision_lr=vision_lr, warmup_steps=warmup_steps,
              trainable=[t.strip() for t in trainable.split(",") if t.strip()], curriculum=curriculum,
              planner=planner, questions_per_sample=questions_per_sample, fps=fps, max_frames=max_frames,
              checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
              grad_checkpointing=grad_checkpointing, num_workers=workers, use_gpu=gpu, strategy=strategy, seed=seed,
              objective=objective)
    if question_types:
        kw["question_types"] = [t.strip() for t in question_types.split(",") if t.strip()]
    try:
        cfg = TrainConfig(out=out, **kw)
        cfg.validate()  # before Ray and Prefect start
        if local and workers != 1:
            raise TrainError("usage", f"--local runs one worker; got --workers {workers}")
    except TrainError as exc:
        _fail(str(exc), exc.kind, as_json)

    from tasks.ray_runtime import RayUnavailable
    from tasks.train_ray import check_resources, finished_result, run_training, set_progress_sink

    try:
        if not local and finished_result(cfg) is None:
            check_resources(cfg, ray_address)  # more workers than this machine has: before Ray and Prefect
    except TrainError as exc:
        _fail(str(exc), exc.kind, as_json)

    live = TrainProgress(enabled=sys.stderr.isatty() or not as_json)
    set_progress_sink(live)
    try:
        with live:
            if no_flow:
                res = run_training(cfg, ray_address=ray_address, local=local)
            else:
                from flows.train_videoxl import train_videoxl

                res = train_videoxl(out=out, ray_address=ray_address, local=local, **kw)
    except TrainError as exc:
        _fail(str(exc), exc.kind, as_json)
    except RayUnavailable as exc:
        _fail(str(exc), "ray", as_json)
    finally:
        set_progress_sink(None)
    if as_json:
        keys = ("final_loss", "steps", "samples_per_s", "model_dir", "history", "noop", "resumed_from", "out",
                "frames_per_s", "peak_rss_mb", "seconds", "config_changes")
        typer.echo(json.dumps({k: res.get(k) for k in keys if k in res}))
        return
    changes = res.get("config_changes") or {}
    if changes:
        what = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in changes.items())
        typer.echo(f"note: {res['out']} finished with other values of {what}; use a new --out to train with them",
                   err=True)
    loss = f"{res['final_loss']:.4f}" if res.get("final_loss") is not None else "n/a"
    rate = f", {res['samples_per_s']:.2f} samples/s" if res.get("samples_per_s") else ""
    head = "already trained" if res.get("noop") else "trained"
    resumed = f" (resumed after step {res['resumed_from']})" if res.get("resumed_from") and not res.get("noop") else ""
    typer.echo(f"{head}: {res['steps']} steps{resumed}, final loss {loss}{rate}; model in {res['model_dir']}")
    typer.echo(f"use it: vxl index VIDEOS --model {res['model_dir']} --archive ARCHIVE")


def register(app: typer.Typer) -> None:
    """Add `train` to the `vxl` app."""
    app.command("train")(train)
