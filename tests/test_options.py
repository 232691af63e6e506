"""One options model per job (issue 15, "Structure"): the pydantic model is the CLI's flags, the
flow's parameter and the library's argument, so the three cannot drift apart."""

from __future__ import annotations

import math

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from tasks.options import JobOptions, cli_command, cli_flag, option
from tasks.train import TrainConfig, TrainError


def _capture(model):
    """A typer app whose one command records the model it was given."""
    seen = {}

    def run(options: dict, *, as_json: bool = False):
        seen["options"] = model(**options)
        seen["as_json"] = as_json

    extra = [cli_flag("as_json", bool, False, "--json", help="JSON output.")]
    app = typer.Typer()
    app.command("go")(cli_command(model, run, extra=extra))
    app.command("noop")(lambda: None)  # two commands: typer keeps the command name
    return app, seen


def test_cli_flags_give_the_options_the_library_gets():
    """Every flag lands in its field (renamed flags, repeated lists, comma lists, booleans); an
    omitted flag gives the model's default, so `vxl train --out X` trains exactly what
    `TrainConfig(out=X)` describes."""
    app, seen = _capture(TrainConfig)
    r = CliRunner().invoke(app, ["go", "--out", "runs/a"])
    assert r.exit_code == 0, r.output
    assert seen["options"] == TrainConfig(out="runs/a") and seen["as_json"] is False
    args = ["go", "-o", "runs/b", "--data", "toy:8:1", "--data", "clips/", "--trainable", "llm, vision",
            "--question-types", "bg_end,bg_end,scene_count", "--workers", "2", "--gpu", "--lr", "5e-4",
            "--vision-lr", "1e-4", "--grad-checkpointing", "--seed", "7", "--cache-dir", "/tmp/c", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    expected = dict(out="runs/b", data=["toy:8:1", "clips/"], trainable=["llm", "vision"],
                    question_types=["bg_end", "bg_end", "scene_count"], num_workers=2, use_gpu=True, lr=5e-4,
                    vision_lr=1e-4, grad_checkpointing=True, seed=7, cache_dir="/tmp/c")
    got = seen["options"].model_dump()
    assert {k: got[k] for k in expected} == expected and seen["as_json"] is True
    defaults = TrainConfig(out="x").model_dump()
    assert {k: v for k, v in got.items() if k not in expected} == {k: v for k, v in defaults.items()
                                                                  if k not in expected}


def test_every_training_option_is_a_flag_and_a_flow_parameter():
    """Nothing is written twice: each TrainConfig field has a `vxl train` flag with its description
    as help, and the flow's parameter schema is the model's (Prefect renders and validates it)."""
    from flows.cli import app
    from flows.train_videoxl import train_videoxl

    help_text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).output
    for name, f in TrainConfig.model_fields.items():
        flag = f.json_schema_extra["cli_flags"][0]
        assert flag in help_text, (name, flag)
    schema = train_videoxl.parameters.model_dump()
    assert schema["required"] == ["options"]
    ref = schema["properties"]["options"]["$ref"].rsplit("/", 1)[1]
    props = schema["definitions"][ref]["properties"]
    assert set(props) == set(TrainConfig.model_fields)
    assert props["steps"]["description"] == "Optimizer steps." and props["steps"]["default"] == 1000


def test_user_errors_name_the_flag():
    with pytest.raises(TrainError, match="--workers: Input should be a valid integer") as e:
        TrainConfig.checked(out="x", num_workers="two")
    assert e.value.kind == "usage"
    with pytest.raises(TrainError, match="unknown option 'step'"):
        TrainConfig.checked(out="x", step=3)
    with pytest.raises(TrainError, match="--workers must be an integer >= 1, got 0"):
        TrainConfig.checked(out="x", num_workers=0)
    with pytest.raises(TrainError, match="--lr must be a finite number > 0, got inf"):
        TrainConfig.checked(out="x", lr=math.inf)
    with pytest.raises(ValidationError):
        TrainConfig(out="x", bogus=1)  # the library refuses unknown keys too


def test_cli_command_refuses_a_field_type_it_cannot_express():
    class Odd(JobOptions):
        ratios: dict[str, int] = option(None, "--ratios", default_factory=dict, help="no CLI form")

    with pytest.raises(TypeError, match="Odd.ratios"):
        cli_command(Odd, lambda options: None)


def _flat_jobs():
    from flows.ask_library import ask_library
    from flows.index_corpus import index_corpus
    from flows.synth_vico import synth_vico
    from tasks.ask_library import AskLibraryOptions
    from tasks.index import IndexJobOptions
    from tasks.vico import VicoOptions

    return [("ask-library", AskLibraryOptions, ask_library, {"ray_address"}),
            ("vico", VicoOptions, synth_vico, set()),
            ("index", IndexJobOptions, index_corpus, set())]


@pytest.mark.parametrize("job", [0, 1, 2], ids=["ask-library", "vico", "index"])
def test_flat_jobs_options_are_their_flags_and_their_flow_parameters(job):
    """index's, ask-library's and VICO's options models are written once: each field is a CLI flag (help =
    description) or argument, and one flow parameter of its own (flat, so that a run overrides one
    parameter of the deployment) with the field's default and description."""
    from flows.cli import app

    command, model, fl, extra = _flat_jobs()[job]
    help_text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"}).output
    schema = fl.parameters.model_dump()
    props = schema["properties"]
    assert set(props) == set(model.model_fields) | extra
    assert schema["required"] == [n for n, f in model.model_fields.items() if f.is_required()]
    for name, f in model.model_fields.items():
        flags = f.json_schema_extra["cli_flags"]
        if flags:
            assert flags[0] in help_text, name
        elif f.json_schema_extra.get("cli_argument"):
            assert name.upper() in help_text, name
        assert props[name]["description"] == f.description, name
        if not f.is_required():
            assert props[name].get("default") == f.default, name


