"""Discovery of folders, globs and manifests; content digests."""

from __future__ import annotations

import json
import os
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.video import MissingFile, Source, discover, video_id


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "lib"
    for rel in [
        "b.mp4",
        "a.mp4",
        "sub/c.MKV",
        "sub/deeper/d.webm",
        "notes.txt",
        ".hidden/e.mp4",
        "sub/.f.mp4",
    ]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())
    return root


def rel(sources: list[Source], root) -> list[str]:
    return [s.path.relative_to(root).as_posix() for s in sources]


def test_folder_is_recursive_sorted_filtered(tree):
    found = discover([str(tree)])
    assert rel(found, tree) == ["a.mp4", "b.mp4", "sub/c.MKV", "sub/deeper/d.webm"]
    assert all(s.path.is_absolute() and s.uri == str(s.path) for s in found)
    assert rel(discover([str(tree)], extensions=(".webm",)), tree) == ["sub/deeper/d.webm"]


def test_globs_and_files_in_order_without_duplicates(tree):
    found = discover([str(tree / "sub" / "**" / "*"), str(tree / "b.mp4"), str(tree)])
    assert rel(found, tree) == ["sub/c.MKV", "sub/deeper/d.webm", "b.mp4", "a.mp4"]


def test_csv_manifest_resolves_relative_uris(tree, tmp_path):
    m = tree / "sub" / "list.csv"
    m.write_text(f"uri,label\ndeeper/d.webm,x\n{tree / 'a.mp4'}\nfile://{tree / 'b.mp4'},y\n")
    found = discover([str(m)])
    assert [s.uri for s in found] == ["deeper/d.webm", str(tree / "a.mp4"), f"file://{tree / 'b.mp4'}"]
    assert rel(found, tree) == ["sub/deeper/d.webm", "a.mp4", "b.mp4"]


def test_jsonl_and_parquet_manifests(tree):
    j = tree / "m.jsonl"
    j.write_text(
        "\n".join(json.dumps({"uri": u, "n": i}) for i, u in enumerate(["b.mp4", "sub/c.MKV"])) + "\n\n"
    )
    assert rel(discover([str(j)]), tree) == ["b.mp4", "sub/c.MKV"]
    pq_path = tree / "sub" / "m.parquet"
    pq.write_table(pa.table({"uri": ["c.MKV", "../a.mp4"], "id": [1, 2]}), pq_path)
    found = discover([str(pq_path)])
    assert rel(found, tree) == ["sub/c.MKV", "a.mp4"]
    assert found[1].path == tree / "a.mp4"  # normalised, no ".."


def test_manifest_rows_for_missing_files_are_kept(tree):
    m = tree / "m.csv"
    m.write_text("uri\nmissing.mp4\na.mp4\n")
    found = discover([str(m)])
    assert [s.uri for s in found] == ["missing.mp4", "a.mp4"]
    assert not found[0].path.exists()


def test_manifest_errors(tree):
    m = tree / "m.csv"
    m.write_text("path\na.mp4\n")
    with pytest.raises(ValueError, match="no 'uri' column"):
        discover([str(m)])
    j = tree / "m.jsonl"
    j.write_text('{"path": "a.mp4"}\n')
    with pytest.raises(ValueError, match="line 1 has no 'uri'"):
        discover([str(j)])
    m.write_text("uri\ns3://bucket/v.mp4\n")
    with pytest.raises(ValueError, match="unsupported URI"):
        discover([str(m)])


def test_missing_sources_are_all_named(tree):
    with pytest.raises(ValueError) as e:
        discover([str(tree), str(tree / "nope"), str(tree / "*.mov"), "/also/missing.mp4"])
    msg = str(e.value)
    assert str(tree / "nope") in msg and "*.mov" in msg and "/also/missing.mp4" in msg


def test_video_id_is_a_content_digest(tmp_path):
    a = tmp_path / "a.mp4"
    data = os.urandom(20 * 1024 * 1024 + 123)  # spans three 8 MiB chunks
    a.write_bytes(data)
    vid = video_id(a)
    assert re.fullmatch(r"xxh3-128:[0-9a-f]{32}", vid)
    b = tmp_path / "elsewhere" / "renamed.mkv"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    os.utime(b, (1, 1))
    assert video_id(b) == vid
    import xxhash

    assert vid == "xxh3-128:" + xxhash.xxh3_128(data).hexdigest()
    changed = bytearray(data)
    changed[len(data) // 2] ^= 1
    b.write_bytes(changed)
    assert video_id(b) != vid
    with pytest.raises(MissingFile):
        video_id(tmp_path / "nope.mp4")
