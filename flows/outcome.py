"""Flow run states that say what happened to the items of a run (issue 15).

A run where 5 of 7 videos failed must not show a green `Completed` in the Prefect UI, and an
automation must be able to react to it. Each flow returns `final_state(...)`:

    every item succeeded (or there was nothing to do)  ->  Completed
    some items failed, some succeeded                  ->  Completed, named "Completed with failures"
    items failed and none succeeded                    ->  Failed

The state carries the run's result dict as its data, so callers still get the report: the CLI calls
flows through `run_flow`, which returns that dict whatever the state, and re-raises the exception
when the flow itself raised (usage and infrastructure errors keep their types).
"""

from __future__ import annotations

from typing import Any

PARTIAL_STATE_NAME = "Completed with failures"


def final_state(result: Any, *, succeeded: int, failed: int, what: str):
    """The state a flow returns for `result`.

    Args:
        result: the flow's result (returned to callers as the state's data).
        succeeded: items done (including skipped-as-done ones that need no work).
        failed: items that failed in this run.
        what: the item's name for the message, plural (e.g. "videos", "questions").

    Returns:
        `prefect.states.Completed` (named "Completed with failures" when `failed` > 0 and
        `succeeded` > 0) or `prefect.states.Failed` (`failed` > 0, `succeeded` == 0).
    """
    from prefect.states import Completed, Failed

    if failed <= 0:
        return Completed(data=result, message=f"{succeeded} {what} done")
    msg = f"{failed} of {failed + succeeded} {what} failed (see the run's artifact)"
    if succeeded <= 0:
        return Failed(data=result, message=msg)
    return Completed(data=result, name=PARTIAL_STATE_NAME, message=msg)


def run_flow(flow_fn, **kwargs) -> Any:
    """Call a flow and return its result whatever its final state; re-raise what the flow raised.

    Raises:
        whatever the flow raised (its own type, e.g. `UsageError`, `AskError`).
    """
    state = flow_fn(**kwargs, return_state=True)
    res = state.result(raise_on_failure=False)
    if isinstance(res, BaseException):
        raise res
    return res