def test_cli_and_flow_give_ask_library_and_vico_the_same_options(tmp_path):
    """What the CLI parses reaches the job as the model (renamed flags, repeated and comma lists, a
    positional argument); Prefect validates a run's parameters against the same types."""
    from flows.ask_library import ask_library
    from tasks.ask_library import AskLibraryOptions
    from tasks.vico import VicoOptions

    assert ask_library.validate_parameters({"max_new_tokens": "7", "questions": ["q"]})["max_new_tokens"] == 7
    app_, seen = _capture(AskLibraryOptions)
    r = CliRunner().invoke(app_, ["go", "-a", "s3://b/a", "-q", "What?", "-q", "Why?", "--where", "duration_s > 6",
                                  "--top-windows", "2", "--workers", "3", "--force"])
    assert r.exit_code == 0, r.output
    assert seen["options"] == AskLibraryOptions(archive_uri="s3://b/a", questions=["What?", "Why?"],
                                                where="duration_s > 6", top_windows=2, workers=3, force=True)
    app_, seen = _capture(VicoOptions)
    r = CliRunner().invoke(app_, ["go", "videos/", "more.mp4", "-o", "out", "--forms", "mc", "--min-gap", "2.5",
                                  "--choices", "3", "--decode-timeout", "60", "--k", "3-5"])
    assert r.exit_code == 0, r.output
    assert seen["options"] == VicoOptions(source=["videos/", "more.mp4"], out="out", forms=["mc"], min_gap_s=2.5, num_choices=3,
                                          decode_timeout_s=60.0, k="3-5")
    assert VicoOptions(source="v", out="o", k=4).k == "4"  # `k: 4` in a deployment's YAML
    from tasks.index import IndexJobOptions, make_options

    app_, seen = _capture(IndexJobOptions)
    r = CliRunner().invoke(app_, ["go", "a/", "b.mp4", "-a", "arch", "--model", "toy", "--frames", "16",
                                  "--chunking", "fixed", "--ratio", "4", "--decode-timeout", "30", "--kv-codec", "int8"])
    assert r.exit_code == 0, r.output
    got = seen["options"]
    assert got == IndexJobOptions(sources=["a/", "b.mp4"], archive="arch", model="toy", frames=16, chunking="fixed",
                                  ratio=4, decode_timeout_s=30.0, kv_codec="int8")
    # the pipeline's options: what `make_options` (the library's own defaults) gives for the same values
    assert got.engine() == make_options("toy", frames=16, chunking="fixed", ratio=4, decode_timeout_s=30.0,
                                        kv_codec="int8")


def test_index_usage_errors_name_the_flag(monkeypatch):
    from tasks.index import IndexJobOptions, UsageError

    monkeypatch.delenv("VXL_ARCHIVE", raising=False)
    for kw, msg in [({"archive": "a", "fps": math.inf}, "fps .*--fps.* must be a finite number > 0"),
                    ({"archive": "a", "chunking": "weird"}, "--chunking must be one of"),
                    ({"archive": "a", "max_frames": "many"}, "--max-frames: Input should be a valid integer"),
                    ({"archive": "a", "max_frame": 3}, "unknown option 'max_frame'"),
                    ({}, "--archive is required \\(or set VXL_ARCHIVE\\)")]:
        with pytest.raises(UsageError, match=msg):
            IndexJobOptions.checked(sources=["videos/"], **kw)
    monkeypatch.setenv("VXL_ARCHIVE", "/data/archive")
    assert IndexJobOptions.checked(sources=["videos/"]).archive_uri == "/data/archive"


def test_vico_usage_errors_name_the_flag():
    from tasks.vico import VicoOptions, VicoUsageError

    for kw, msg in [({"fps": math.inf}, "--fps must be a finite number > 0, got inf"),
                    ({"val_fraction": 1.5}, "--val-fraction must be at most 1"),
                    ({"samples_per_video": 0}, "--samples-per-video must be >= 1, got 0"),
                    ({"seed": "one"}, "--seed: Input should be a valid integer"),
                    ({"clip_second": 3}, "unknown option 'clip_second'")]:
        with pytest.raises(VicoUsageError, match=msg):
            VicoOptions.checked(source="v", out="o", captioner="ground-truth", **kw)


def test_ask_library_usage_errors_name_the_flag(tmp_path):
    from tasks.ask import AskError
    from tasks.ask_library import AskLibraryOptions

    for kw, msg in [({"questions": ["q"], "max_new_tokens": 0}, "--max-new-tokens must be >= 1, got 0"),
                    ({"questions": ["q"], "workers": "two"}, "--workers: Input should be a valid integer"),
                    ({"questions": ["q"], "top_window": 1}, "unknown option 'top_window'"),
                    ({}, "give exactly one of --question and --questions FILE"),
                    ({"questions_file": str(tmp_path / "none.json")}, "none.json")]:
        with pytest.raises(AskError, match=msg) as e:
            AskLibraryOptions.checked(**kw)
        assert e.value.kind == "usage"
