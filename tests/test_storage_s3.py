"""The archive on an S3-compatible object store: moto's S3 server on loopback (started by the test)."""

from __future__ import annotations

import socket

import pytest
from storage_factories import FP, make_memory, make_record, video_id

from storage import open_archive

moto_server = pytest.importorskip("moto.server", reason="needs moto[server] (the dev extra)")
boto3 = pytest.importorskip("boto3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch):
    """(endpoint, storage_options) of a fresh moto S3 server with bucket `vxl`."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_region": "us-east-1"}
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    try:
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=creds["aws_access_key_id"],
            aws_secret_access_key=creds["aws_secret_access_key"],
            region_name=creds["aws_region"],
        ).create_bucket(Bucket="vxl")
        yield endpoint, {**creds, "aws_endpoint": endpoint, "allow_http": "true"}
    finally:
        server.stop()


@pytest.mark.slow
def test_s3_put_load_verify_round_trip(s3):
    _, opts = s3
    arch = open_archive("s3://vxl/archive", storage_options=opts)
    mems = {n: make_memory(seed=i, num_windows=4, tokens=(300, 301, 302, 303), head_dim=32) for i, n in enumerate("ab")}
    for n, m in mems.items():
        arch.put(make_record(n), m)
    arch.put(make_record("a"), mems["a"])  # replace: one live write, old rows deleted
    for n, m in mems.items():
        assert arch.load_memory(video_id(n), FP).equal(m)
    assert arch.load_memory(video_id("a"), FP, windows=[1, 3]).equal(mems["a"].select([1, 3]))
    rep = arch.verify()
    assert rep.ok and rep.videos_checked == 2 and rep.blobs_checked == 10, rep.problems
    # a second handle (as another process would) sees the data and the first handle's later puts
    other = open_archive("s3://vxl/archive", storage_options=opts)
    assert other.indexed_ids(FP) == {video_id("a"), video_id("b")}
    new = make_memory(seed=9, num_windows=2, tokens=(64, 65), head_dim=32)
    arch.put(make_record("b"), new)
    assert other.load_memory(video_id("b"), FP).equal(new)
    st = arch.stats()
    assert st["indexed"] == 2 and st["garbage_rows"] == 0 and st["disk_bytes"] is None
