"""Archive format 1 -> 3 upgrade in place, probes, and typed commit-conflict handling (issue 10)."""

from __future__ import annotations

import json

import lance
import numpy as np
import pytest
from lance.commit import CommitConflictError
from storage_factories import FP, downgrade_archive, make_memory, make_record

from storage import ArchiveError, open_archive
from storage import archive as archive_mod
from storage.schema import FORMAT_VERSION, SCHEMAS


def _downgrade_to_v1(root) -> None:
    """What a vxl of format version 1 left on disk (`storage_factories.downgrade_archive`)."""
    downgrade_archive(root, "1")


def test_version_1_archive_is_upgraded_in_place_and_stays_readable(tmp_path):
    root = tmp_path / "arch"
    mem = make_memory(num_windows=3, seed=5)
    rec = open_archive(root).put(make_record("old"), mem)
    _downgrade_to_v1(root)
    assert "library_versions" not in lance.dataset(str(root / "videos.lance")).schema.names

    arch = open_archive(root)
    for name, want in SCHEMAS.items():
        got = arch.schema(name)
        assert got.metadata[b"vxl.format_version"] == FORMAT_VERSION.encode() == b"3", name
        assert got.names == want.names, name
    got = arch.load_memory(rec.video_id, FP)
    assert got.equal(mem) and got.meta["kv_codec"] == "raw"  # the old memory, bit for bit
    old = arch.get_video(rec.video_id, FP)
    assert old.library_versions is None and (old.kv_codec, old.kv_raw_bytes, old.kv_bytes) == (None, None, mem.nbytes)
    assert arch.verify().ok
    new = make_record("new")
    new.library_versions = json.dumps({"torch": "2.15.0"})
    arch.put(new, make_memory(seed=6))
    assert json.loads(open_archive(root).get_video(new.video_id, FP).library_versions) == {"torch": "2.15.0"}


def test_unknown_format_version_is_refused(tmp_path):
    root = tmp_path / "arch"
    open_archive(root)
    ds = lance.dataset(str(root / "answers.lance"))
    ds.update_schema_metadata({"vxl.format_version": "4"}, replace=False)
    with pytest.raises(ArchiveError, match="format version 4, this vxl reads versions 1, 2, 3"):
        open_archive(root)


def test_retry_only_on_retryable_commit_conflicts(monkeypatch):
    monkeypatch.setattr(archive_mod.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise CommitConflictError("preempted", retryable=True)
        return "ok"

    assert archive_mod._retry(flaky, "write x") == "ok" and len(calls) == 3

    calls.clear()

    def incompatible():
        calls.append(1)
        raise CommitConflictError("incompatible", retryable=False)

    with pytest.raises(ArchiveError, match="write y: commit conflict"):
        archive_mod._retry(incompatible, "write y")
    assert len(calls) == 1

    calls.clear()

    def other():  # a message that mentions a conflict is not a conflict: no retry, no rewrapping
        calls.append(1)
        raise RuntimeError("commit conflict in the message only")

    with pytest.raises(RuntimeError, match="message only"):
        archive_mod._retry(other, "write z")
    assert len(calls) == 1


def test_probe_history(tmp_path, tiny_vx):
    from model.probe import compute_probe

    arch = open_archive(tmp_path / "arch")
    assert arch.reference_probe(tiny_vx.fingerprint) is None
    probe = compute_probe(tiny_vx)
    arch.put_probe(probe)
    arch.put_probe(probe)  # a second first-writer: no second reference
    got = arch.reference_probe(tiny_vx.fingerprint)
    np.testing.assert_array_equal(got.memory, probe.memory)
    np.testing.assert_array_equal(got.logits, probe.logits)
    assert got.token_ids == probe.token_ids and got.digest() == probe.digest()
    assert [p["status"] for p in arch.list_probes()] == ["reference"]
    arch.put_probe(probe, accepted_change={"why": "answer side"}, status="accepted")
    arch.put_probe(probe, accepted_change={"why": "index side"})
    assert [(p["status"], (p["accepted_change"] or {}).get("why")) for p in arch.list_probes()] == [
        ("superseded", None), ("accepted", "answer side"), ("reference", "index side")]
