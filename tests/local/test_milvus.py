"""The local Milvus server accepts pymilvus's keepalive pings as a real Milvus does.

Each side runs in its own process (as a server does): a slow call under keepalive pings,
against milvus-lite's servicer behind the stock gRPC server and behind ours.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# The stock server closes the connection at the 4th or the 5th ping (measured: ~25 s or ~31 s
# in, about evenly); 45 s leaves room for a 7th.
SLOW_CALL_SECONDS = 45.0
# pymilvus's own channel options (GrpcHandler._create_grpc_channel) with a 6 s interval instead
# of 10 s, to be quick; still slower than the 5 s a Milvus server allows. Unlimited pings without
# data stand for the other calls a shared channel carries (each lets the client ping again).
CLIENT_OPTIONS = [
    ("grpc.keepalive_time_ms", 6_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def slow_call(which: str, data_dir: str) -> str:
    """One HasCollection the server takes SLOW_CALL_SECONDS for: 'ok' or the gRPC error."""
    import grpc
    from milvus_lite.adapter.grpc.servicer import MilvusServicer
    from milvus_lite.db import MilvusLite
    from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

    from bigbertha.local.milvus import grpc_server

    class Slow(MilvusServicer):  # a call the server needs long for, as on a busy machine
        def HasCollection(self, request, context):  # noqa: N802 (the gRPC method's name)
            time.sleep(SLOW_CALL_SECONDS)
            return super().HasCollection(request, context)

    db = MilvusLite(data_dir)
    if which == "ours":
        server = grpc_server(Slow(db))
    else:  # what `milvus-lite server` builds: gRPC core's default ping policy
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        milvus_pb2_grpc.add_MilvusServiceServicer_to_server(Slow(db), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS)
    try:
        stub = milvus_pb2_grpc.MilvusServiceStub(channel)
        stub.HasCollection(milvus_pb2.HasCollectionRequest(collection_name="c"), timeout=120)
        return "ok"
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    finally:
        channel.close()
        server.stop(grace=0).wait()
        db.close()


def test_a_slow_call_survives_keepalive_pings_unlike_with_the_stock_server(tmp_path: Path):
    runs = {
        which: subprocess.Popen(
            [sys.executable, __file__, which, str(tmp_path / which)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for which in ("stock", "ours")
    }
    results = {which: run.communicate(timeout=120)[0].strip() for which, run in runs.items()}
    # The stock policy closes the connection under the call: the flake's exact error.
    assert results["stock"] == "UNAVAILABLE: Too many pings", results
    assert results["ours"] == "ok", results


if __name__ == "__main__":
    print(slow_call(sys.argv[1], sys.argv[2]))
