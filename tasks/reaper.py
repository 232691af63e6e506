"""Leave no Ray process behind when a driver that started a private local Ray is killed (issue 15).

`ray.init()` starts the GCS, the raylet and, through the raylet, `ray::DashboardAgent`,
`ray::RuntimeEnvAgent` and worker processes. `ray.shutdown()` stops them on a normal exit; a
SIGKILL of the driver (during start-up in the reported case) left the agents running, orphaned,
listening on ports. Nothing runs in a SIGKILLed process, so a small watcher process does it: it
follows the driver's process tree (every `INTERVAL_S`), and when the driver is gone it SIGKILLs
every process it saw descend from it (matched by pid *and* start time, so a reused pid is never
hit), then the descendants those still had. Linux only (`/proc`); elsewhere it does nothing.

    python -m tasks.reaper DRIVER_PID      # started by tasks.ray_runtime.ensure_ray
"""

from __future__ import annotations

import os
import signal
import sys
import time

INTERVAL_S = 0.5


def _proc(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, process group, start time in clock ticks) of `pid`, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()  # fields after "pid (comm)"
    return int(rest[1]), int(rest[2]), int(rest[19])


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of `pid`, or None when it is gone."""
    st = _proc(pid)
    return None if st is None else (st[0], st[2])


def _pgrp_start(pid: int) -> tuple[int, int] | None:
    """(process group, start time in clock ticks) of `pid`, or None when it is gone."""
    st = _proc(pid)
    return None if st is None else (st[1], st[2])


def _late_group_members(pgrp: int, after: int, me: int, family: set[int]) -> dict[int, int]:
    """{pid: start} of processes in group `pgrp` started at or after tick `after` (not `me`): what the
    driver started since the watcher began (Ray's processes inherit the driver's group), even those
    spawned in the last interval before the driver died.

    The group is shared with the driver's parent and siblings (a shell running `vxl` twice, pytest
    running a driver subprocess): a process whose parent still runs in the group without being
    the driver or one of `family` (the driver's descendants seen) belongs to one of them, and is
    left alone. The driver's own late children have lost their parent (they are re-parented to
    init or a subreaper) or have a parent in `family`.
    """
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            st = _proc(int(name))
            if st is None or st[1] != pgrp or st[2] < after:
                continue
            parent = _proc(st[0])
            if st[0] not in family and parent is not None and parent[1] == pgrp:
                continue  # a child of a live process of the group that is not the driver's: a sibling's
            out[int(name)] = st[2]
    return out


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                kids.setdefault(st[0], []).append(int(name))
    return kids


def descendants(roots: list[int]) -> dict[int, int]:
    """{pid: start time} of every process below `roots` (not the roots themselves)."""
    kids, out, todo = _children(), {}, list(roots)
    while todo:
        for c in kids.get(todo.pop(), []):
            st = _stat(c)
            if st is not None and c not in out:
                out[c] = st[1]
                todo.append(c)
    return out


def reap(known: dict[int, int]) -> list[int]:
    """SIGKILL each process of `known` that still runs with the same start time, and whatever
    descends from them; returns the pids killed."""
    killed: list[int] = []
    for _ in range(5):  # a dying raylet's children, then theirs
        targets = {p: t for p, t in {**known, **descendants(list(known))}.items()
                   if (st := _stat(p)) is not None and st[1] == t}
        if not targets:
            break
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
        known = targets
        time.sleep(0.2)
    return killed


def watch(driver: int) -> list[int]:
    """Follow `driver`'s process tree until it exits, then reap what it left. Returns the pids killed."""
    me = os.getpid()
    first = _stat(driver)
    if first is None:
        return []
    mine = _pgrp_start(me)
    try:
        pgrp = os.getpgid(driver)
    except OSError:
        pgrp = None
    known: dict[int, int] = {}
    family = {driver}  # every descendant ever seen (pids), for `_late_group_members`
    while (st := _stat(driver)) is not None and st[1] == first[1]:
        known.update({p: t for p, t in descendants([driver]).items() if p != me})
        family.update(known)
        known = {p: t for p, t in known.items() if (s := _stat(p)) is not None and s[1] == t}
        time.sleep(INTERVAL_S)
    if pgrp is not None and mine is not None:
        known.update(_late_group_members(pgrp, mine[1], me, family))
    return reap(known)


def start(driver: int | None = None) -> int | None:
    """Start the watcher for `driver` (default: this process) in its own session; its pid, or None
    where there is no `/proc`."""
    import subprocess

    if not os.path.isdir("/proc"):
        return None
    p = subprocess.Popen([sys.executable, "-m", "tasks.reaper", str(driver or os.getpid())],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
    return p.pid


if __name__ == "__main__":
    watch(int(sys.argv[1]))
