"""`tasks.fanout`: the one fan-out over model-holding Ray actors (index, ask-library, eval, VICO).

The unit tests tell a restarting actor from a dead one by Ray's exception types (issue 10), not by
the text of their messages. The Ray tests run real actors that die (`os._exit`) or raise, and check
each item's outcome against what the test made happen: which items, which attempts, which restarts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import ray
import ray.exceptions as rex

from model.environment import UpstreamDriftError
from tasks.fanout import ActorPool, FanOut, PoolError, Slot, WorkItem

pytestmark = pytest.mark.timeout(300)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules


class _Handle:
    class ready:  # noqa: N801 - mimics `handle.ready.remote()`
        @staticmethod
        def remote():
            return "ref"


def _pool() -> ActorPool:
    pool = ActorPool.__new__(ActorPool)
    pool.slots, pool.info, pool.on_ready, pool.ready_timeout_s, pool.name = [], None, None, 60.0, "worker"
    return pool


def _resolve(monkeypatch, exc) -> Slot:
    def get(ref):
        raise exc

    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr("tasks.fanout.time.sleep", lambda s: None)
    slot = Slot(handle=_Handle(), ready_ref="ref")
    _pool().resolve_ready(slot, "ref", [])
    return slot


def _task_error(cause: BaseException) -> rex.RayTaskError:
    return rex.RayTaskError("EncodeWorker.ready", "Traceback ...", cause)


def test_unavailable_actor_is_waited_for(monkeypatch):
    slot = _resolve(monkeypatch, rex.ActorUnavailableError("restarting: the creation task is running", None))
    assert slot.state == "loading" and slot.ready_failures == 1 and slot.ready_ref == "ref"


def test_a_restarting_actor_is_waited_for_by_time_not_by_count(monkeypatch):
    """Under load a restarting actor answers ActorUnavailableError at once, dozens of times (CI saw
    more than 20 in a row): it stays loading however often it answers so, until `ready_timeout_s`
    after it started loading, and then the slot is dead with that error."""
    monkeypatch.setattr(ray, "get", lambda ref: (_ for _ in ()).throw(rex.ActorUnavailableError("restarting", None)))
    monkeypatch.setattr("tasks.fanout.time.sleep", lambda s: None)
    pool, slot = _pool(), Slot(handle=_Handle(), ready_ref="ref")
    for _ in range(100):
        pool.resolve_ready(slot, "ref", [])
    assert slot.state == "loading" and slot.ready_failures == 100
    slot.loading_since -= pool.ready_timeout_s + 1
    errors = []
    pool.resolve_ready(slot, "ref", errors)
    assert slot.state == "dead" and errors == [slot.last_error] and slot.last_error.startswith("ActorUnavailableError")


def test_an_actor_whose_restarts_are_used_up_is_dead_after_a_few_answers(monkeypatch):
    """ActorDiedError that is not an init failure (restarts used up) is not waited for 900 s."""
    from tasks.fanout import DIED_ANSWERS

    monkeypatch.setattr(ray, "get", lambda ref: (_ for _ in ()).throw(rex.ActorDiedError()))
    monkeypatch.setattr("tasks.fanout.time.sleep", lambda s: None)
    pool, slot = _pool(), Slot(handle=_Handle(), ready_ref="ref")
    for _ in range(DIED_ANSWERS - 1):
        pool.resolve_ready(slot, "ref", [])
    assert slot.state == "loading"
    pool.resolve_ready(slot, "ref", [])
    assert slot.state == "dead" and slot.last_error.startswith("ActorDiedError")


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


# ----------------------------------------------------------------------------------------------
# real actors


class Squarer:
    """A 'model-holding' actor: counts its starts in `log_dir`; item `x` returns x * x, except that
    `die_on` items kill the process (`os._exit`) while a marker for them is missing (once each, or
    every time for `always_die`), and `raise_on` items raise ValueError."""

    def __init__(self, log_dir: str, die_on=(), always_die=(), raise_on=(), fail_init: bool = False):
        if fail_init:
            raise FileNotFoundError("no such checkpoint: /models/missing")
        self.log = Path(log_dir)
        (self.log / f"start_{os.getpid()}_{len(list(self.log.glob('start_*')))}").touch()
        self.die_on, self.always_die, self.raise_on = set(die_on), set(always_die), set(raise_on)

    def ready(self) -> dict:
        return {"pid": os.getpid()}

    def square(self, x: int) -> dict:
        marker = self.log / f"died_{x}"
        if x in self.always_die or (x in self.die_on and not marker.exists()):
            marker.touch()
            os._exit(1)
        if x in self.raise_on:
            raise ValueError(f"item {x} is malformed")
        return {"x": x, "y": x * x, "pid": os.getpid()}


def _run(pool: ActorPool, items, max_attempts: int = 2):
    died = []
    fan = FanOut(pool, lambda h, x: h.square.remote(x), max_attempts=max_attempts, on_actor_died=died.append)
    for x in items:
        fan.put(WorkItem(key=str(x), payload=x))
    outcomes = []
    fan.run(outcomes.append)
    return {o.item.payload: o for o in outcomes}, died


@pytest.mark.slow
def test_an_actor_that_dies_is_restarted_checked_again_and_its_item_retried(ray_session, tmp_path):
    pool = ActorPool(Squarer, (str(tmp_path),), {"die_on": [3]}, n=1, resources={"num_cpus": 1},
                     max_restarts=2, name="squarer")
    try:
        readies = []
        pool.on_ready = lambda info, slot: readies.append(info["pid"])
        pool.wait_first_ready()
        out, died = _run(pool, range(6))
    finally:
        pool.shutdown()
    assert sorted(out) == list(range(6))
    assert all(o.ok and o.value["y"] == x * x for x, o in out.items())
    assert out[3].item.attempts == 1  # died once, then answered by the restarted process
    assert len(died) == 1 and pool.restarts == 1
    assert len(list(tmp_path.glob("start_*"))) == 2  # the first process and its restart, each loaded once
    first, second = readies  # ready() (and so the on_ready check) ran again for the new process
    assert first != second
    assert [out[x].pid for x in range(6)] == [first] * 3 + [second] * 3


@pytest.mark.slow
def test_an_item_that_keeps_killing_its_actor_fails_alone_and_a_raised_error_is_not_retried(ray_session, tmp_path):
    pool = ActorPool(Squarer, (str(tmp_path),), {"always_die": [5], "raise_on": [2]}, n=2,
                     resources={"num_cpus": 1}, max_restarts=4, name="squarer")
    try:
        pool.wait_first_ready()
        out, died = _run(pool, range(6), max_attempts=2)
    finally:
        pool.shutdown()
    assert out[5].status == "worker_died" and out[5].item.attempts == 2
    assert isinstance(out[5].error, rex.RayActorError)
    assert out[2].status == "raised" and out[2].item.attempts == 0
    assert "ValueError: item 2 is malformed" in out[2].error_line()
    assert {x for x, o in out.items() if o.ok} == {0, 1, 3, 4}
    assert all(out[x].value["y"] == x * x for x in (0, 1, 3, 4))
    assert len(died) == 2


@pytest.mark.slow
def test_a_pool_whose_actors_cannot_start_names_the_cause(ray_session, tmp_path):
    pool = ActorPool(Squarer, (str(tmp_path),), {"fail_init": True}, n=2, resources={"num_cpus": 1},
                     max_restarts=0, name="squarer")
    try:
        with pytest.raises(PoolError, match="no squarer could start: .*no such checkpoint: /models/missing"):
            pool.wait_first_ready(timeout_s=120)
        fan = FanOut(pool, lambda h, x: h.square.remote(x))
        fan.put(WorkItem(key="1", payload=1))
        with pytest.raises(PoolError, match="every squarer died"):
            fan.dispatch()
    finally:
        pool.shutdown()
