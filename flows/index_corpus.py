"""Prefect flow `index_corpus`: index a video library into a VST-KV archive (issue 4).

Thin: four tasks from `tasks/index.py` (discover, open archive, the Ray pipeline, summary artifact).
The flow runs in the calling process (Prefect's ephemeral mode by default, or a Prefect server via
`PREFECT_API_URL` / a deployment in `prefect.yaml`); the Ray workers it drives never run Prefect.

    from flows.index_corpus import index_corpus
    index_corpus(["videos/"], archive="archive/", model="tiny", max_frames=16)
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow  # noqa: E402

from flows.deploy import reject_templates  # noqa: E402
from flows.outcome import final_state  # noqa: E402
from tasks.index import IndexJobOptions, options_to_dict, prefect_tasks  # noqa: E402
from tasks.options import flow_function  # noqa: E402


def _index_corpus(options: dict) -> dict:
    reject_templates("index-corpus", sources=options.get("sources"), archive=options.get("archive"),
                     model=options.get("model"), clip_weights=options.get("clip_weights"),
                     clip_model=options.get("clip_model"), ray_address=options.get("ray_address"))
    discover_videos, check_archive, index_videos, publish_summary = prefect_tasks()
    opts = IndexJobOptions.checked(**options)
    found = discover_videos(opts.sources)
    check_archive(opts.archive_uri)
    report = index_videos(found["videos"], opts.archive_uri, options_to_dict(opts.engine()), found["ignored"])
    publish_summary(report)
    done = len(report["indexed"]) + sum(1 for k in report["skipped"] if k["reason"] != "failed_before")
    return final_state(report, succeeded=done, failed=len(report["failed"]), what="videos")


# One flow parameter per field of IndexJobOptions (flat: the nightly deployment fills them from
# `{{ $VAR }}` templates and a run overrides single ones, see tasks.options.flow_function).
index_corpus = flow(name="index-corpus", log_prints=False, validate_parameters=True)(flow_function(
    IndexJobOptions, _index_corpus,
    doc="""Index every video of `sources` (folders, globs, .csv/.jsonl/.parquet manifests with a `uri`
    column) into the archive at `archive` (folder or object-store URI; default $VXL_ARCHIVE).

    Returns (as the final state's data; the state is `Completed`, "Completed with failures" or
    `Failed` when every video of the run failed, `flows.outcome.final_state`) the `IndexReport` as
    a dict (`indexed`, `skipped`, `failed`, `frames`, `kv_bytes`, `seconds`, ...). Invalid options
    raise `tasks.index.UsageError` naming the flag."""))
