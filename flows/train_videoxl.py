"""Prefect flow `train_videoxl`: train Video-XL with a curriculum over compression ratios on Ray Train
(issue 12).

Thin: three tasks from `tasks/train_ray.py` (prepare the data once, train on Ray Train workers, a
summary artifact). The flow runs in the calling process (Prefect's ephemeral mode by default, or a
Prefect server via `PREFECT_API_URL` / a deployment in `prefect.yaml`); the Ray Train workers it
starts never run Prefect.

    from flows.train_videoxl import train_videoxl
    from tasks.train import TrainConfig
    train_videoxl(TrainConfig(out="runs/toy", data=["toy:400"], steps=1000, batch_size=8, num_workers=2))
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow  # noqa: E402

from flows.deploy import reject_templates  # noqa: E402
from tasks.train import TrainConfig  # noqa: E402
from tasks.train_ray import check_resources, finished_result, prefect_tasks  # noqa: E402


@flow(name="train-videoxl", log_prints=False, validate_parameters=True)
def train_videoxl(options: TrainConfig, ray_address: str | None = None, local: bool = False) -> dict:
    """Train per `options` (`tasks.train.TrainConfig`: the same model as `vxl train`'s flags; a
    deployment gives it as a mapping, e.g. `options: {out: runs/toy, data: [toy:400], steps: 1000}`),
    resuming from the newest checkpoint in `options.out`; a finished run is reported again without
    training.

    Args:
        options: the job's options (unset fields: their defaults).
        ray_address: Ray cluster (default `RAY_ADDRESS`, else a local Ray).
        local: one worker in the flow's process, no Ray.

    Returns:
        `tasks.train_ray.run_training`'s result: `final_loss`, `steps`, `samples_per_s`, `model_dir`
        (`out/final`), `history`, `noop`, `resumed_from`, ...

    Raises:
        TrainError: `usage`/`data` (before Ray starts), `train` (a worker or Ray Train failed).
    """
    reject_templates("train-videoxl", out=options.out, data=options.data, model=options.model,
                     video_root=options.video_root, cache_dir=options.cache_dir, ray_address=ray_address,
                     init_vision=options.init_vision)
    cfg = options.model_copy(update={"out": str(Path(options.out).resolve())})
    cfg.validate()
    if not local and finished_result(cfg) is None:
        check_resources(cfg, ray_address)  # before the data is prepared
    prepare, train, publish_summary = prefect_tasks()
    items = prepare(cfg.to_dict())
    res = train(cfg.to_dict(), items, ray_address=ray_address, local=local)
    publish_summary(res)
    return res
