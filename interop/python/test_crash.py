"""Crash through the protocol: kill -9 `cairn serve` in the middle of a Python-driven workload,
restart it on the same data directory and port; the SDK worker reconnects by itself and every
acknowledged orchestration completes with the right output."""
import random
import time

import grpc
from durabletask import client

import workflows
from conftest import CairnServer, new_worker


def until_reachable(call, seconds=60):
    """gRPC channels (shared subchannels, in C-core) back off after the server died; a real
    application retries UNAVAILABLE, and so does this test."""
    deadline = time.time() + seconds
    while True:
        try:
            return call()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.time() > deadline:
                raise
            time.sleep(0.2)


def test_kill_9_mid_workload_loses_nothing_acknowledged():
    server = CairnServer().start()
    w = new_worker(server.address)
    w.start()
    c = client.TaskHubGrpcClient(host_address=server.address)
    acknowledged = {}
    rng = random.Random()
    try:
        for round_ in range(3):
            deadline = time.time() + rng.uniform(0.5, 1.5)
            n = 0
            while time.time() < deadline:
                kind = n % 3
                iid = f"crash-{round_}-{n}"
                try:
                    if kind == 0:
                        c.schedule_new_orchestration(workflows.chaining, instance_id=iid)
                        acknowledged[iid] = ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
                    elif kind == 1:
                        c.schedule_new_orchestration(workflows.fan_out_fan_in, input=30, instance_id=iid)
                        acknowledged[iid] = sum(i * 2 for i in range(30))
                    else:
                        c.schedule_new_orchestration(workflows.counter, input=[0, 3], instance_id=iid)
                        acknowledged[iid] = 3
                except Exception:
                    pass  # not acknowledged: may or may not exist, not counted
                n += 1
                time.sleep(0.01)  # a steady stream, not a flood: the SDK worker is the slow part
            server.kill()
            # Same port, same data: the worker's own reconnect logic finds the new process.
            server.start()
            until_reachable(lambda: c.get_orchestration_state("probe"))
        assert server.proc.poll() is None, f"cairn serve died after restart: {server.log()}"
        for iid, expected in acknowledged.items():
            try:
                st = until_reachable(lambda: c.wait_for_orchestration_completion(iid, timeout=120))
            except Exception as e:
                raise AssertionError(f"waiting for {iid} failed: {e}\nserver log:\n{server.log()}") from e
            assert st is not None, f"acknowledged start {iid} is missing"
            assert st.runtime_status == client.OrchestrationStatus.COMPLETED, (iid, st.failure_details)
            assert st.get_output() == expected, iid
        assert len(acknowledged) >= 30, f"only {len(acknowledged)} starts were acknowledged"
    finally:
        w.stop()
        server.stop()
