"""Three `cairn serve --cluster` nodes sharing one hub (only with $CAIRN_CLUSTER_NATS): the
official SDK's worker connects to one node and its client to another, and the worker runs the
whole hub, whichever node runs each instance's partition: chains, fan-outs, sub-orchestrations
and entities across partitions. Then a node is killed with SIGKILL mid-run; its partitions move
to the other two and every started orchestration completes with the right output."""
import json
import os
import urllib.request
import uuid

import pytest
from durabletask import client

import workflows
from conftest import CairnServer, new_worker

pytestmark = pytest.mark.skipif(
    not os.environ.get("CAIRN_CLUSTER_NATS"), reason="needs $CAIRN_CLUSTER_NATS (cluster mode)"
)

TIMEOUT = 90


def owners(node: CairnServer) -> list:
    with urllib.request.urlopen(f"{node.http}/api/cluster", timeout=10) as r:
        body = json.load(r)
    return [p.get("owner") for p in body.get("partitionStatus", [])]


def wait_until_spread(node: CairnServer, nodes: int):
    import time
    deadline = time.time() + 60
    while time.time() < deadline:
        now = owners(node)
        if now and all(now) and len(set(now)) == nodes:
            return now
        time.sleep(0.2)
    raise AssertionError(f"the partitions were not spread over {nodes} nodes: {owners(node)}")


def start_batch(c, tag: str) -> dict:
    expected = {}
    for i in range(4):
        expected[c.schedule_new_orchestration(workflows.chaining, instance_id=f"{tag}-chain-{i}")] = \
            ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
        expected[c.schedule_new_orchestration(workflows.fan_out_fan_in, input=20,
                                              instance_id=f"{tag}-fan-{i}")] = sum(i * 2 for i in range(20))
        expected[c.schedule_new_orchestration(workflows.parent, input=3,
                                              instance_id=f"{tag}-parent-{i}")] = \
            {"sum": 6, "greetings": ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]}
        expected[c.schedule_new_orchestration(workflows.uses_entities, input=f"{tag}-{i}",
                                              instance_id=f"{tag}-entities-{i}")] = "entities"
    return expected


def check(c, expected: dict):
    for iid, want in expected.items():
        st = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert st is not None, f"{iid} is gone"
        assert st.runtime_status == client.OrchestrationStatus.COMPLETED, (iid, st.failure_details)
        out = st.get_output()
        if want == "entities":
            assert out["after"] == 15 and out["now"] == 15 and out["failed"] is not None, (iid, out)
        else:
            assert out == want, (iid, out)


def test_a_worker_on_one_node_runs_a_hub_shared_by_three_and_survives_a_kill():
    hub = "py-shared-" + uuid.uuid4().hex[:8]
    nodes = [CairnServer("--lease", "1s", hub=hub).start() for _ in range(3)]
    w = None
    try:
        wait_until_spread(nodes[0], 3)
        w = new_worker(nodes[0].address)
        w.start()
        c = client.TaskHubGrpcClient(host_address=nodes[2].address)
        check(c, start_batch(c, "before"))
        # kill -9 the node that runs neither the worker nor the client: its partitions move.
        later = start_batch(c, "during")
        nodes[1].kill()
        check(c, later)
        check(c, start_batch(c, "after"))
        # The two survivors run every partition between them.
        survivors = wait_until_spread(nodes[0], 2)
        assert survivors == owners(nodes[2]), "the survivors disagree on who runs what"
    finally:
        if w is not None:
            w.stop()
        for n in nodes:
            n.stop()
