"""Prefect flow `train_videoxl`: train Video-XL with a curriculum over compression ratios on Ray Train
(issue 12).

Thin: three tasks from `tasks/train_ray.py` (prepare the data once, train on Ray Train workers, a
summary artifact). The flow runs in the calling process (Prefect's ephemeral mode by default, or a
Prefect server via `PREFECT_API_URL` / a deployment in `prefect.yaml`); the Ray Train workers it
starts never run Prefect.

    from flows.train_videoxl import train_videoxl
    train_videoxl(out="runs/toy", data=["toy:400"], steps=1000, batch_size=8, num_workers=2)
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow  # noqa: E402

from flows.deploy import reject_templates  # noqa: E402
from tasks.train import TOY_INIT, TrainConfig  # noqa: E402
from tasks.train_ray import check_resources, finished_result, prefect_tasks  # noqa: E402


@flow(name="train-videoxl", log_prints=False, validate_parameters=True)
def train_videoxl(
    out: str,
    data: list[str] | None = None,
    model: str = TOY_INIT,
    video_root: str | None = None,
    steps: int = 1000,
    batch_size: int = 8,
    lr: float = 1e-3,
    vision_lr: float | None = None,
    weight_decay: float = 0.01,
    warmup_steps: int = 50,
    min_lr_ratio: float = 0.1,
    grad_clip: float | None = 1.0,
    trainable: list[str] | None = None,
    curriculum: str = "0:2,4;300:2,4,8,12,16",
    planner: str = "fixed",
    question_types: list[str] | None = None,
    questions_per_sample: int = 4,
    fps: float = 1.0,
    max_frames: int = 128,
    seed: int = 0,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 2,
    grad_checkpointing: bool = False,
    num_workers: int = 1,
    use_gpu: bool = False,
    strategy: str = "ddp",
    precision: str = "auto",
    cache_dir: str | None = None,
    objective: str = "answers",
    init_vision: str | None = None,
    ray_address: str | None = None,
    local: bool = False,
) -> dict:
    """Train per the parameters (those of `tasks.train.TrainConfig`; None: its default), resuming
    from the newest checkpoint in `out`; a finished run is reported again without training.

    Args:
        ray_address: Ray cluster (default `RAY_ADDRESS`, else a local Ray).
        local: one worker in the flow's process, no Ray.
        (the others: `tasks.train.TrainConfig`).

    Returns:
        `tasks.train_ray.run_training`'s result: `final_loss`, `steps`, `samples_per_s`, `model_dir`
        (`out/final`), `history`, `noop`, `resumed_from`, ...

    Raises:
        TrainError: `usage`/`data` (before Ray starts), `train` (a worker or Ray Train failed).
    """
    reject_templates("train-videoxl", out=out, data=data, model=model, video_root=video_root, cache_dir=cache_dir,
                     ray_address=ray_address, init_vision=init_vision)
    kw = {k: v for k, v in dict(data=data, trainable=trainable, question_types=question_types).items() if v is not None}
    cfg = TrainConfig(out=str(Path(out).resolve()), model=model, video_root=video_root, steps=steps, batch_size=batch_size, lr=lr,
                      vision_lr=vision_lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                      min_lr_ratio=min_lr_ratio, grad_clip=grad_clip, curriculum=curriculum, planner=planner,
                      questions_per_sample=questions_per_sample, fps=fps, max_frames=max_frames, seed=seed,
                      checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
                      grad_checkpointing=grad_checkpointing, num_workers=num_workers, use_gpu=use_gpu,
                      strategy=strategy, precision=precision, cache_dir=cache_dir, objective=objective,
                      init_vision=init_vision, **kw)
    cfg.validate()
    if not local and finished_result(cfg) is None:
        check_resources(cfg, ray_address)  # before the data is prepared
    prepare, train, publish_summary = prefect_tasks()
    items = prepare(cfg.to_dict())
    res = train(cfg.to_dict(), items, ray_address=ray_address, local=local)
    publish_summary(res)
    return res
