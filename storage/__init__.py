"""The archive of precompressed Video-XL memories (VST K/V caches) on LanceDB.

`storage.codec` (tensor <-> Arrow) needs only pyarrow, numpy, torch and xxhash; lancedb is imported
when an archive is opened.
"""

from storage.archive import (
    STATUS_FAILED,
    STATUS_INDEXED,
    Archive,
    Problem,
    VerifyReport,
    VideoRecord,
    answer_key,
    open_archive,
)
from storage.errors import (
    AmbiguousVideoId,
    ArchiveError,
    ArchiveNotFound,
    CorruptBlob,
    FingerprintMismatch,
    VideoNotFound,
)
from storage.schema import FORMAT_VERSION

__all__ = [
    "AmbiguousVideoId",
    "ArchiveNotFound",
    "FORMAT_VERSION",
    "STATUS_FAILED",
    "STATUS_INDEXED",
    "Archive",
    "ArchiveError",
    "CorruptBlob",
    "FingerprintMismatch",
    "Problem",
    "VerifyReport",
    "VideoNotFound",
    "VideoRecord",
    "answer_key",
    "open_archive",
]
