"""Flow `ask_library`: one or many questions over every indexed video (or those matching `--where`).

Wiring only: the job is `tasks.ask_library.run_ask_library` (Ray actors `tasks.ask_library.AskWorker`,
the model loaded once per actor, no vision tower); this flow runs it as one task and publishes the
summary as the artifact `ask-library-summary`. Prefect's engine stays in the driver: the actors are
plain Ray actors (no RayTaskRunner), so no worker ever starts a temporary Prefect server.
"""

from __future__ import annotations

import inspect
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, task  # noqa: E402

from flows.deploy import reject_templates  # noqa: E402
from flows.outcome import final_state  # noqa: E402
from tasks.ask_library import AskLibraryOptions, run_ask_library, summary_markdown  # noqa: E402
from tasks.options import flow_function  # noqa: E402


@task(name="ask-library-videos")
def _run(options: AskLibraryOptions, ray_address: str | None) -> dict:
    return run_ask_library(options, ray_address=ray_address)


def _ask_library(options: dict, ray_address: str | None = None) -> dict:
    from prefect.artifacts import create_markdown_artifact

    reject_templates("ask_library", archive_uri=options.get("archive_uri"), questions_file=options.get("questions_file"),
                     model=options.get("model"), ray_address=ray_address)
    opts = AskLibraryOptions.checked(**options)
    summary = _run(options=opts, ray_address=ray_address)
    create_markdown_artifact(markdown=summary_markdown(summary), key="ask-library-summary",
                             description="vxl ask-library job summary")
    return final_state(summary, succeeded=summary["answered"] + summary["skipped"], failed=summary["failed"],
                       what="questions")


# One flow parameter per field of AskLibraryOptions (flat: runs override single parameters of the
# deployment, see tasks.options.flow_function), then `ray_address`.
ask_library = flow(name="ask_library", log_prints=False)(flow_function(
    AskLibraryOptions, _ask_library,
    extra=[inspect.Parameter("ray_address", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None)],
    extra_help={"ray_address": "Ray cluster (default $RAY_ADDRESS, else a private local Ray)."},
    doc="""Prefect flow around `run_ask_library`; publishes the summary as the artifact `ask-library-summary`.

    Returns the summary as the final state's data; the state is `Completed`, "Completed with
    failures" when some answers failed, or `Failed` when every question failed (`flows.outcome`).
    Invalid options raise `tasks.ask.AskError` (kind "usage") before Ray starts."""))
