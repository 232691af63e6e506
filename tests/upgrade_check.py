"""`make upgrade-check`: try the newest dependencies pyproject.toml allows, without touching the lock.

1. resolve the newest versions the ranges in pyproject.toml allow (`uv pip compile --upgrade`, the same
   platform as uv.lock) into `.upgrade-check/requirements.txt`;
2. install them into a scratch venv `.upgrade-check/venv` (plus vxl itself, editable);
3. print what differs from uv.lock;
4. run the fidelity tests there (`pytest -m fidelity`: the oracle, Qwen2/CLIP equivalence, archive vs
   fresh encode, the drift invariants and the numerics canary);
5. write `.upgrade-check/report.json` and exit 0 only when they pass.

A passing check is what allows a lock bump (docs/OPERATIONS.md, "Upgrading dependencies").
Options: `--upgrade-package NAME[==VERSION]` (repeatable) resolves only those newer, the rest as
locked; `--keep` reuses an existing scratch venv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".upgrade-check"


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True, **kw)


def locked_versions() -> dict[str, set[str]]:
    """name -> versions in uv.lock (several when the lock forks by Python version)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    out: dict[str, set[str]] = {}
    for p in lock["package"]:
        if "version" in p and p["name"] != "vxl":
            out.setdefault(p["name"], set()).add(p["version"])
    return out


def resolved_versions(req: Path) -> dict[str, str]:
    out = {}
    for line in req.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line and not line.startswith("-"):
            name, ver = line.split("==", 1)
            out[name.split("[")[0].strip().lower().replace("_", "-")] = ver.split(";")[0].strip()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upgrade-package", action="append", default=[], metavar="NAME[==VERSION]")
    ap.add_argument("--keep", action="store_true", help="reuse .upgrade-check/venv if present")
    args = ap.parse_args()
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        print("error: uv not found; run `make install` first", file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    req = OUT / "requirements.txt"
    t0 = time.perf_counter()
    compile_cmd = [uv, "pip", "compile", "pyproject.toml", "--extra", "dev", "--python-version", "3.11",
                   "--python-platform", "x86_64-unknown-linux-gnu", "--no-header", "-o", req]
    if args.upgrade_package:
        pinned = OUT / "locked.txt"
        _run([uv, "export", "--locked", "--extra", "dev", "--no-hashes", "--no-emit-project", "-o", pinned],
             stdout=subprocess.DEVNULL)
        for pkg in args.upgrade_package:
            compile_cmd += ["--upgrade-package", pkg]
        shutil.copy(pinned, req)  # compile prefers the versions already in the output file
    else:
        compile_cmd.append("--upgrade")
    _run(compile_cmd)
    venv = OUT / "venv"
    if not (args.keep and (venv / "bin" / "python").exists()):
        shutil.rmtree(venv, ignore_errors=True)
        _run([uv, "venv", venv, "--python", sys.executable])
    py = venv / "bin" / "python"
    _run([uv, "pip", "install", "--python", py, "-r", req])
    _run([uv, "pip", "install", "--python", py, "--no-deps", "-e", "."])

    old, new = locked_versions(), resolved_versions(req)
    changed = {n: [" | ".join(sorted(old.get(n, ()))) or None, v] for n, v in sorted(new.items())
               if v not in old.get(n, ())}
    print(f"\n{len(changed)} packages differ from uv.lock:")
    for name, (a, b) in changed.items():
        print(f"  {name:32} {a or '-':>14} -> {b}")
    env = dict(os.environ, PYTHONPATH="")
    tests = subprocess.run([str(py), "-m", "pytest", "-m", "fidelity", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                           env=env)
    report = {"passed": tests.returncode == 0, "changed": changed, "seconds": round(time.perf_counter() - t0, 1),
              "python": sys.version.split()[0], "upgrade_package": args.upgrade_package}
    (OUT / "report.json").write_text(json.dumps(report, indent=2))
    verdict = "PASSED: the lock may be bumped (docs/OPERATIONS.md)" if report["passed"] else \
        "FAILED: keep the lock; fix vxl or narrow the range in pyproject.toml"
    print(f"\nupgrade check {verdict}; report in {OUT / 'report.json'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
