"""One fan-out over model-holding Ray actors, used by every job that spreads videos over workers.

    ActorPool   N actors of one class, each loading its model once (`__init__`), restarted by Ray
                when their process dies (`max_restarts`); a slot per actor: loading -> ready
                (its `ready()` answered) -> loading again after a death -> dead when it cannot start.
    FanOut      work items over a pool: each goes to the least loaded ready actor; when the actor's
                process dies under it, the item is queued again until `max_attempts`; an error
                raised by the actor's method is the item's own outcome, never retried.

Used by `tasks.index` (the encode stage; decoding stays Ray tasks), `tasks.ask_library` (and so
`tasks.evaluate`, which answers through it) and `tasks.vico`. Each job keeps only what is its own:
the actor class, the call per item, what an outcome writes.

Failure semantics, by Ray's documented exception types (never by message text):
- `ray.exceptions.RayActorError` (`ActorDiedError`, `ActorUnavailableError`) from an item's call:
  the actor's process died or is restarting; the slot waits for `ready()` again, the item is retried.
- `ray.exceptions.RayTaskError` from an item's call: the method raised; the item's outcome is
  `raised` (a `model.environment.UpstreamDriftError` cause is re-raised: the model's invariants
  failed, and nothing should be stored by any item).
- from `ready()`: `ActorDiedError.actor_init_failed` or `RayTaskError` is final (the slot is dead);
  `ActorUnavailableError` (the process is restarting) is asked again every 0.5 s, up to
  `ready_timeout_s` after the slot started loading; `ActorDiedError` up to `DIED_ANSWERS` times.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DIED_ANSWERS = 20
"""`ActorDiedError` answers to `ready()` after which a slot is dead (0.5 s apart)."""


class PoolError(RuntimeError):
    """No actor of the pool could start, or every actor died; jobs wrap it in their own error type."""


@dataclass
class Slot:
    """One actor of an `ActorPool`."""

    handle: Any
    ready_ref: Any | None
    state: str = "loading"  # loading | ready | dead
    in_flight: int = 0
    pid: int | None = None
    ready_failures: int = 0
    died_answers: int = 0
    loading_since: float = field(default_factory=time.monotonic)
    """when the slot started (re)loading (`time.monotonic()` seconds)."""
    last_error: str | None = None
    info: dict | None = None
    """the actor's last `ready()` answer."""


def _drift_cause(exc: BaseException):
    from model.environment import UpstreamDriftError

    cause = getattr(exc, "cause", None)  # a RayTaskError's original exception (raised in the worker)
    if isinstance(cause, UpstreamDriftError):
        return cause
    return exc if isinstance(exc, UpstreamDriftError) else None


