"""One options model per job, written once (issue 15, "Structure"; shared/STYLE.md 16-17).

A job's options are one pydantic model (`JobOptions` subclass). The same model is:

- the library function's argument (`run_training(cfg)`, ...);
- the Prefect flow's parameter (`train_videoxl(options=TrainConfig(...))`; Prefect validates it and
  the UI renders its fields, descriptions included, from the model's JSON schema);
- the CLI's flags: `cli_parameters(Model)` turns every field declared with `option(...)` into a
  `typer.Option` (flag names, default, help), so a command's signature is built from the model and
  `from_cli(Model, values)` makes the model from what typer parsed.

So a new option is one `option(...)` line on the model; the CLI, the flow, the deployment schema and
the checkpoint's stored config follow.

    class MyOptions(JobOptions):
        out: str = option(..., "--out", "-o", help="Run folder.")
        steps: int = option(1000, "--steps", help="Optimizer steps.")
        parts: list[str] = option(["llm"], "--parts", split=",", help="Comma-separated parts.")
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: `json_schema_extra` keys this module reads (they also appear in the flow's parameter schema).
CLI_FLAGS, CLI_SPLIT, CLI_HIDDEN, CLI_ARGUMENT = "cli_flags", "cli_split", "cli_hidden", "cli_argument"


class JobOptions(BaseModel):
    """Base of every job's options: unknown keys are errors (a typo in a deployment's parameters is
    reported, not ignored); values are validated by type on construction (pydantic), and each job's
    own `validate()` adds the checks that need more than one field or the file system."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def usage_error(cls, message: str) -> Exception:
        """The job's usage error for `message` (subclasses return their own exception type)."""
        return ValueError(message)

    def validate(self) -> None:
        """Raise `usage_error(...)` for values no run can satisfy (subclasses add their checks)."""

    @classmethod
    def checked(cls, **kw):
        """The options from user input (CLI, flow, deployment), validated: a wrong type, an unknown
        key or a value `validate()` refuses raises `cls.usage_error(...)` naming the flag."""
        try:
            opts = cls(**kw)
        except ValidationError as exc:
            raise cls.usage_error(validation_message(cls, exc)) from None
        opts.validate()
        return opts


def archive_or_default(uri: str | None) -> str:
    """The archive URI a command uses: `uri`, else `$VXL_ARCHIVE`, else `archive` (relative to the
    working folder). The one default of `vxl ask`, `ask-library`, `eval` and `archive ...`."""
    import os

    return uri or os.environ.get("VXL_ARCHIVE") or "archive"


def option(default: Any, *flags: str, help: str, split: str | None = None, hidden: bool = False,
           default_factory=None, argument: bool = False) -> Any:
    """A pydantic `Field` that is also a CLI option.

    Args:
        default: the default (`...`: required); for a mutable default give `default_factory`.
        flags: the CLI's flag names, e.g. `"--out", "-o"`; none: the field is not on the CLI.
        help: the description (CLI help, flow parameter schema and docs alike).
        split: for a `list[str]` field, the CLI takes one string split on this separator
            (`--trainable llm,vision`) instead of a repeated flag.
        hidden: hidden from `--help` (test-only options).
        argument: the CLI takes it as a positional argument (no flags), e.g. `vxl vico SOURCE`.
    """
    extra: dict[str, Any] = {CLI_FLAGS: list(flags)}
    if argument:
        extra[CLI_ARGUMENT] = True
    if split is not None:
        extra[CLI_SPLIT] = split
    if hidden:
        extra[CLI_HIDDEN] = True
    if default_factory is not None:
        return Field(default_factory=default_factory, description=help, json_schema_extra=extra)
    return Field(default, description=help, json_schema_extra=extra)


def flag(model: type[BaseModel], name: str) -> str:
    """The CLI flag of `model`'s field `name` (its first flag; `--name-with-dashes` for a field that
    is not on the CLI), for error messages that name what the user typed."""
    f = model.model_fields[name]
    extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
    if extra.get(CLI_ARGUMENT):
        return name.upper()
    return (extra.get(CLI_FLAGS) or ["--" + name.replace("_", "-")])[0]


def validation_message(model: type[BaseModel], exc: ValidationError) -> str:
    """One line per pydantic error of `exc`, each naming the CLI flag (or the unknown key) and the
    value given, e.g. `--steps: Input should be a valid integer ... (got 'ten')`."""
    lines = []
    for e in exc.errors():
        name = e["loc"][0] if e["loc"] else None
        if name is None:
            where = f"{model.__name__} (a mapping of its fields)"
        else:
            where = flag(model, name) if name in model.model_fields else f"unknown option {name!r}"
        lines.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def _cli_fields(model: type[BaseModel]):
    for name, f in model.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if extra.get(CLI_FLAGS) or extra.get(CLI_ARGUMENT):
            yield name, f, extra


def _is_list(annotation) -> bool:
    args = typing.get_args(annotation)
    return typing.get_origin(annotation) is list or any(typing.get_origin(a) is list for a in args)


