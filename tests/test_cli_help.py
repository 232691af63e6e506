"""`vxl --help` stays fast: no torch, lancedb, ray, prefect, av or decord at import time (STYLE.md 11)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "lancedb", "lance", "ray", "prefect", "av", "decord", "transformers", "open_clip")


def test_cli_import_is_light():
    code = f"import sys, flows.cli; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("sample-videos", "index", "ask", "ask-library", "vico", "archive", "demo"):
        assert cmd in out


def test_model_and_storage_do_not_import_prefect_or_ray():
    code = ("import sys, model, model.video_xl, model.dynamic, storage, storage.codec, storage.archive; "
            "print(','.join(m for m in ('prefect', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