class ActorPool:
    """`n` actors of `actor_cls` (a plain class or a `ray.remote` class), created at once.

    Args:
        actor_cls: the actor body; it must have a `ready() -> dict` method whose dict holds `pid`.
        args, kwargs: `actor_cls.__init__` arguments (the model to load, ...).
        n: number of actors (>= 1).
        resources: Ray actor options, e.g. `{"num_cpus": 1}` or `{"num_gpus": 1}`.
        max_restarts: Ray restarts of a dead actor's process (each reloads the model).
        name: what the actors are called in errors ("encode worker").
        ready_timeout_s: how long a (re)starting actor may take to answer `ready()` before its
            slot is dead (a model load on a busy node takes minutes; a restart under CI load took
            over 10 s of "unavailable" answers).

    `on_ready(info, slot)`, when set, is called with each actor's `ready()` answer when it starts
    and after every restart (the numerics check); what it raises stops the run.
    """

    def __init__(self, actor_cls, args: tuple = (), kwargs: dict | None = None, *, n: int, resources: dict,
                 max_restarts: int = 4, name: str = "worker", ready_timeout_s: float = 900.0):
        import ray

        if n < 1:
            raise ValueError(f"an actor pool needs n >= 1, got {n}")
        cls = actor_cls if isinstance(actor_cls, ray.actor.ActorClass) else ray.remote(actor_cls)
        opts = {**resources, "max_restarts": max_restarts, "max_task_retries": 0}
        self.name = name
        self.slots: list[Slot] = []
        for _ in range(n):
            h = cls.options(**opts).remote(*args, **(kwargs or {}))
            self.slots.append(Slot(handle=h, ready_ref=h.ready.remote()))
        self.info: dict | None = None
        """the first actor's `ready()` answer (fingerprint, name, pid, ...)."""
        self.ready_timeout_s = ready_timeout_s
        self.restarts = 0
        """actor deaths seen while an item ran (each is a process restart by Ray)."""
        self.on_ready: Callable[[dict, Slot], None] | None = None

    def alive(self) -> list[Slot]:
        return [s for s in self.slots if s.state != "dead"]

    def loading_refs(self) -> dict:
        """{ready() ref: slot} of the actors still (re)loading."""
        return {s.ready_ref: s for s in self.slots if s.state == "loading" and s.ready_ref is not None}

    def wait_first_ready(self, timeout_s: float = 900.0) -> dict:
        """Block until one actor has loaded its model; that actor's `ready()` answer.

        Raises:
            PoolError: every actor failed to start (or none did within `timeout_s` seconds); the
                message holds the first errors.
        """
        import ray

        if self.info is not None:
            return self.info
        deadline = time.monotonic() + timeout_s
        errors: list[str] = []
        while time.monotonic() < deadline:
            pending = self.loading_refs()
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                self.resolve_ready(pending[ref], ref, errors)
            if self.info is not None:
                return self.info
        raise PoolError(f"no {self.name} could start: " + ("; ".join(errors[:2]) or f"timed out after {timeout_s:.0f} s"))

    def resolve_ready(self, slot: Slot, ref, errors: list | None = None) -> None:
        """Take the answer of `slot`'s `ready()` call `ref`: ready, loading again, or dead.

        Raises:
            UpstreamDriftError: the model's invariants failed in the actor (stop; store nothing).
            whatever `on_ready` raises.
        """
        import ray

        try:
            info = ray.get(ref)
        except ray.exceptions.RayError as exc:
            drift = _drift_cause(exc)
            if drift is not None:
                raise drift from None
            slot.ready_failures += 1
            slot.last_error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1][:500]}"
            # a restarting actor answers "unavailable" (ActorUnavailableError) at once, again and again,
            # until its process has started and loaded the model (seconds to minutes): wait for it up
            # to `ready_timeout_s`. An error in `ready()` or in the actor's `__init__`
            # (ActorDiedError.actor_init_failed) is final; so is ActorDiedError answered
            # `DIED_ANSWERS` times (its restarts are used up; the first answers after a death can be
            # ActorDiedError before Ray marks the actor as restarting)
            died = isinstance(exc, ray.exceptions.ActorDiedError)
            slot.died_answers += died
            final = isinstance(exc, ray.exceptions.RayTaskError) or (
                died and (exc.actor_init_failed or slot.died_answers >= DIED_ANSWERS))
            if final or time.monotonic() - slot.loading_since > self.ready_timeout_s:
                slot.state, slot.ready_ref = "dead", None
                if errors is not None:
                    errors.append(slot.last_error)
            else:
                time.sleep(0.5)
                slot.ready_ref = slot.handle.ready.remote()
            return
        if self.on_ready is not None:
            self.on_ready(info, slot)
        slot.state, slot.ready_ref, slot.pid, slot.info = "ready", None, info["pid"], info
        slot.ready_failures = slot.died_answers = 0
        if self.info is None:
            self.info = info

    def actor_died(self, slot: Slot) -> bool:
        """An item's call found `slot`'s process dead: Ray restarts it; wait for `ready()` again.
        True the first time for this death (False when the slot was already reloading)."""
        if slot.state != "ready":
            return False
        self.restarts += 1
        slot.state, slot.ready_ref, slot.loading_since = "loading", slot.handle.ready.remote(), time.monotonic()
        return True

    def shutdown(self) -> None:
        """Kill every actor (idempotent)."""
        import ray

        for s in self.slots:
            try:
                ray.kill(s.handle)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.slots = []


@dataclass
class WorkItem:
    """One unit of work: `payload` goes to the call; `context` is the job's own (not sent)."""

    key: str
    payload: Any
    context: Any = None
    attempts: int = 0
    """calls of this item whose actor died under it."""


