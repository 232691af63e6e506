"""Provenance, upstream drift and the numerics canary through the real index pipeline (issue 10).

The encode actors are Ray worker processes; faults are injected there by a worker setup hook
(`tests/fault_hooks.py`, switched by a file this test writes): "ignore_cache" simulates the
transformers 5.24 change, "perturb" a numerically different kernel (1e-3 added to every attention
output). References: the installed library versions (importlib.metadata), the archive's rows before
and after, and `model.probe.compare_probes` on probes computed in this process.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tasks.decoders import resolve_backend
from tasks.index import make_options, run_index

pytestmark = [pytest.mark.fidelity, pytest.mark.timeout(600)]

OPTS = dict(chunking="fixed", ratio=8, frames=12, workers=1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fault_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("fault") / "fault"
    f.write_text("")
    return f


@pytest.fixture(scope="module")
def ray_faults(fault_file):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "VXL_TEST_FAULT_FILE": str(fault_file),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning",
             runtime_env={"env_vars": env, "worker_process_setup_hook": "tests.fault_hooks.install"})
    yield ray
    ray.shutdown()


def _rows(uri):
    from storage import open_archive

    a = open_archive(uri)
    return ([(r.video_id, r.model_fingerprint, r.status, r.write_id) for r in a.list_videos()],
            [(p["key"], p["status"]) for p in a.list_probes()])


def test_provenance_drift_and_canary(ray_faults, fault_file, sample_dir, tmp_path, tiny_vx):
    from model.environment import UpstreamDriftError
    from storage import open_archive
    from tasks.numerics import NumericsChanged

    uri = str(tmp_path / "archive")
    videos = sorted(str(p) for p in sample_dir.glob("*.mp4"))

    # 1. a drifted transformers (the attention ignores the cache): loud error at the first worker, nothing stored
    fault_file.write_text("ignore_cache")
    with pytest.raises(UpstreamDriftError, match=rf"^transformers {metadata.version('transformers')}: "):
        run_index(videos[:1], uri, make_options("tiny", **OPTS))
    assert _rows(uri) == ([], [])

    # 2. a normal index records the probe and, on every row, the library versions that computed it
    fault_file.write_text("")
    rep = run_index(videos[:2], uri, make_options("tiny", **OPTS))
    assert rep.exit_code == 0 and len(rep.indexed) == 2
    assert [n["status"] for n in rep.numerics] == ["recorded"]
    arch = open_archive(uri)
    for rec in arch.list_videos():
        lib = json.loads(rec.library_versions)
        for dist in ("torch", "transformers", "tokenizers", "decord"):
            assert lib[dist] == metadata.version(dist), dist
        assert lib["cuda"] == "cpu" and lib["device"].startswith("cpu")
        used = resolve_backend("auto")  # the default decoder: pyav, or torchcodec where installed
        assert lib["decoder"] == f"{used} {metadata.version({'pyav': 'av'}.get(used, used))}"
    from model.probe import compare_probes, compute_probe

    ref = arch.reference_probe(tiny_vx.fingerprint)
    assert compare_probes(ref, compute_probe(tiny_vx)).memory_rel < 1e-6  # the worker's probe = this process's

    out = CliRunner().invoke(_app(), ["archive", "show", rep.indexed[0]["video_id"], "--archive", uri, "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)[0]
    assert shown["library_versions"]["transformers"] == metadata.version("transformers")
    assert [p["status"] for p in shown["numerics_probes"]] == ["reference"]

    # 3. same fingerprint, other numerics: refused, naming both environments; the archive is unchanged
    before = _rows(uri)
    fault_file.write_text("perturb")
    with pytest.raises(NumericsChanged) as err:
        run_index(videos, uri, make_options("tiny", force=True, **OPTS))
    msg = str(err.value)
    assert "Archive's probe: torch" in msg and "This process: torch" in msg and "relative (tolerance 0.0002" in msg
    assert _rows(uri) == before

    # ... and answering from it in such a process is refused too (exit status 4)
    from tasks.ask import AskError, ask_video

    perturbed = _perturbed_model()
    with pytest.raises(AskError) as aerr:
        ask_video(uri, rep.indexed[0]["video_id"], "What happens first?", vx=perturbed)
    assert aerr.value.kind == "numerics_changed" and aerr.value.exit_code == 4

    # 4. with the override the run proceeds and the change is recorded
    rep = run_index(videos, uri, make_options("tiny", accept_numerics_change=True, **OPTS))
    assert rep.exit_code == 0 and len(rep.indexed) == 1  # the third video; the first two stay indexed
    assert rep.numerics[0]["status"] == "accepted"
    probes = open_archive(uri).list_probes(tiny_vx.fingerprint)
    assert [p["status"] for p in probes] == ["superseded", "reference"]
    change = probes[-1]["accepted_change"]
    assert change["comparison"]["ok"] is False and change["new_environment"]["transformers"]
    fault_file.write_text("")


def _perturbed_model():
    from model import load_model
    from model.modeling import VSTAttention

    vx = load_model("tiny", device="cpu")
    for layer in vx.model.model.layers:
        attn: VSTAttention = layer.self_attn
        original = attn.forward

        def forward(*args, _original=original, **kwargs):
            out, w = _original(*args, **kwargs)
            return out + 1e-3, w

        attn.forward = forward
    return vx


def _app():
    from flows.cli import app

    return app
