"""storage.codec: VSTMemory <-> Arrow, bit-exact, without lancedb."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from storage_factories import FP, make_memory

from storage import codec
from storage.errors import CorruptBlob
from storage.schema import SINK_WINDOW, VST_KV_SCHEMA


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_bit_exact(dtype):
    mem = make_memory(dtype=dtype, num_windows=3)
    # include values whose bits must survive: NaN payloads, -0.0, inf, subnormals
    special = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf"), 1e-40], dtype=torch.float32)
    mem.window_kv[1].view(-1)[:5] = special.to(dtype)
    tab = codec.memory_to_arrow(mem, video_id="v", fingerprint=FP, write_id="w")
    assert tab.schema.equals(VST_KV_SCHEMA, check_metadata=True)
    assert tab.num_rows == 4
    assert tab.column("window").to_pylist() == [SINK_WINDOW, 0, 1, 2]
    back = codec.memory_from_arrow(tab)
    assert back.equal(mem)
    assert back.dtype == dtype and back.fingerprint == FP
    # raw bytes are exactly the tensor's little-endian bytes
    raw = tab.column("kv")[2].as_py()
    assert raw == mem.window_kv[1].contiguous().view(torch.uint8).numpy().tobytes()


def test_decode_is_zero_copy():
    mem = make_memory(dtype=torch.bfloat16, num_windows=1)
    tab = codec.memory_to_arrow(mem, video_id="v", fingerprint=FP, write_id="w")
    buf = tab.column("kv").chunk(0)[1].as_buffer()
    t = codec.tensor_from_bytes(buf, "bfloat16", tab.column("shape")[1].as_py())
    assert t.data_ptr() == buf.address


def test_checksum_mismatch_names_video_and_window():
    mem = make_memory(num_windows=2)
    tab = codec.memory_to_arrow(mem, video_id="vid9", fingerprint=FP, write_id="w")
    rows = tab.drop(["kv"]).to_pylist()
    blobs = [bytearray(tab.column("kv")[i].as_py()) for i in range(tab.num_rows)]
    blobs[2][7] ^= 0x01
    with pytest.raises(CorruptBlob, match=r"vid9.*window 1.*checksum"):
        codec.memory_from_rows(rows, blobs)
    blobs[2][7] ^= 0x01
    assert codec.memory_from_rows(rows, blobs).equal(mem)
    with pytest.raises(CorruptBlob, match="bytes"):
        codec.memory_from_rows(rows, [bytes(b[:-2]) for b in blobs])


def test_embeddings_and_errors():
    mem = make_memory(num_windows=3)
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    tab = codec.memory_to_arrow(mem, video_id="v", fingerprint=FP, write_id="w", window_embeddings=emb)
    col = tab.column("clip_embedding").to_pylist()
    assert col[0] is None and np.array_equal(np.array(col[1:], dtype=np.float32), emb)
    with pytest.raises(ValueError, match="num_windows"):
        codec.memory_to_arrow(mem, video_id="v", fingerprint=FP, write_id="w", window_embeddings=emb[:2])
    with pytest.raises(ValueError, match="fingerprint"):
        codec.memory_to_arrow(mem, video_id="v", fingerprint="x" * 64, write_id="w")
    with pytest.raises(ValueError, match="dtype"):
        codec.dtype_name(torch.float64)


def test_codec_imports_without_lancedb():
    code = (
        "import sys; sys.modules['lancedb'] = None; sys.modules['lance'] = None\n"
        "import storage.codec, storage.schema, storage.errors\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_plain_pyarrow_table_decodes():
    """A table assembled by hand with pyarrow (e.g. read back from Lance) decodes."""
    mem = make_memory(dtype=torch.float32, num_windows=2)
    tab = codec.memory_to_arrow(mem, video_id="v", fingerprint=FP, write_id="w")
    rebuilt = pa.Table.from_pylist(tab.to_pylist(), schema=VST_KV_SCHEMA)
    assert codec.memory_from_arrow(rebuilt.slice(0, 2)).equal(mem.select([0]))
