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


def test_ask_library_options_are_its_flags_and_its_flat_flow_parameters():
    """ask-library's options model is written once: each field is a `vxl ask-library` flag (help =
    description) and one flow parameter of its own (flat, so that a run overrides one parameter of
    the deployment) with the field's default and description; what the flow and the CLI are given
    reaches `run_ask_library` as that model."""
    from flows.ask_library import ask_library
    from flows.cli import app
    from tasks.ask_library import AskLibraryOptions

    help_text = CliRunner().invoke(app, ["ask-library", "--help"], env={"COLUMNS": "400"}).output
    schema = ask_library.parameters.model_dump()
    props = schema["properties"]
    assert set(props) == set(AskLibraryOptions.model_fields) | {"ray_address"}
    assert schema["required"] == []
    for name, f in AskLibraryOptions.model_fields.items():
        assert f.json_schema_extra["cli_flags"][0] in help_text, name
        assert props[name]["description"] == f.description, name
        assert props[name].get("default") == f.default, name
    assert props["max_new_tokens"]["default"] == 32 and props["max_new_tokens"]["type"] == "integer"
    # Prefect validates a run's parameters against the same types
    assert ask_library.validate_parameters({"max_new_tokens": "7", "questions": ["q"]})["max_new_tokens"] == 7
    app_, seen = _capture(AskLibraryOptions)
    r = CliRunner().invoke(app_, ["go", "-a", "s3://b/a", "-q", "What?", "-q", "Why?", "--where", "duration_s > 6",
                                  "--top-windows", "2", "--workers", "3", "--force"])
    assert r.exit_code == 0, r.output
    assert seen["options"] == AskLibraryOptions(archive_uri="s3://b/a", questions=["What?", "Why?"],
                                                where="duration_s > 6", top_windows=2, workers=3, force=True)


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
