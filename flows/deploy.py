"""`vxl deploy`: register prefect.yaml's deployments with a Prefect server, validated first (issue 15).

Prefect stores an unset `{{ $VAR }}` literally and `prefect deploy --all` turns a cron on whatever
the parameters hold, so the first nightly run used to fail on `s3://...` placeholders. Here:

1. every `{{ $VAR }}` of prefect.yaml is filled from the environment; an unset variable is an error
   naming the deployment, the parameter and the variable (the value `none` stands for null);
2. each deployment's parameters are checked by its job's own validation (`IndexOptions`,
   `VicoOptions`, ...) plus what only makes sense for a deployment (sources and model folders that
   exist on this machine, CLIP weights for a real model with dynamic chunking);
3. only then the resolved file is handed to `prefect deploy --all`, with the schedules turned on
   (`active: true`; prefect.yaml keeps them off so that a bare `prefect deploy` never schedules
   placeholders).

The flows call `reject_templates` on their parameters, so a deployment made without `vxl deploy`
fails its run with a message naming the parameter instead of reading `{{ $VXL_ARCHIVE }}` as a path.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

TEMPLATE = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")
"""Prefect's environment-variable template, `{{ $NAME }}`."""
REPO = Path(__file__).resolve().parents[1]


class DeployError(Exception):
    """prefect.yaml cannot be deployed as it is; `problems` lists each reason (one line each)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(problems))


class UnresolvedParameter(ValueError):
    """A flow parameter still holds a `{{ ... }}` template (a deployment made without `vxl deploy`)."""


def reject_templates(flow: str, **params: Any) -> None:
    """Raise `UnresolvedParameter` naming the first parameter that still holds a `{{ ... }}` template."""
    for name, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if isinstance(v, str) and "{{" in v and "}}" in v:
                var = TEMPLATE.search(v)
                hint = f"set {var.group(1)} and redeploy with `vxl deploy`" if var else "redeploy with `vxl deploy`"
                raise UnresolvedParameter(f"{flow}: parameter {name} is the unresolved template {v!r}: {hint} "
                                          "(or give the parameter when starting the run)")


def _fill(value: Any, env: dict[str, str], where: str, problems: list[str]) -> Any:
    if isinstance(value, list):
        return [_fill(v, env, where, problems) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, env, f"{where}.{k}", problems) for k, v in value.items()}
    if not isinstance(value, str) or not TEMPLATE.search(value):
        return value
    names = TEMPLATE.findall(value)
    missing = [n for n in names if not env.get(n)]
    if missing:
        problems.append(f"{where}: set {', '.join(missing)} (prefect.yaml has {value!r})")
        return value
    if TEMPLATE.fullmatch(value.strip()) and env[names[0]].strip().lower() == "none":
        return None
    return TEMPLATE.sub(lambda m: env[m.group(1)], value)


def resolve(spec: dict, env: dict[str, str] | None = None) -> dict:
    """prefect.yaml's content with every `{{ $VAR }}` filled from `env` (default `os.environ`).

    Raises:
        DeployError: variables are unset (each problem names the deployment, parameter and variable).
    """
    env = dict(os.environ if env is None else env)
    out = copy.deepcopy(spec)
    problems: list[str] = []
    out["pull"] = _fill(out.get("pull", []), env, "pull", problems)
    for dep in out.get("deployments", []):
        dep["parameters"] = {k: _fill(v, env, f"deployment {dep['name']}, parameter {k}", problems)
                             for k, v in (dep.get("parameters") or {}).items()}
    if problems:
        raise DeployError(problems)
    return out


def _local_exists(uri: str) -> bool:
    return "://" in uri.removeprefix("file://") or os.path.exists(uri.removeprefix("file://"))


def validate(spec: dict) -> list[str]:
    """Problems with the (resolved) deployments' parameters; [] when they can be deployed."""
    from model.video_xl import BUILTIN_MODELS, is_model_name

    problems: list[str] = []
    for dep in spec.get("deployments", []):
        name, p = dep["name"], dict(dep.get("parameters") or {})
        flow = dep["entrypoint"].split(":")[1]

        def bad(msg: str, name=name) -> None:
            problems.append(f"deployment {name}: {msg}")

        model = p.get("model") if not isinstance(p.get("options"), dict) else p["options"].get("model")
        if flow != "index_corpus" and model is not None and model != "toy-init" and not is_model_name(model):
            bad(f"parameter model {model!r} is neither one of {list(BUILTIN_MODELS)} nor a Video-XL checkpoint folder")
        if flow == "index_corpus":
            from tasks.index import IndexJobOptions, UsageError

            try:  # every parameter: names, types and values (IndexJobOptions.checked)
                IndexJobOptions.checked(**{**p, "sources": p.get("sources") or ["-"], "model": model or "tiny"})
            except UsageError as exc:
                bad(f"parameters: {exc}")
            for src in p.get("sources") or []:
                if not any(ch in src for ch in "*?[") and not _local_exists(src):
                    bad(f"parameter sources: {src!r} does not exist on this machine")
            if (p.get("chunking", "dynamic") == "dynamic" and p.get("clip_weights") is None
                    and model not in BUILTIN_MODELS):
                bad(f"parameter clip_weights: model {model!r} with dynamic chunking needs CLIP weights (a random CLIP "
                    "makes the windows meaningless); set VXL_CLIP_WEIGHTS to the state dict, or chunking: fixed")
        elif flow == "synth_vico":
            from tasks.vico import VicoOptions, VicoUsageError

            try:  # every parameter: names, types and values (VicoOptions.checked)
                VicoOptions.checked(**{**p, "source": p.get("source") or "", "out": p.get("out") or ""})
            except VicoUsageError as exc:
                bad(f"parameters: {exc}")
            if p.get("source") and not _local_exists(p["source"]):
                bad(f"parameter source: {p['source']!r} does not exist on this machine")
        elif flow == "train_videoxl" and p.get("options") is not None:
            from tasks.train import TrainConfig, TrainError

            opts = p["options"]
            if not isinstance(opts, dict):
                bad(f"parameter options: a mapping of tasks.train.TrainConfig fields, got {opts!r}")
            else:
                try:
                    TrainConfig.checked(**{"out": "<given at run time>", **opts})
                except TrainError as exc:
                    bad(f"parameter options: {exc}")
        elif flow == "evaluate" and p.get("options") is not None:
            from pydantic import ValidationError

            from tasks.evaluate import EvalOptions
            from tasks.options import validation_message

            try:  # types and names only: the question file is given at run time
                EvalOptions.model_validate(p["options"])
            except ValidationError as exc:
                bad(f"parameter options: {validation_message(EvalOptions, exc)}")
        elif flow == "ask_library":
            from pydantic import ValidationError

            from tasks.ask import AskError
            from tasks.ask_library import AskLibraryOptions
            from tasks.options import validation_message

            kw = {k: v for k, v in p.items() if k != "ray_address"}
            try:  # names, types and settings: the questions are given at run time
                AskLibraryOptions.model_validate(kw).validate_settings()
            except ValidationError as exc:
                bad(f"parameters: {validation_message(AskLibraryOptions, exc)}")
            except AskError as exc:
                bad(f"parameters: {exc}")
    return problems


