"""Prefect flow `synth_vico`: VICO (Visual Clue Order) training samples from a video library (issue 7).

Thin: four tasks from `tasks/vico.py` (plan jobs, the per-video Ray fan-out, write outputs, summary
artifact). The flow runs in the calling process; the Ray workers it drives never run Prefect.

    from flows.synth_vico import synth_vico
    synth_vico("videos/", out="vico_out", captioner="ground-truth", extractor="heuristic", clip_seconds=3)
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow  # noqa: E402

from flows.deploy import reject_templates  # noqa: E402
from flows.outcome import final_state  # noqa: E402
from tasks.options import flow_function  # noqa: E402
from tasks.vico import FAILURE_KINDS, VicoOptions, prefect_tasks  # noqa: E402


def _synth_vico(options: dict) -> dict:
    reject_templates("synth-vico", source=options.get("source"), out=options.get("out"),
                     annotations=options.get("annotations"), archive=options.get("archive"),
                     ray_address=options.get("ray_address"))
    plan_vico_jobs, synth_vico_videos, write_vico_samples, publish_summary = prefect_tasks()
    opts = VicoOptions.checked(**options)
    options = opts.to_dict()
    jobs, join = plan_vico_jobs(options)
    results, run_info = synth_vico_videos(jobs, options)
    summary = write_vico_samples(results, options, join)
    publish_summary(summary)
    v = summary["videos"]
    failed = sum(n for k, n in summary["skipped_by_kind"].items() if k in FAILURE_KINDS)
    if summary["samples_written"]["total"] == 0 and not failed:
        failed = max(1, v["total"])  # nothing written at all is a failed run, whatever the reason
    return final_state({**summary, "run": run_info}, succeeded=v["with_samples"], failed=failed, what="videos")


# One flow parameter per field of VicoOptions (flat: runs override single parameters of the
# deployment, see tasks.options.flow_function).
synth_vico = flow(name="synth-vico", log_prints=False, validate_parameters=True)(flow_function(
    VicoOptions, _synth_vico,
    doc="""Synthesise VICO samples from the videos of `source` into `out`.

    Returns (as the final state's data: `Completed`, "Completed with failures" when a video failed,
    or `Failed` when no sample was written, `flows.outcome.final_state`) the summary (samples
    written per split, skipped videos and why, clue-count and answer-position distributions,
    `exit_code`). Invalid options raise `tasks.vico.VicoUsageError` naming the flag."""))
