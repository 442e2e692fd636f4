"""The Python SDK's in-memory test backend (`durabletask.testing`) as a stand-alone gRPC server
process, so that SDK benchmarks can measure its CPU apart from the SDK worker's.

    .venv/bin/python interop/python/inmemory_backend.py --port 50051 [--max-workers 256]

Prints `listening on localhost:<port>` once the server accepts connections and serves until
SIGINT or SIGTERM. Not durable: everything is kept in this process's memory.

`durabletask.testing.create_test_backend(port)` starts the server with a gRPC thread pool of
10 threads. Every open GetWorkItems stream and every blocked WaitForInstanceCompletion call
holds one of them, so a client waiting on 100 orchestrations at once would queue the workers'
own completion calls behind the waits. `--max-workers` (default 256) sizes that pool.

A client that sets no gRPC deadline on WaitForInstanceCompletion/Start (the JS SDK does not; it
races the call against its own timer) makes the stock backend pass grpc's "no deadline" time
remaining (~1e300 s) to threading.Event.wait, which fails with "OverflowError: timestamp out of
range for platform time_t". Waits are clamped to one day here. Nothing else is changed.
"""
import argparse
import logging
import signal
import sys
import threading
from concurrent import futures
from typing import Callable, cast

import grpc
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from durabletask.testing import InMemoryOrchestrationBackend


class Backend(InMemoryOrchestrationBackend):
    def __init__(self, port: int, max_workers: int):
        super().__init__(port=port)
        self._max_workers = max_workers

    def _wait_for_state(self, instance_id, predicate, timeout):
        if timeout is not None and timeout > 86400:
            timeout = 86400
        return super()._wait_for_state(instance_id, predicate, timeout)

    def start(self) -> str:
        # Same as InMemoryOrchestrationBackend.start(), with a configurable thread pool, bound
        # to the loopback address only.
        self._shutdown_event.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers))
        self._server = server
        add = cast(Callable[[InMemoryOrchestrationBackend, grpc.Server], None],
                   stubs.add_TaskHubSidecarServiceServicer_to_server)
        add(self, server)
        server.add_insecure_port(f"127.0.0.1:{self._port}")
        server.start()
        return f"127.0.0.1:{self._port}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-workers", type=int, default=256, help="gRPC server threads (stock: 10)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    backend = Backend(args.port, args.max_workers)
    address = backend.start()
    print(f"listening on {address}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    backend.stop(grace=0)
    sys.exit(0)


if __name__ == "__main__":
    main()
