"""Crash (SIGKILL during put) and concurrent writers, with real processes (spawn: Lance is not fork-safe)."""

from __future__ import annotations

import multiprocessing as mp
import random
import time

import pytest
from storage_factories import FP, make_record, memory_for, put_worker, recode_worker, video_id

from storage import VideoNotFound, codec, open_archive

CTX = mp.get_context("spawn")


def _check_absent_or_complete(arch, names):
    done = set()
    for n in names:
        try:
            got = arch.load_memory(video_id(n), FP)
        except VideoNotFound:
            continue
        assert got.equal(memory_for(n)), n
        done.add(n)
    return done


@pytest.mark.slow
def test_sigkill_during_put(tmp_path):
    uri = str(tmp_path / "arch")
    names = [f"v{i}" for i in range(6)]
    rng = random.Random(1234)
    killed_mid_run = 0
    for _ in range(4):
        ready = CTX.Event()
        p = CTX.Process(target=put_worker, args=(uri, names, ready, 3))
        p.start()
        assert ready.wait(60), "worker did not start"
        p.join(timeout=rng.uniform(0.0, 0.6))
        if p.is_alive():
            killed_mid_run += 1
        p.kill()  # SIGKILL
        p.join()
        arch = open_archive(uri)
        rep = arch.verify()
        assert rep.ok, rep.problems
        _check_absent_or_complete(arch, names)
        assert len(arch.list_videos()) == len({r.video_id for r in arch.list_videos()})
    assert killed_mid_run >= 2  # the kills really interrupted writes
    ready = CTX.Event()
    p = CTX.Process(target=put_worker, args=(uri, names, ready, 1))  # the rerun completes it
    p.start()
    p.join(timeout=120)
    assert p.exitcode == 0
    arch = open_archive(uri)
    assert _check_absent_or_complete(arch, names) == set(names)
    assert arch.verify().ok
    assert arch.indexed_ids(FP) == {video_id(n) for n in names}


@pytest.mark.slow
def test_sigkill_during_recode(tmp_path):
    """`recode` killed at random points: every video is its old memory (raw, bit for bit) or its new
    one (int4, equal to a direct int4 encode), never half; verify stays clean; a rerun finishes."""
    uri = str(tmp_path / "arch")
    arch = open_archive(uri)
    rng = random.Random(99)
    names: list[str] = []
    killed_mid_run = 0
    for rnd in range(4):
        batch = [f"r{rnd}-{i}" for i in range(5)]
        for n in batch:
            arch.put(make_record(n), memory_for(n))
        names += batch
        ready = CTX.Event()
        p = CTX.Process(target=recode_worker, args=(uri, batch, ready, "int4"))
        p.start()
        assert ready.wait(60), "worker did not start"
        if rnd < 2:  # kill right after the first video of the batch committed: a mid-run kill for sure
            watcher = open_archive(uri)
            deadline = time.monotonic() + 120
            while p.is_alive() and time.monotonic() < deadline and not any(
                    watcher.get_video(video_id(n), FP).codec_name == "int4" for n in batch):
                time.sleep(0.01)
        else:  # at a random point (a recode of one video takes 0.1-0.8 s here)
            p.join(timeout=rng.uniform(0.2, 2.5))
        if p.is_alive():
            killed_mid_run += 1
        p.kill()  # SIGKILL
        p.join()
        seen = _check_old_or_new(open_archive(uri), names)
    assert killed_mid_run >= 2 and seen.get("raw", 0) > 0 and seen.get("int4", 0) > 0, (killed_mid_run, seen)
    ready = CTX.Event()
    p = CTX.Process(target=recode_worker, args=(uri, names, ready, "int4"))  # the rerun completes it
    p.start()
    p.join(timeout=300)
    assert p.exitcode == 0
    after = _check_old_or_new(open_archive(uri), names)
    assert after == {"int4": len(names)}


def _int4(n: str):
    tab = codec.memory_to_arrow(memory_for(n), video_id=video_id(n), fingerprint=FP, write_id="w", kv_codec="int4")
    return codec.memory_from_arrow(tab)


def _check_old_or_new(arch, names) -> dict[str, int]:
    rep = arch.verify()
    assert rep.ok, rep.problems
    seen: dict[str, int] = {}
    for n in names:
        rec = arch.get_video(video_id(n), FP)
        got = arch.load_memory(video_id(n), FP)
        assert got.meta["kv_codec"] == rec.codec_name, n
        want = memory_for(n) if rec.codec_name == "raw" else _int4(n)
        assert rec.codec_name in ("raw", "int4") and got.equal(want), n
        seen[rec.codec_name] = seen.get(rec.codec_name, 0) + 1
    assert len(arch.list_videos()) == len(names)
    return seen


