"""`flows.outcome`: the final state of a run says whether its items failed (issue 15)."""

from __future__ import annotations

import pytest

from flows.outcome import PARTIAL_STATE_NAME, final_state


@pytest.mark.parametrize(
    ("succeeded", "failed", "kind", "name"),
    [(3, 0, "COMPLETED", "Completed"), (0, 0, "COMPLETED", "Completed"),
     (2, 5, "COMPLETED", PARTIAL_STATE_NAME), (0, 4, "FAILED", "Failed")],
)
def test_final_state_by_counts(succeeded, failed, kind, name):
    report = {"indexed": succeeded, "failed": failed}
    state = final_state(report, succeeded=succeeded, failed=failed, what="videos")
    assert state.type.value == kind and state.name == name
    assert state.result(raise_on_failure=False) == report  # the report travels with the state
    if failed:
        assert f"{failed} of {failed + succeeded} videos failed" in state.message
