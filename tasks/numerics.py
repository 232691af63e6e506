"""The archive's numerics canary, as the index and ask paths use it (`model.probe` computes probes,
`storage.Archive` keeps them).

`check_probe(archive, probe, ...)` compares a process's probe with the reference recorded for that
model fingerprint, records the first one (indexing only), and refuses (`NumericsChanged`, CLI exit
status 4) when the numerics differ beyond `model.probe.TOLERANCE`, unless the user accepted the
change (`--accept-numerics-change`), which is then recorded in the archive's `probes` table.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime

EXIT_NUMERICS_CHANGED = 4


class NumericsChanged(Exception):
    """This environment computes other numbers than the one that wrote the archive (exit status 4).

    The message names the archive, the model fingerprint, the differences and both environments.
    """

    exit_code = EXIT_NUMERICS_CHANGED

    def __init__(self, archive_uri: str, reference, current, comparison) -> None:
        self.archive_uri = archive_uri
        self.comparison = comparison.to_dict()
        self.reference_environment = reference.environment
        self.current_environment = current.environment
        super().__init__(
            f"archive {archive_uri}: this environment's numerics for model {current.fingerprint[:16]} differ from "
            f"those the archive's memories were computed with ({comparison.reason}). Archive's probe: "
            f"{describe_environment(reference.environment)}. This process: "
            f"{describe_environment(current.environment)}. Differences: "
            f"{environment_diff(reference.environment, current.environment) or 'none in the recorded versions'}. "
            "Nothing was written or answered. Install from the lock (`make install`) to match the archive, or "
            "rerun with --accept-numerics-change to accept (and record) the change; docs/OPERATIONS.md, "
            "'Numerics canary'."
        )


def describe_environment(env: dict) -> str:
    """One line: torch, transformers, tokenizers, CUDA and device of a `library_versions()` dict."""
    keys = ("torch", "transformers", "tokenizers", "cuda", "device")
    return ", ".join(f"{k} {env.get(k, '?')}" for k in keys)


def environment_diff(a: dict, b: dict) -> str:
    """`key a -> b` for every recorded version that differs."""
    return ", ".join(f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def check_probe(archive, probe, *, accept: bool = False, record: bool = True) -> dict:
    """Compare `probe` (this process's `model.probe.NumericsProbe`) with the archive's reference.

    Args:
        archive: an open `storage.Archive`.
        probe: computed by `model.probe.compute_probe` right after loading the model.
        accept: the user accepted a numerics change: record it (index paths: `probe` becomes the new
            reference; answering paths: a row with status "accepted", the reference stays).
        record: the process encodes (index paths): record `probe` as the reference when the archive
            has none for its fingerprint. Answering paths pass False (and a `compute_answer_probe`
            probe) and get status "unverified" when there is no reference.
    Returns:
        {"status": "recorded" | "match" | "accepted" | "unverified", "comparison": dict | None,
         "change": dict | None (accepted: what was recorded)}.
    Raises:
        NumericsChanged: beyond tolerance and not `accept`.
    """
    from model.probe import compare_probes

    ref = archive.reference_probe(probe.fingerprint)
    if ref is None:
        if not record:
            return {"status": "unverified", "comparison": None, "change": None}
        archive.put_probe(probe)
        ref = archive.reference_probe(probe.fingerprint)  # a concurrent first writer may have won
        if ref is not None and ref.digest() == probe.digest():
            return {"status": "recorded", "comparison": None, "change": None}
    cmp = compare_probes(ref, probe)
    if cmp.ok:
        return {"status": "match", "comparison": cmp.to_dict(), "change": None}
    if not accept:
        raise NumericsChanged(archive.uri, ref, probe, cmp)
    change = {
        "comparison": cmp.to_dict(), "previous_digest": ref.digest(), "previous_environment": ref.environment,
        "new_environment": probe.environment, "accepted_at": datetime.now(UTC).isoformat(),
        "accepted_by": _user(),
    }
    archive.put_probe(probe, accepted_change=change, status="reference" if record else "accepted")
    return {"status": "accepted", "comparison": cmp.to_dict(), "change": change}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"
