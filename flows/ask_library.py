"""Flow `ask_library`: one or many questions over every indexed video (or those matching `--where`).

Wiring only: the job is `tasks.ask_library.run_ask_library` (Ray actors `tasks.ask_library.AskWorker`,
the model loaded once per actor, no vision tower); this flow runs it as one task and publishes the
summary as the artifact `ask-library-summary`. Prefect's engine stays in the driver: the actors are
plain Ray actors (no RayTaskRunner), so no worker ever starts a temporary Prefect server.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, task  # noqa: E402

from flows.deploy import reject_templates  # noqa: E402
from flows.outcome import final_state  # noqa: E402
from tasks.ask_library import run_ask_library, summary_markdown  # noqa: E402


@task(name="ask-library-videos")
def _run(archive_uri: str, questions: list | None, questions_file: str | None, where: str | None, model: str,
         max_new_tokens: int, top_windows: int | None, workers: int | None, ray_address: str | None,
         force: bool, accept_numerics_change: bool = False) -> dict:
    return run_ask_library(archive_uri, questions, questions_file, where, model, max_new_tokens, top_windows,
                           workers, ray_address, force, accept_numerics_change=accept_numerics_change)


@flow(name="ask_library", log_prints=False)
def ask_library(
    archive_uri: str,
    questions: list | None = None,
    questions_file: str | None = None,
    where: str | None = None,
    model: str = "tiny",
    max_new_tokens: int = 32,
    top_windows: int | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    force: bool = False,
    accept_numerics_change: bool = False,
) -> dict:
    """Prefect flow around `run_ask_library`; publishes the summary as the artifact `ask-library-summary`.

    Returns the summary as the final state's data; the state is `Completed`, "Completed with
    failures" when some answers failed, or `Failed` when every question failed (`flows.outcome`)."""
    from prefect.artifacts import create_markdown_artifact

    reject_templates("ask_library", archive_uri=archive_uri, questions_file=questions_file, model=model,
                     ray_address=ray_address)
    summary = _run(archive_uri=archive_uri, questions=questions, questions_file=questions_file, where=where,
                   model=model, max_new_tokens=max_new_tokens, top_windows=top_windows, workers=workers,
                   ray_address=ray_address, force=force, accept_numerics_change=accept_numerics_change)
    create_markdown_artifact(markdown=summary_markdown(summary), key="ask-library-summary",
                             description="vxl ask-library job summary")
    return final_state(summary, succeeded=summary["answered"] + summary["skipped"], failed=summary["failed"],
                       what="questions")
