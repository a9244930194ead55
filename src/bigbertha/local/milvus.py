"""milvus-lite's gRPC server with a real Milvus's keepalive policy, for the local stack.

    python -m bigbertha.local.milvus --data-dir DIR --host 127.0.0.1 --port PORT

pymilvus pings its server every 10 s, with or without a call in flight
(pymilvus/client/grpc_handler.py, `GrpcHandler._create_grpc_channel`), because a Milvus server
accepts a ping every 5 s even on an idle connection (milvus-io/milvus
internal/distributed/proxy/service.go, `startExternalGrpc`: `EnforcementPolicy{MinTime: 5s,
PermitWithoutStream: true}`). `milvus-lite server` builds its grpc.server with gRPC core's
defaults instead (milvus_lite/adapter/grpc/server.py, `_build_server`): one ping per 5 minutes
while a call is in flight, one per 2 hours without, and the third early ping closes the
connection with GOAWAY ENHANCE_YOUR_CALM "too_many_pings". So a call the server needs more than
about 30 s for (a busy machine) fails with UNAVAILABLE "Too many pings". This runs the same
milvus-lite servicer with Milvus's policy, so the client behaves as it does against Milvus.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from typing import Any

# Milvus's EnforcementPolicy in gRPC core's server arguments (doc/keepalive.md).
KEEPALIVE_POLICY = (
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
)
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # what milvus-lite and Milvus standalone allow


def grpc_server(servicer: Any, max_workers: int = 10) -> Any:
    """A grpc.server serving `servicer` (milvus-lite's) under Milvus's keepalive policy."""
    from concurrent import futures

    import grpc
    from pymilvus.grpc_gen import milvus_pb2_grpc

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *KEEPALIVE_POLICY,
        ],
    )
    milvus_pb2_grpc.add_MilvusServiceServicer_to_server(servicer, server)
    return server


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bigbertha.local.milvus")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from milvus_lite.adapter.grpc.servicer import MilvusServicer
    from milvus_lite.db import MilvusLite

    db = MilvusLite(args.data_dir)  # holds the data directory's lock until closed
    server = grpc_server(MilvusServicer(db))
    server.add_insecure_port(f"{args.host}:{args.port}")
    stopping = threading.Event()
    # SIGTERM (ServiceManager.stop) drains the calls in flight and closes the data directory.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    server.start()
    print(f"milvus-lite listening on {args.host}:{args.port} (data {args.data_dir})", flush=True)
    try:
        stopping.wait()
    finally:
        server.stop(grace=3).wait()
        db.close()


if __name__ == "__main__":
    main()
