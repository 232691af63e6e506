"""Errors raised by the archive (`storage/`).

Every message names the video (and window, fingerprints) concerned and says what to do next.
"""

from __future__ import annotations


class ArchiveError(Exception):
    """Base class of every archive error."""


class ArchiveNotFound(ArchiveError, FileNotFoundError):
    """No archive at this URI (opened with `create=False`, as read-only commands do)."""

    def __init__(self, uri: str, detail: str = "") -> None:
        self.uri = uri
        super().__init__(f"no archive at {uri}{f' ({detail})' if detail else ''}: check the path (or "
                         "$VXL_ARCHIVE); `vxl index ... --archive URI` creates one")

    def __str__(self) -> str:
        return str(self.args[0])


class AmbiguousVideoId(ArchiveError, KeyError):
    """A video id prefix matches more than one video."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        self.prefix = prefix
        self.matches = list(matches)
        shown = ", ".join(matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
        super().__init__(f"video id prefix {prefix!r} matches {len(matches)} videos ({shown}); give more digits")

    def __str__(self) -> str:
        return str(self.args[0])


class VideoNotFound(ArchiveError, KeyError):
    """No committed row for this video (and fingerprint) in `videos`, or the video failed."""

    def __init__(self, video_id: str, fingerprint: str | None = None, detail: str = "") -> None:
        self.video_id = video_id
        self.fingerprint = fingerprint
        fp = f" with model fingerprint {fingerprint}" if fingerprint else ""
        msg = f"video {video_id}{fp} is not in the archive"
        if detail:
            msg += f" ({detail})"
        msg += "; index it first (`vxl index`) or check the id with `vxl archive ls`"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class FingerprintMismatch(ArchiveError):
    """The archive holds the video, but only memories made by other models."""

    def __init__(
        self, video_id: str, wanted: str, stored: list[str], stored_models: list[str | None]
    ) -> None:
        self.video_id = video_id
        self.wanted = wanted
        self.stored = list(stored)
        self.stored_models = list(stored_models)
        have = ", ".join(
            f"{fp} (model {name or 'unknown'})" for fp, name in zip(stored, stored_models, strict=True)
        )
        super().__init__(
            f"video {video_id}: no memory for model fingerprint {wanted}; the archive holds "
            f"memories made with fingerprint {have}. A memory must be read by the model that "
            f"made it: load that model, or re-index the video with the current one."
        )


class CorruptBlob(ArchiveError):
    """A stored K/V blob fails its checksum, is missing, or has the wrong size."""

    def __init__(self, video_id: str, window: int, detail: str, fingerprint: str | None = None) -> None:
        self.video_id = video_id
        self.window = window
        self.fingerprint = fingerprint
        what = "sink" if window < 0 else f"window {window}"
        fp = f" (fingerprint {fingerprint})" if fingerprint else ""
        super().__init__(
            f"video {video_id}{fp}, {what}: {detail}; the stored memory is damaged: remove it "
            f"with `vxl archive rm {video_id}` and re-index the video"
        )
