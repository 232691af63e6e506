"""CinePile-format rows joined to local video files; the `annotations` captioner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vico_synth.captioners import timed_lines
from vico_synth.cinepile import join_cinepile, read_annotations, row_key, youtube_id


def _row(movie: str, link: str, scene: str, subtitles: str = "", video_id: str | None = None, q: int = 0) -> dict:
    r = {"movie_name": movie, "year": 2001, "genre": ["Drama"], "yt_clip_title": f"{movie} clip",
         "yt_clip_link": link, "movie_scene": scene, "subtitles": subtitles, "question": f"Q{q}?",
         "choices": ["a", "b", "c", "d", "e"], "answer_key": "a", "answer_key_position": 0,
         "question_category": "Temporal", "hard_split": "False", "visual_reliance": "True"}
    if video_id is not None:
        r["videoID"] = video_id
    return r


def _scene(n: int, step: float) -> str:
    return "\n".join(f"[00:{int(i * step):02d}] Event number {i} happens with a {c} door."
                     for i, c in zip(range(n), ["red", "blue", "green", "gold", "pink", "grey", "teal", "tan"],
                                     strict=False))


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> tuple[Path, list[dict]]:
    from tasks.samples import make_sample_videos

    src = tmp_path_factory.mktemp("cp_src")
    make_sample_videos(src, count=3, seconds=20.0, fps=4, width=160, height=120, seed=11)
    lib = tmp_path_factory.mktemp("cinepile_lib")
    shutil.copy(src / "sample_00.mp4", lib / "abcDEF12345.mp4")  # matched by videoID
    shutil.copy(src / "sample_01.mp4", lib / "Some Movie (2001) - Clip [XyZ_-987654].mp4")  # yt-dlp name
    shutil.copy(src / "sample_02.mp4", lib / "unrelated.mp4")  # no row refers to it
    rows = [
        _row("A", "https://www.youtube.com/watch?v=ignored0000", _scene(7, 2.8), video_id="abcDEF12345", q=0),
        _row("A", "https://www.youtube.com/watch?v=ignored0000", _scene(7, 2.8), video_id="abcDEF12345", q=1),
        _row("B", "https://youtu.be/XyZ_-987654", "",
             subtitles="1\n00:00:01,000 --> 00:00:02,000\nHello there.\n\n2\n00:00:05,000 --> 00:00:06,500\n"
                       "Who goes?\n\n3\n00:00:09,000 --> 00:00:10,000\nRun!\n\n4\n00:00:13,000 --> 00:00:14,000\n"
                       "Too late.\n\n5\n00:00:17,000 --> 00:00:18,000\nThe end.\n"),
        _row("C", "https://www.youtube.com/watch?v=MISSING1234&t=3s", "Nothing."),  # no local file
        _row("D", "not a link", "Nothing."),  # no key at all
    ]
    return lib, rows


def test_youtube_ids_and_keys():
    assert youtube_id("https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=10") == "dQw4w9WgXcQ"
    assert youtube_id("https://youtu.be/dQw4w9WgXcQ?si=x") == "dQw4w9WgXcQ"
    assert youtube_id("https://www.youtube.com/shorts/dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    assert youtube_id("https://www.youtube.com/embed/dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    assert youtube_id("https://vimeo.com/12345678") is None and youtube_id(None) is None
    assert row_key({"videoID": "abc123XYZ", "yt_clip_link": "https://youtu.be/other12345"}) == "abc123XYZ"
    assert row_key({"videoID": "", "yt_clip_link": "https://youtu.be/other12345"}) == "other12345"


def test_timed_lines():
    assert timed_lines("1\n00:00:01,500 --> 00:00:03,000\nHi <i>you</i>\nthere\n") == [(1.5, 3.0, "Hi you there")]
    assert timed_lines("[01:02] A man enters.\n(0:01:05) He sits.") == [(62.0, None, "A man enters."),
                                                                      (65.0, None, "He sits.")]
    assert timed_lines("A plain paragraph. No times.") == []


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_join_reports_missing_files_and_rows(library, tmp_path, fmt):
    lib, rows = library
    path = tmp_path / f"cinepile.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = sorted({k for r in rows for k in r})
        pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows]), path)
    got = read_annotations(path)
    assert len(got) == 5
    join = join_cinepile(got, sorted(lib.glob("*.mp4")))
    assert {p.name: key for p, key, _ in join.matched} == {
        "abcDEF12345.mp4": "abcDEF12345", "Some Movie (2001) - Clip [XyZ_-987654].mp4": "XyZ_-987654"}
    ann = {key: a for _, key, a in join.matched}
    assert ann["abcDEF12345"]["num_questions"] == 2 and ann["abcDEF12345"]["movie_name"] == "A"
    assert [m["key"] for m in join.missing_files] == ["MISSING1234"] and join.missing_files[0]["rows"] == [3]
    assert [b["row"] for b in join.bad_rows] == [4]
    assert [Path(u).name for u in join.unmatched_videos] == ["unrelated.mp4"]


def test_cinepile_rows_produce_samples(library, tmp_path):
    from tasks.vico import VicoOptions, plan_jobs, run_local, write_outputs
    from vico_synth.schema import validate_samples

    lib, rows = library
    ann = tmp_path / "cinepile.jsonl"
    ann.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    opts = VicoOptions(source=str(lib), out=str(tmp_path / "out"), annotations=str(ann), captioner="annotations",
                       extractor="heuristic", clip_seconds=3.0, k="4", samples_per_video=2, val_fraction=0.0,
                       workers=0, decode_timeout_s=60)
    opts.validate()
    jobs, join = plan_jobs(opts)
    assert [j.video for j in jobs] == ["Some Movie (2001) - Clip [XyZ_-987654].mp4", "abcDEF12345.mp4"]
    summary = write_outputs(run_local(jobs, opts), opts, join.report())
    train = json.loads((tmp_path / "out" / "train.json").read_text())
    validate_samples(train)
    assert summary["videos"] == {"total": 2, "with_samples": 2, "skipped": 0}
    assert {s["video"] for s in train} == {j.video for j in jobs}
    texts = {c["text"] for s in train for c in s["vico"]["clues"]}
    assert "Who goes?" in texts or "Run!" in texts
    assert any(t.startswith("Event number") for t in texts)
    rep = summary["annotations"]
    assert rep["matched_videos"] == 2 and rep["missing_files"][0]["key"] == "MISSING1234"
    assert rep["bad_rows"][0]["row"] == 4 and rep["unmatched_videos"] == ["unrelated.mp4"]
    assert summary["exit_code"] == 0


def test_annotations_captioner_needs_a_file(tmp_path):
    from tasks.vico import VicoOptions, VicoUsageError

    with pytest.raises(VicoUsageError, match="--annotations"):
        VicoOptions(source=str(tmp_path), out=str(tmp_path), captioner="annotations").validate()
    with pytest.raises(VicoUsageError, match="unknown|must be one of"):
        VicoOptions(source=str(tmp_path), out=str(tmp_path), captioner="nope").validate()