@dataclass
class Outcome:
    """What became of an item: `ok` (`value` is the call's result), `raised` (the actor's method
    raised `error`, a `RayTaskError`) or `worker_died` (`max_attempts` actor deaths; `error` the last)."""

    item: WorkItem
    status: str
    value: Any = None
    error: BaseException | None = None
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def error_line(self, limit: int = 300) -> str:
        """`ExceptionType: last line of its message` (at most `limit` characters of it)."""
        if self.error is None:
            return ""
        lines = str(self.error).strip().splitlines()
        return f"{type(self.error).__name__}: {lines[-1][:limit] if lines else ''}"


@dataclass
class FanOut:
    """Work items over `pool`, `in_flight_per_worker` at a time per ready actor.

    `call(handle, payload)` submits one item and returns its object ref, e.g.
    `lambda h, p: h.answer_video.remote(*p)`. Drive it with `run` (simple jobs), or with `put`,
    `dispatch`, `waitables` and `resolve` inside a job's own `ray.wait` loop (index, which also
    waits on its decode tasks).
    """

    pool: ActorPool
    call: Callable[[Any, Any], Any]
    in_flight_per_worker: int = 1
    max_attempts: int = 2
    on_actor_died: Callable[[Slot], None] | None = None
    """called once per death of an actor seen by an item (progress events, counters)."""
    queue: deque = field(default_factory=deque)
    running: dict = field(default_factory=dict)  # ref -> (item, slot)

    def put(self, item: WorkItem, *, front: bool = False) -> None:
        (self.queue.appendleft if front else self.queue.append)(item)

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.running)

    def dispatch(self) -> None:
        """Send queued items to the least loaded ready actors.

        Raises:
            PoolError: items wait and every actor is dead.
        """
        while self.queue:
            free = [s for s in self.pool.slots if s.state == "ready" and s.in_flight < self.in_flight_per_worker]
            if not free:
                break
            slot = min(free, key=lambda s: s.in_flight)
            item = self.queue.popleft()
            self.running[self.call(slot.handle, item.payload)] = (item, slot)
            slot.in_flight += 1
        if self.busy and not self.pool.alive():
            last = next((s.last_error for s in reversed(self.pool.slots) if s.last_error), None)
            raise PoolError(f"every {self.pool.name} died (last error: {last or 'none recorded'}); see `ray logs` "
                            "(out of memory? a GPU fault?)")

    def waitables(self) -> list:
        """Object refs to `ray.wait` on: items running and actors (re)loading."""
        return list(self.running) + list(self.pool.loading_refs())

    def owns(self, ref) -> bool:
        return ref in self.running or any(r == ref for r in self.pool.loading_refs())

    def resolve(self, ref) -> Outcome | None:
        """Take a finished ref from `waitables()`: the item's `Outcome`, or None (an actor became
        ready, or the item was queued again after its actor died).

        Raises:
            UpstreamDriftError: raised in an actor (stop; store nothing).
        """
        import ray

        if ref not in self.running:
            slot = self.pool.loading_refs().get(ref)
            if slot is not None:
                self.pool.resolve_ready(slot, ref)
            return None
        item, slot = self.running.pop(ref)
        slot.in_flight -= 1
        try:
            value = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if self.pool.actor_died(slot) and self.on_actor_died is not None:
                self.on_actor_died(slot)
            item.attempts += 1
            if item.attempts >= self.max_attempts:
                return Outcome(item, "worker_died", error=exc, pid=slot.pid)
            self.put(item, front=True)
            return None
        except ray.exceptions.RayTaskError as exc:
            drift = _drift_cause(exc)
            if drift is not None:
                raise drift from None
            return Outcome(item, "raised", error=exc, pid=slot.pid)
        return Outcome(item, "ok", value=value, pid=slot.pid)

    def run(self, on_outcome: Callable[[Outcome], None], *, on_idle: Callable[[], None] | None = None,
            tick_s: float = 1.0) -> None:
        """Every queued item to its outcome; `on_outcome` is called as each finishes (in finishing
        order), `on_idle` when `tick_s` seconds pass without one.

        Raises:
            PoolError: every actor died with items left.
            UpstreamDriftError, and whatever the callbacks raise.
        """
        import ray

        while self.busy:
            self.dispatch()
            waitables = self.waitables()
            if not waitables:  # pragma: no cover - dispatch raised when nothing is alive
                continue
            done, _ = ray.wait(waitables, num_returns=1, timeout=tick_s)
            if not done and on_idle is not None:
                on_idle()
            for ref in done:
                out = self.resolve(ref)
                if out is not None:
                    on_outcome(out)
