"""The encode pool tells a restarting actor from a dead one by Ray's exception types (issue 10), not by
the text of their messages, and stops the run on upstream drift raised in a worker."""

from __future__ import annotations

import pytest
import ray
import ray.exceptions as rex

from model.environment import UpstreamDriftError
from tasks.index import WorkerPool, _Slot


class _Handle:
    class ready:  # noqa: N801 - mimics `handle.ready.remote()`
        @staticmethod
        def remote():
            return "ref"


def _pool() -> WorkerPool:
    pool = WorkerPool.__new__(WorkerPool)
    pool.slots, pool.info, pool.on_ready, pool.max_ready_failures = [], None, None, 3
    return pool


def _resolve(monkeypatch, exc) -> _Slot:
    def get(ref):
        raise exc

    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr("tasks.index.time.sleep", lambda s: None)
    slot = _Slot(handle=_Handle(), ready_ref="ref")
    _pool()._resolve_ready(slot, "ref", [])
    return slot


def _task_error(cause: BaseException) -> rex.RayTaskError:
    return rex.RayTaskError("EncodeWorker.ready", "Traceback ...", cause)


def test_unavailable_actor_is_waited_for(monkeypatch):
    slot = _resolve(monkeypatch, rex.ActorUnavailableError("restarting: the creation task is running", None))
    assert slot.state == "loading" and slot.ready_failures == 1 and slot.ready_ref == "ref"


def test_actor_whose_init_failed_is_dead(monkeypatch):
    exc = rex.ActorDiedError(_task_error(ValueError("no such checkpoint")))
    assert exc.actor_init_failed
    slot = _resolve(monkeypatch, exc)
    assert slot.state == "dead"


def test_error_raised_by_ready_is_final(monkeypatch):
    slot = _resolve(monkeypatch, _task_error(ValueError("bad")).as_instanceof_cause())
    assert slot.state == "dead"


def test_drift_in_a_worker_stops_the_run(monkeypatch):
    drift = UpstreamDriftError("transformers", "a decoder pass fed 14 tokens")
    with pytest.raises(UpstreamDriftError, match="^transformers .*: a decoder pass fed 14 tokens"):
        _resolve(monkeypatch, _task_error(drift).as_instanceof_cause())