def deploy(prefect_file: str | os.PathLike = REPO / "prefect.yaml", *, env: dict[str, str] | None = None,
           schedule: bool = True, dry_run: bool = False) -> dict:
    """Resolve, validate and deploy every deployment of `prefect_file` (run from the repository root).

    Args:
        env: variables for `{{ $VAR }}` (default `os.environ`).
        schedule: turn the deployments' schedules on (they are off in prefect.yaml).
        dry_run: stop after validation (nothing is sent to the server).

    Returns:
        {"deployments": [names], "resolved_file": path or None, "schedules_active": bool}.

    Raises:
        DeployError: unset variables or invalid parameters (nothing deployed), or `prefect deploy` failed.
    """
    import yaml

    path = Path(prefect_file)
    spec = resolve(yaml.safe_load(path.read_text()), env)
    problems = validate(spec)
    if problems:
        raise DeployError(problems)
    for dep in spec["deployments"]:
        for s in dep.get("schedules") or []:
            s["active"] = bool(schedule)
    names = [d["name"] for d in spec["deployments"]]
    if dry_run:
        return {"deployments": names, "resolved_file": None, "schedules_active": schedule}
    resolved = path.with_name(".prefect-resolved.yaml")  # next to prefect.yaml: entrypoints are relative
    resolved.write_text("# written by `vxl deploy` from prefect.yaml; do not edit\n" + yaml.safe_dump(spec, sort_keys=False))
    prefect = str(Path(sys.executable).with_name("prefect"))
    cmd = [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(resolved)]
    res = subprocess.run(cmd, cwd=path.parent, capture_output=True, text=True,
                         env={**os.environ, **(env or {}), "PREFECT_CLI_PROMPT": "false"})
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-15:]
        raise DeployError([f"`prefect deploy --all` failed (exit {res.returncode}): " + " | ".join(tail)])
    return {"deployments": names, "resolved_file": str(resolved), "schedules_active": schedule}
