"""prefect.yaml: every deployment points at a real flow, and its parameters are that flow's."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_deployments_match_flow_signatures():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert names == {"nightly-index", "ask-library", "synth-vico", "evaluate", "train"}
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        params = inspect.signature(flow.fn).parameters
        unknown = set(dep.get("parameters", {})) - set(params)
        assert not unknown, f"{dep['name']}: parameters {unknown} are not arguments of {dep['entrypoint']}"
        required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
        missing = required - set(dep.get("parameters", {}))
        if dep.get("schedules"):  # a scheduled run has nobody to give a parameter
            assert not missing, f"{dep['name']}: missing {missing}"
        for name in missing:  # on-demand deployments: the description says what to give at run time
            assert f"`{name}`" in dep["description"], f"{dep['name']}: description does not ask for {name}"
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly-index")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
