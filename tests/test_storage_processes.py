"""Crash (SIGKILL during put) and concurrent writers, with real processes (spawn: Lance is not fork-safe)."""

from __future__ import annotations

import multiprocessing as mp
import random

import pytest
from storage_factories import FP, make_record, memory_for, put_worker, video_id

from storage import VideoNotFound, open_archive

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
