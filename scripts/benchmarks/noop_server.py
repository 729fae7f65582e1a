"""A gRPC server that does nothing: the ceiling for unary calls on this machine.

``python -m scripts.benchmarks.noop_server [--workers N]`` serves
``/auditlog.v1.AuditService/Record`` on a free loopback port with the same grpcio sync server,
thread pool size and options as ``audit_service.server.create_server``; the handler ignores the
request and answers an empty ``RecordResponse``. It prints ``noop-server listening on
HOST:PORT`` and stops on SIGTERM or SIGINT, or by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import grpc

from audit_service.config import Settings
from audit_service.server import MAX_RECEIVE_BYTES, SERVICE_NAME
from scripts.benchmarks.common import LOOPBACK

EMPTY_RESPONSE = b""  # an empty RecordResponse serializes to no bytes


def _record(request: bytes, context: grpc.ServicerContext) -> bytes:
    return EMPTY_RESPONSE


def create(workers: int) -> tuple[grpc.Server, int]:
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=workers * 4,
    )
    handler = grpc.unary_unary_rpc_method_handler(
        _record, request_deserializer=None, response_serializer=None
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Record": handler}),)
    )
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    return server, port


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="noop_server", description=__doc__)
    parser.add_argument("--workers", type=int, default=Settings().workers)
    parser.add_argument(
        "--max-seconds", type=float, default=900.0, help="exit by itself after this long"
    )
    args = parser.parse_args(argv)
    server, port = create(args.workers)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print(f"noop-server listening on {LOOPBACK}:{port}", flush=True)
    stop.wait(args.max_seconds)
    server.stop(5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
