"""Prefect flow `evaluate`: score a benchmark question file from the archive (issue 13).

Thin: one task runs `tasks.evaluate.run_eval` (index what is missing through the index pipeline,
then answer through the ask-library machinery on Ray actors; answers are stored in the archive and
skipped on rerun), one publishes a markdown artifact with the accuracy per question type and
duration bucket (95% Wilson intervals).
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, task  # noqa: E402

from flows.deploy import reject_templates  # noqa: E402
from flows.outcome import final_state  # noqa: E402
from tasks.evaluate import EvalOptions  # noqa: E402


def eval_markdown(res: dict) -> str:
    """The artifact: overall and per-type accuracy with 95% intervals, the questions left out."""
    def row(name: str, d: dict) -> str:
        lo, hi = d["ci95"]
        return f"| {name} | {d['correct']} / {d['total']} | {d['accuracy']:.1%} | {lo:.1%} - {hi:.1%} |"

    lines = [f"# evaluate: `{res['questions_file']}` ({res['layout']})", "",
             f"archive `{res['archive']}`, model `{res['model']}` (`{(res['fingerprint'] or '-')[:16]}`), "
             f"settings `{res['settings']}`", "",
             "| question type | correct / total | accuracy | 95% CI |", "|---|---|---|---|"]
    lines += [row(t, d) for t, d in res["per_type"].items()]
    lines.append(row("**overall**", {"correct": res["correct"], "total": res["num_questions"],
                                     "accuracy": res["accuracy"], "ci95": res["ci95"]}))
    lines += ["", "| duration | correct / total | accuracy | 95% CI |", "|---|---|---|---|"]
    lines += [row(t, d) for t, d in res["per_duration"].items()]
    if res["missing"]:
        lines += ["", f"{len(res['missing'])} questions not scored:", "", "| question | video | reason |", "|---|---|---|"]
        lines += [f"| {m['qid']} | {m['video']} | {m['reason']} |" for m in res["missing"][:50]]
    return "\n".join(lines)


@task(name="evaluate-questions")
def _run(options: EvalOptions, ray_address: str | None) -> dict:
    from tasks.evaluate import run_eval

    return run_eval(options, ray_address=ray_address)


@flow(name="evaluate", log_prints=False, validate_parameters=True)
def evaluate(options: EvalOptions, ray_address: str | None = None) -> dict:
    """Score `options.questions_file` (MLVU, Video-MME, LongVideoBench or vxl layout) with
    `options.model` from the archive (`tasks.evaluate.EvalOptions`: the same model as `vxl eval`'s
    flags; a deployment gives it as a mapping); returns `tasks.evaluate.run_eval`'s dict and
    publishes the artifact `evaluate-summary`.

    Raises:
        EvalError: a malformed file or option (usage), an unreachable archive or Ray (infrastructure).
    """
    from prefect.artifacts import create_markdown_artifact

    reject_templates("evaluate", **options.model_dump(), ray_address=ray_address)
    options.validate()
    res = _run(options, ray_address)
    create_markdown_artifact(markdown=eval_markdown(res), key="evaluate-summary", description="vxl eval summary")
    return final_state(res, succeeded=res["num_questions"], failed=len(res["missing"]), what="questions")