@pytest.mark.slow
def test_four_concurrent_writers(tmp_path):
    uri = str(tmp_path / "arch")
    open_archive(uri)  # tables exist before the race (creation races are handled too, but slower)
    names = [f"v{i}" for i in range(8)]
    rng = random.Random(7)
    plans = []
    for _ in range(4):  # each process: an overlapping random subset, shuffled
        sub = rng.sample(names, 6)
        plans.append(sub)
    assert set().union(*plans) == set(names)
    procs, events = [], []
    for sub in plans:
        ev = CTX.Event()
        p = CTX.Process(target=put_worker, args=(uri, sub, ev, 1))
        p.start()
        procs.append(p)
        events.append(ev)
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    arch = open_archive(uri)
    recs = arch.list_videos()
    assert sorted(r.video_id for r in recs) == sorted(video_id(n) for n in names)  # each exactly once
    for n in names:
        assert arch.load_memory(video_id(n), FP).equal(memory_for(n))
    rep = arch.verify()
    assert rep.ok, rep.problems
    live = arch._ds("vst_kv").to_table(columns=["key", "write_id"]).to_pylist()
    committed = {(r.key, r.write_id) for r in recs}
    assert sum(1 for r in live if (r["key"], r["write_id"]) in committed) == len(names) * 5


@pytest.mark.slow
def test_put_by_another_process_is_visible_to_next_load(tmp_path):
    """A reader that keeps its snapshots and caches still sees another process's put at once."""
    uri = str(tmp_path / "arch")
    arch = open_archive(uri)
    name = "v0"
    old = memory_for("other")  # same key, different content
    arch.put(make_record(name), old)
    assert arch.load_memory(video_id(name), FP).equal(old)  # snapshots and K/V rows now cached
    assert arch.load_memory(video_id(name), FP).equal(old)
    ready = CTX.Event()
    p = CTX.Process(target=put_worker, args=(uri, [name], ready, 1))
    p.start()
    p.join(timeout=120)
    assert p.exitcode == 0
    assert arch.load_memory(video_id(name), FP).equal(memory_for(name))
    assert arch.get_video(video_id(name), FP).write_id == open_archive(uri).get_video(video_id(name), FP).write_id


def test_concurrent_runs_lease_each_video_once(tmp_path):
    """Four processes race for the leases of the same six videos at the same instant: each video
    is won by exactly one (so concurrent `vxl index` runs never encode a video twice); an expired
    lease (a killed run's) is taken over, a live one is not."""
    from storage_factories import lease_worker

    uri = str(tmp_path / "a")
    open_archive(uri)
    keys = [f"v{i}" for i in range(6)]
    go, results = CTX.Event(), CTX.Queue()
    procs, readies = [], []
    for n in range(4):
        ready = CTX.Event()
        p = CTX.Process(target=lease_worker, args=(uri, keys, f"run{n}", ready, go, results))
        p.start()
        procs.append(p)
        readies.append(ready)
    try:
        assert all(r.wait(90) for r in readies), "workers did not start"
        go.set()
        got = [results.get(timeout=120) for _ in range(4 * len(keys))]
    finally:
        for p in procs:
            p.join(60)
    winners = {k: [o for o, kk, won in got if kk == k and won] for k in keys}
    assert all(len(w) == 1 for w in winners.values()), winners
    arch = open_archive(uri)
    assert {r["video_id"]: r["owner"] for r in arch.list_leases()} == {k: w[0] for k, w in winners.items()}
    # a live lease is not taken over; an expired one (its run was killed) is
    assert arch.acquire_lease("v0", FP, "late", 60.0) == winners["v0"][0]
    arch.renew_leases([("v0", FP)], winners["v0"][0], -1.0)  # as if its run died a while ago
    assert arch.acquire_lease("v0", FP, "late", 60.0) is None
    arch.release_leases([("v0", FP)], "someone-else")  # only the holder releases
    assert [r["owner"] for r in arch.list_leases() if r["video_id"] == "v0"] == ["late"]


def test_a_dead_local_owners_lease_is_taken_over_at_once(tmp_path):
    """A rerun right after a killed run on the same machine does not wait for the lease to expire:
    a lease whose owner is a dead process on this host is taken over; a live one is not."""
    import os
    import socket
    import subprocess
    import sys

    arch = open_archive(tmp_path / "a")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{socket.gethostname()}:{int(gone.stdout)}:run-killed"
    alive = f"{socket.gethostname()}:{os.getpid()}:run-alive"
    assert arch.acquire_lease("v1", FP, dead, 600.0) is None
    assert arch.acquire_lease("v2", FP, alive, 600.0) is None
    assert arch.acquire_lease("v1", FP, "rerun", 600.0) is None  # its process is gone
    assert arch.acquire_lease("v2", FP, "rerun", 600.0) == alive  # this process is alive
    assert arch.acquire_lease("v3", FP, "otherhost:1:run", 600.0) is None
    assert arch.acquire_lease("v3", FP, "rerun", 600.0) == "otherhost:1:run"  # not ours to judge: wait
