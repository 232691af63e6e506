"""Training Video-XL on Ray Train (issue 12): `run_training(cfg)` runs `tasks.train.train_loop` in
`cfg.num_workers` Ray Train workers (`ray.train.torch.TorchTrainer`, Ray Train V2, the default API of
Ray 2.60), or in this process (`local=True`, one worker, no Ray).

- The data is prepared once, on the driver (`tasks.train.prepare_data`, the frame cache under
  `cfg.cache`); the workers get the items (absolute cache paths) with their config. On a multi-node
  cluster `cfg.out` (and the cache) must be a folder every node sees (a shared file system).
- Each worker builds a `WorkerContext` from `ray.train.get_context()`: rank, world size, its device;
  `prepare_model` is `ray.train.torch.prepare_model(module, parallel_strategy=cfg.strategy)` when the
  world has more than one worker (one worker is not wrapped, so one worker through Ray trains exactly
  as the local loop); `all_reduce_mean` averages the logged loss over the workers.
- Every worker calls `ray.train.report` at each checkpoint step and at the last step
  (`tasks.train.is_checkpoint_step`; Ray Train V2's report is a barrier that every worker must reach
  equally often), not every step: Ray takes at most one report per worker per controller poll (a
  result queue of size 1, polled every 2 s by default), so reporting every step held training to
  one step per 2 s (docs/PERFORMANCE.md). At a checkpoint step rank 0 attaches a *pointer* checkpoint: a
  small folder holding `vxl_checkpoint.json` with the path of `out/checkpoints/step_NNNNNN/`, so Ray's
  run folder (`out/ray/train/`) records the checkpoints without a second copy of the weights and
  optimizer state (Ray copies a reported folder into its storage). Resuming never reads Ray's
  records: `train_loop` resumes from the newest complete `out/checkpoints/step_*/`, whichever process
  wrote it (a killed `vxl train`, a run on other workers, a local run).
- Progress: rank 0 appends one JSON line per step to `out/train_log.jsonl` (metrics, peak RSS over the
  workers, world size, time); the driver tails it for the progress display.
- The result (`out/result.json`) holds the final loss, steps, median samples/s, the history and the
  folder of the trained model `out/final/`. A run whose newest checkpoint is at `cfg.steps` and whose
  `final/` exists is finished: `run_training` then reports it again without starting Ray.

Errors: `TrainError(kind="usage")` for options no run can satisfy (before Ray starts),
`TrainError(kind="train")` when a worker or Ray Train's controller fails (`ray.train.TrainingFailedError`),
naming the worker rank and the exception; `tasks.ray_runtime.RayUnavailable` when Ray cannot be
reached.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from tasks.train import Item, TrainConfig, TrainError, WorkerContext, checkpoint_dirs, is_checkpoint_step

LOG_NAME = "train_log.jsonl"
RESULT_NAME = "result.json"
POINTER_NAME = "vxl_checkpoint.json"

#: Options that do not change what is trained (a finished run rerun with other values is still finished).
RUNTIME_OPTIONS = ("out", "cache_dir", "num_workers", "use_gpu", "strategy", "checkpoint_every",
                   "keep_checkpoints", "grad_checkpointing")

ProgressFn = Callable[[dict], None]
"""Receives events: `{"event": "prepare", "done", "total"}`, `{"event": "start", "step", "steps",
"workers"}`, `{"event": "step", **metrics}` (one per optimizer step, `train_log.jsonl`'s line),
`{"event": "done", **result}`."""

# A process-wide progress sink (the CLI's display) for runs started through the Prefect flow, whose
# parameters must stay JSON-serialisable. `run_training(progress=...)` takes precedence.
_PROGRESS_SINK: ProgressFn | None = None


def set_progress_sink(fn: ProgressFn | None) -> None:
    global _PROGRESS_SINK
    _PROGRESS_SINK = fn


# -- per worker --------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _dist_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def all_reduce_mean(value: float) -> float:
    """Mean of `value` over the workers of the process group (the value itself without one)."""
    import torch
    import torch.distributed as dist

    if not _dist_ready():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def _all_reduce_max(value: float) -> float:
    import torch
    import torch.distributed as dist

    if not _dist_ready():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def make_reporter(cfg: TrainConfig, rank: int, world_size: int,
                  send: Callable[[dict, str | None], None] | None = None) -> Callable[[dict, str | None], None]:
    """The `WorkerContext.report` of a worker, called by every worker after every step. Rank 0
    appends the step's line to `out/train_log.jsonl`. At a checkpoint step (`is_checkpoint_step`,
    the same on every worker, as Ray's barrier needs) the workers all-reduce their peak RSS and
    `send` (Ray's report) gets the line; in between, a line's `peak_rss_mb` is the larger of rank
    0's own and the workers' peak at the last report."""
    log = Path(cfg.out) / LOG_NAME
    calls = [0]
    workers_peak = [0.0]

    def report(metrics: dict, ckpt_dir: str | None) -> None:
        rss = peak_rss_mb()
        sync = is_checkpoint_step(cfg, int(metrics["step"]))
        if sync and world_size > 1:
            workers_peak[0] = _all_reduce_max(rss)
        line = {**metrics, "peak_rss_mb": round(max(rss, workers_peak[0]), 1), "world_size": world_size,
                "time": time.time(), "checkpoint": ckpt_dir, "first_in_process": calls[0] == 0}
        calls[0] += 1
        if rank == 0:
            with open(log, "a") as f:
                f.write(json.dumps(line) + "\n")
        if send is not None and sync:
            send(line, ckpt_dir)

    return report


def _ray_send(rank: int) -> Callable[[dict, str | None], None]:
    import tempfile

    import ray.train

    def send(metrics: dict, ckpt_dir: str | None) -> None:
        if ckpt_dir and rank == 0:
            with tempfile.TemporaryDirectory(prefix="vxl-ckpt-pointer-") as d:
                Path(d, POINTER_NAME).write_text(json.dumps({"path": str(Path(ckpt_dir).resolve()),
                                                             "step": metrics.get("step")}))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics, checkpoint=None)

    return send


def _strategy_kwargs(strategy: str) -> dict:
    """DDP must tolerate trainable parameters that never get a gradient: the vision tower's last layer
    and post-layernorm (the projector reads the layer before, LLaVA's `mm_vision_select_layer=-2`) and
    the last LLM layer's `beacon_q_proj` (only the VSTs' K/V are kept, so their last-layer queries
    reach no output). A parameter unused on every worker keeps `grad=None`, as in one process, so
    AdamW skips it in both (the 2-worker test is bitwise equal to one process)."""
    return {"find_unused_parameters": True} if strategy == "ddp" else {}


def train_worker(config: dict) -> None:
    """Ray Train's per-worker function: `train_loop` with this worker's `WorkerContext`."""
    import ray.train
    import ray.train.torch
    import torch

    from tasks.train import train_loop

    cfg = TrainConfig(**config["cfg"])
    items = [Item(**d) for d in config["items"]]
    tc = ray.train.get_context()
    rank, world = tc.get_world_rank(), tc.get_world_size()
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ctx = WorkerContext(
        rank=rank, world_size=world, device=str(device),
        report=make_reporter(cfg, rank, world, _ray_send(rank)),
        prepare_model=(lambda m: ray.train.torch.prepare_model(
            m, parallel_strategy=cfg.strategy, parallel_strategy_kwargs=_strategy_kwargs(cfg.strategy)))
        if world > 1 else None,
        all_reduce_mean=all_reduce_mean if world > 1 else None,
    )
    train_loop(cfg, ctx, items=items)


# -- driver --------------------------------------------------------------------------------------------


def read_log(out: str | Path) -> list[dict]:
    """`train_log.jsonl`'s lines, the last one per step (a resumed run logs the redone steps again)."""
    path = Path(out) / LOG_NAME
    if not path.is_file():
        return []
    by_step: dict[int, dict] = {}
    for raw in path.read_text().splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(line, dict) and isinstance(line.get("step"), int):
            by_step[line["step"]] = line
    return [by_step[s] for s in sorted(by_step)]


class _LogTail(threading.Thread):
    """Calls `fn(line)` for every line appended to `train_log.jsonl` after `offset`."""

    def __init__(self, path: Path, fn: ProgressFn, poll_s: float = 0.5):
        super().__init__(daemon=True, name="vxl-train-log-tail")
        self.path, self.fn, self.poll_s = path, fn, poll_s
        self.offset = path.stat().st_size if path.is_file() else 0
        self.stopped = threading.Event()

    def poll(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.offset += end + 1
        for raw in data[: end + 1].splitlines():
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                continue
            try:
                self.fn({"event": "step", **line})
            except Exception:  # noqa: BLE001 - a display error must not stop training
                pass

    def run(self) -> None:
        while not self.stopped.wait(self.poll_s):
            self.poll()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
        self.poll()  # the last lines


def _newest_step(cfg: TrainConfig) -> int:
    dirs = checkpoint_dirs(cfg.out)
    return int(dirs[-1].name.split("_")[-1]) if dirs else 0


def _trainer_state(folder: Path) -> dict:
    import torch

    # mmap: only the step, history and config are read, not the optimizer state (twice the weights)
    return torch.load(folder / "trainer_state.pt", map_location="cpu", weights_only=False, mmap=True)


def summarize(cfg: TrainConfig, **extra) -> dict:
    """The result of the run in `cfg.out` from its newest checkpoint and its log."""
    dirs = checkpoint_dirs(cfg.out)
    state = _trainer_state(dirs[-1]) if dirs else {"history": [], "step": 0}
    history = [{"step": int(h["step"]), "loss": float(h["loss"])} for h in state["history"]]
    log = [x for x in read_log(cfg.out) if x["step"] <= int(state["step"])]
    # the first step of each process pays for warm-up (allocations, DDP's first all-reduce)
    steady = [x["samples_per_s"] for x in log if not x.get("first_in_process")] or [x["samples_per_s"] for x in log]
    final = Path(cfg.out) / "final"
    return {
        "final_loss": history[-1]["loss"] if history else None,
        "steps": int(state["step"]),
        "samples_per_s": statistics.median(steady) if steady else None,
        "frames_per_s": statistics.median(x["frames_per_s"] for x in log) if log else None,
        "peak_rss_mb": max((x.get("peak_rss_mb") or 0 for x in log), default=None),
        "model_dir": str(final.resolve()) if final.is_dir() else None,
        "out": str(Path(cfg.out).resolve()),
        "checkpoint": str(dirs[-1].resolve()) if dirs else None,
        "history": history,
        "config": state.get("config", cfg.to_dict()),
        **extra,
    }


def _final_from_checkpoint(cfg: TrainConfig) -> None:
    """`final/` from the newest checkpoint when a run was stopped after its last checkpoint but before
    `final/` was written (`train_loop` writes `final/` only when it trained a step). The checkpoint
    folder is the same `save_model` output plus `trainer_state.pt`."""
    import shutil

    final = Path(cfg.out) / "final"
    tmp = final.with_name("final.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(checkpoint_dirs(cfg.out)[-1], tmp, ignore=shutil.ignore_patterns("trainer_state.pt*"))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def finished_result(cfg: TrainConfig) -> dict | None:
    """The stored result when the run in `cfg.out` is finished (newest checkpoint at `cfg.steps` or
    later), else None; writes `final/` from that checkpoint if a kill left it out. `config_changes`
    names the options that differ from the stored run's (other than `RUNTIME_OPTIONS`): they would
    need a new `--out`."""
    if _newest_step(cfg) < cfg.steps:
        return None
    if not (Path(cfg.out) / "final" / "config.json").is_file():
        _final_from_checkpoint(cfg)
    res = summarize(cfg, noop=True, resumed_from=_newest_step(cfg), seconds=0.0)
    old, new = res["config"], cfg.to_dict()
    res["config_changes"] = {k: [old.get(k), v] for k, v in new.items()
                             if k not in RUNTIME_OPTIONS and k != "steps" and old.get(k) != v}
    return res


def check_resources(cfg: TrainConfig, ray_address: str | None) -> None:
    """Fail before Ray starts when a local Ray could not hold the workers (one CPU, or one GPU, each),
    or the run asks for what this launcher cannot do.

    Raises:
        TrainError(kind="usage"): too many workers for this machine; --gpu without a GPU; FSDP.
    """
    import ray

    if cfg.strategy == "fsdp" and cfg.num_workers > 1:
        # FSDP replaces the module's parameters by flat shards, and `train_loop` builds its optimizer
        # (and saves checkpoints) from the unwrapped model: the optimizer would update nothing.
        raise TrainError("usage", "--strategy fsdp is not supported yet (tasks.train.train_loop builds the "
                                  "optimizer before the model is wrapped); use --strategy ddp")
    if ray_address or os.environ.get("RAY_ADDRESS"):
        return  # a cluster: it may autoscale
    if ray.is_initialized():
        res = ray.cluster_resources()
        cpus, gpus, where = int(res.get("CPU", 0)), int(res.get("GPU", 0)), "the running Ray has"
    else:
        import torch

        cpus, gpus, where = os.cpu_count() or 1, torch.cuda.device_count(), "this machine has"
    if cfg.use_gpu and gpus < cfg.num_workers:
        raise TrainError("usage", f"--gpu with --workers {cfg.num_workers} needs {cfg.num_workers} GPU(s) "
                                  f"(one per worker); {where} {gpus}")
    if not cfg.use_gpu and cpus < cfg.num_workers:
        raise TrainError("usage", f"--workers {cfg.num_workers} needs {cfg.num_workers} CPUs (one per worker); "
                                  f"{where} {cpus}")


def describe_failure(exc: BaseException) -> str:
    """One line naming what failed in a `ray.train.TrainingFailedError`: worker rank(s) and exception."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        parts = []
        for rank in sorted(failures):
            e = failures[rank]
            cause = getattr(e, "cause", None) or e  # a RayTaskError carries the user exception as .cause
            parts.append(f"worker rank {rank}: {type(cause).__name__}: {_first_line(cause)}".rstrip(": "))
        return "; ".join(parts)
    inner = getattr(exc, "controller_failure", None)
    if inner is not None:
        return f"Ray Train controller: {type(inner).__name__}: {_first_line(inner)}"
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException, limit: int = 400) -> str:
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    text = lines[0] if lines else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fit_on_ray(cfg: TrainConfig, items: list[Item], ray_address: str | None, max_failures: int,
                emit: ProgressFn) -> dict:
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tasks.ray_runtime import ensure_ray, shutdown_if_started

    info = ensure_ray(ray_address)
    try:
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"cfg": cfg.to_dict(), "items": [asdict(i) for i in items]},
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            run_config=RunConfig(storage_path=str(Path(cfg.out) / "ray"), name="train",
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                                 failure_config=FailureConfig(max_failures=max_failures)),
        )
        emit({"event": "start", "step": _newest_step(cfg), "steps": cfg.steps, "workers": cfg.num_workers,
              "dashboard_url": info.dashboard_url})
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            raise TrainError("train", f"training failed: {describe_failure(exc)} (run folder {cfg.out}; rerun "
                                      "the same command to resume from the newest checkpoint)") from exc
        ckpt = result.checkpoint.path if result.checkpoint is not None else None
        return {"ray_run": str(result.path) if getattr(result, "path", None) else None, "ray_checkpoint": ckpt}
    finally:
        shutdown_if_started(info)


def _absolute(item: Item) -> Item:
    return replace(item, frames=str(Path(item.frames).resolve()),
                   embeddings=str(Path(item.embeddings).resolve()) if item.embeddings else None)


def run_training(cfg: TrainConfig, ray_address: str | None = None, progress: ProgressFn | None = None, *,
                 items=None, local: bool = False, max_failures: int = 0) -> dict:
    """Train per `cfg`: prepare the data once here, then `cfg.num_workers` Ray Train workers (or this
    process with `local=True`). Resumes from the newest checkpoint in `cfg.out`; a finished run is
    reported again without training (`noop: True`).

    Args:
        cfg: the run (its paths are made absolute: the workers' working folder differs).
        ray_address: Ray cluster (default `RAY_ADDRESS`, else a local Ray, shut down at the end).
        progress: receives the events of `ProgressFn` (default: the sink of `set_progress_sink`).
        items: the prepared data (`prepare_data(cfg)`), when the caller prepared it.
        local: one worker in this process, no Ray (debugging, tests, the kill/resume check).
        max_failures: Ray Train restarts of the worker group after a worker failure (each restart
            resumes from the newest checkpoint); 0 fails at once.
    Returns:
        `{"final_loss", "steps", "samples_per_s", "frames_per_s", "peak_rss_mb", "model_dir", "out",
        "checkpoint", "history", "config", "noop", "resumed_from", "seconds", ...}`.
    Raises:
        TrainError: `usage` (bad options, too many workers for the machine; before Ray starts),
            `data`/`model` (from preparing the data), `train` (a worker or Ray Train failed).
        RayUnavailable: Ray could not be reached or started.
    """
    cfg = cfg.with_absolute_paths()  # the workers' working folder is not this one
    cfg.validate()
    if local and cfg.num_workers != 1:
        raise TrainError("usage", f"a local run has one worker; got --workers {cfg.num_workers}")
    emit = progress or _PROGRESS_SINK or (lambda _e: None)
    done = finished_result(cfg)
    if done is not None:
        emit({"event": "done", **done})
        return done
    if not local:
        check_resources(cfg, ray_address)
    t0 = time.perf_counter()
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    if items is None:
        from tasks.train import prepare_data

        items = prepare_data(cfg, progress=lambda n, total, key: emit({"event": "prepare", "done": n,
                                                                       "total": total, "key": key}))
    items = [_absolute(i) for i in items]  # the workers' working folder is not this one
    resumed_from = _newest_step(cfg)
    tail = _LogTail(Path(cfg.out) / LOG_NAME, emit)
    tail.start()
    try:
        if local:
            from tasks.train import train_loop

            emit({"event": "start", "step": resumed_from, "steps": cfg.steps, "workers": 1, "dashboard_url": None})
            ctx = WorkerContext(device="cuda" if cfg.use_gpu else "cpu", report=make_reporter(cfg, 0, 1))
            train_loop(cfg, ctx, items=items)
            extra = {"ray_run": None, "ray_checkpoint": None}
        else:
            extra = _fit_on_ray(cfg, items, ray_address, max_failures, emit)
    finally:
        tail.stop()
    res = summarize(cfg, noop=False, resumed_from=resumed_from, seconds=time.perf_counter() - t0,
                    workers=cfg.num_workers, **extra)
    tmp = Path(cfg.out) / (RESULT_NAME + ".partial")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, Path(cfg.out) / RESULT_NAME)
    emit({"event": "done", **res})
    return res


# -- Prefect tasks (the flow in flows/train_videoxl.py is made of these; the Ray workers never run Prefect)


def summary_markdown(res: dict) -> str:
    """The run summary as markdown (the flow's artifact)."""
    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "n/a"

    rows = [
        ("steps", str(res.get("steps"))),
        ("final loss", num(res.get("final_loss"), ".4f")),
        ("samples/s (median)", num(res.get("samples_per_s"), ".2f")),
        ("frames/s (median)", num(res.get("frames_per_s"), ".1f")),
        ("peak RSS per worker", num(res.get("peak_rss_mb"), ".0f") + " MiB"),
        ("workers", str(res.get("workers", res.get("config", {}).get("num_workers")))),
        ("resumed after step", str(res.get("resumed_from") or 0)),
        ("already finished (nothing trained)", "yes" if res.get("noop") else "no"),
        ("wall time", num(res.get("seconds"), ".1f") + " s"),
        ("output folder", f"`{res.get('out')}`"),
        ("trained model", f"`{res.get('model_dir')}` (`vxl index --model {res.get('model_dir')} ...`)"),
    ]
    lines = ["# Video-XL training", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    hist = res.get("history") or []
    if hist:
        pick = hist if len(hist) <= 12 else [hist[int(i * (len(hist) - 1) / 11)] for i in range(12)]
        lines += ["", "| step | loss |", "|---:|---:|", *(f"| {h['step']} | {h['loss']:.4f} |" for h in pick)]
    return "\n".join(lines) + "\n"


def _make_prefect_tasks():
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    @task(name="prepare-training-data", cache_policy=NO_CACHE)
    def prepare(cfg: dict) -> list[dict] | None:
        """Decode/render every training video once into the frame cache (None: the run has finished)."""
        from tasks.train import prepare_data

        c = TrainConfig(**cfg)
        if finished_result(c) is not None:
            return None
        return [asdict(i) for i in prepare_data(c)]

    @task(name="train", cache_policy=NO_CACHE)
    def train(cfg: dict, items: list[dict] | None, ray_address: str | None = None, local: bool = False) -> dict:
        """`run_training` (Ray Train workers, or this process with `local`); resumes from the newest checkpoint."""
        from tasks.train import Item

        return run_training(TrainConfig(**cfg), ray_address=ray_address, local=local,
                            items=[Item(**d) for d in items] if items is not None else None)

    @task(name="training-summary", cache_policy=NO_CACHE)
    def publish_summary(res: dict) -> str:
        """A markdown artifact (key `train-videoxl-summary`): steps, final loss, samples/s, output folder."""
        from prefect.artifacts import create_markdown_artifact

        return str(create_markdown_artifact(key="train-videoxl-summary", markdown=summary_markdown(res),
                                            description="vxl train_videoxl run summary"))

    return prepare, train, publish_summary


_TASKS = None


def prefect_tasks():
    """(prepare, train, publish_summary) Prefect tasks, built once."""
    global _TASKS
    if _TASKS is None:
        _TASKS = _make_prefect_tasks()
    return _TASKS