def cli_parameters(model: type[BaseModel]) -> list[inspect.Parameter]:
    """The model's CLI options as keyword-only `inspect.Parameter`s whose defaults are
    `typer.Option`s: put them in a command's `__signature__` (see `cli_command`).

    A list field is a repeatable flag (`--data A --data B`), or one string split on its `split`
    separator; a field whose default is not None shows it in `--help`. Raises TypeError for a field
    type the CLI cannot express (anything but str, int, float, bool, list[str], or those | None).
    """
    import typer

    params = []
    for name, f, extra in _cli_fields(model):
        ann, required = f.annotation, f.is_required()
        default = None if required else f.get_default(call_default_factory=True)
        base = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
        if _is_list(ann):
            if CLI_SPLIT in extra:
                cli_ann, cli_default = str | None, (extra[CLI_SPLIT].join(default) if default else None)
            else:
                cli_ann, cli_default = list[str] | None, None  # None: the model's default
        elif len(base) == 1 and base[0] in (str, int, float, bool):
            cli_ann, cli_default = (base[0] if default is not None or required else base[0] | None), default
        else:
            raise TypeError(f"{model.__name__}.{name}: type {ann!r} has no CLI form")
        if extra.get(CLI_ARGUMENT):
            opt = typer.Argument(... if required else cli_default, help=f.description or "", show_default=False,
                                 metavar=name.upper())
        else:
            opt = typer.Option(... if required else cli_default, *extra[CLI_FLAGS], help=f.description or "",
                               hidden=bool(extra.get(CLI_HIDDEN)), show_default=not required and cli_default is not None)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=cli_ann))
    return params


def from_cli(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """The model's keyword arguments from a command's parsed CLI values (the names of
    `cli_parameters`): split strings become lists, an omitted list keeps the model's default.
    Keys that are not CLI fields of `model` are left out."""
    kw: dict[str, Any] = {}
    for name, f, extra in _cli_fields(model):
        if name not in values:
            continue
        v = values[name]
        if _is_list(f.annotation):
            if v is None or (not isinstance(v, str) and len(v) == 0):
                continue
            if CLI_SPLIT in extra:
                v = [t.strip() for t in v.split(extra[CLI_SPLIT]) if t.strip()]
            else:
                v = list(v)
        kw[name] = v
    return kw


def cli_flag(name: str, annotation, default: Any, *flags: str, help: str, hidden: bool = False) -> inspect.Parameter:
    """A command's own flag (not an option of the job, e.g. `--json`) for `cli_command(extra=...)`."""
    import typer

    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *flags, help=help, hidden=hidden))


def cli_command(model: type[BaseModel], run, *, extra: list[inspect.Parameter] = (), doc: str | None = None):
    """A typer command whose flags are `model`'s CLI options followed by `extra` (the command's own
    flags, e.g. `--json`), calling `run(options_kwargs, **extra_values)`.

    `options_kwargs` is `from_cli(model, ...)`: construct and validate the model inside `run`, so
    its errors go through the command's own error reporting."""
    names = {p.name for p in extra}

    def command(**values):
        own = {k: values.pop(k) for k in list(values) if k in names}
        return run(from_cli(model, values), **own)

    command.__signature__ = inspect.Signature([*cli_parameters(model), *extra])
    command.__doc__ = doc if doc is not None else run.__doc__
    command.__name__ = getattr(run, "__name__", "command")
    return command


def flow_function(model: type[BaseModel], body, *, extra: list[inspect.Parameter] = (),
                  extra_help: dict[str, str] | None = None, doc: str):
    """A function to decorate with Prefect's `@flow`, whose parameters are `model`'s fields, flat (one
    flow parameter per field, with the field's default), followed by `extra` (the flow's own, e.g.
    `ray_address`, described by `extra_help`); it calls `body(options_kwargs, **extra_values)`.

    Flat, not one `options` mapping, for jobs whose deployments fill most fields from `{{ $VAR }}`
    templates and whose runs override a few: Prefect merges a run's parameters with the
    deployment's by top-level name, so a nested mapping would make every run restate all of it.
    The fields' descriptions go into the docstring's `Args:` section, which is where Prefect reads
    parameter descriptions from (the UI's form and the deployment's schema). Validate inside `body`
    with `model.checked(**options_kwargs)`: Prefect checks the types first, the model the rest.

    The fields are positional-or-keyword in their declared order (`synth_vico("videos/", out=...)`),
    so required fields must come first.

    Raises:
        TypeError: a field with a `default_factory` (its default would be shared by every run).
        ValueError: a required field after one with a default.
    """
    names = {p.name for p in extra}
    params = []
    for name, f in model.model_fields.items():
        if f.default_factory is not None:
            raise TypeError(f"{model.__name__}.{name}: a default_factory field cannot be a flat flow parameter")
        default = inspect.Parameter.empty if f.is_required() else f.default
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                        annotation=f.annotation))

    signature = inspect.Signature([*params, *extra])

    def fn(*args, **kwargs):
        values = signature.bind(*args, **kwargs).arguments  # Prefect passes positional fields positionally
        own = {k: values.pop(k) for k in list(values) if k in names}
        return body(dict(values), **own)

    fn.__signature__ = signature
    args = [(n, f.description or "") for n, f in model.model_fields.items()]
    args += [(p.name, (extra_help or {}).get(p.name, "")) for p in extra]
    fn.__doc__ = doc.rstrip() + "\n\nArgs:\n" + "".join(f"    {n}: {d}\n" for n, d in args)
    fn.__name__ = getattr(body, "__name__", "flow").lstrip("_")
    return fn
