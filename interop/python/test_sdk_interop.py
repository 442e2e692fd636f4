"""The official Python SDK (`durabletask` from PyPI) against a real `cairn serve`."""
import json
import time
import uuid

import grpc
from google.protobuf import wrappers_pb2
import pytest
from durabletask import client
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as pb_grpc

import workflows
from conftest import CairnServer, make_certificates, new_worker

TIMEOUT = 60


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run(dt, orchestrator, input=None, instance_id=None):
    iid = dt.schedule_new_orchestration(orchestrator, input=input, instance_id=instance_id)
    return dt.wait_for_orchestration_completion(iid, timeout=TIMEOUT)


def test_chaining(dt):
    st = run(dt, workflows.chaining)
    assert st.runtime_status == client.OrchestrationStatus.COMPLETED
    assert st.get_output() == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]


def test_fan_out_fan_in(dt):
    st = run(dt, workflows.fan_out_fan_in, input=100)
    assert st.get_output() == sum(i * 2 for i in range(100))


def test_sub_orchestrations(dt):
    iid = uid("parent")
    st = run(dt, workflows.parent, input=10, instance_id=iid)
    assert st.runtime_status == client.OrchestrationStatus.COMPLETED, st.failure_details
    assert st.get_output() == {"sum": 90, "greetings": ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]}
    child = dt.get_orchestration_state(f"{iid}-child")
    assert child is not None and child.name == "chaining"
    # The default child id follows the SDK's own derivation (parent id + hex sequence number).
    derived = [s for s in dt.get_all_orchestration_states(client.OrchestrationQuery(instance_id_prefix=f"{iid}:"))]
    assert len(derived) == 1 and derived[0].name == "fan_out_fan_in"


def test_durable_timer(dt):
    t = time.time()
    st = run(dt, workflows.sleeper, input=0.5)
    assert st.get_output() >= 0.5
    assert time.time() - t >= 0.5


def test_external_event_beats_timeout(dt):
    iid = dt.schedule_new_orchestration(workflows.approval, input=60)
    dt.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    st = dt.get_orchestration_state(iid)
    assert st.get_custom_status() == "waiting for approval"
    dt.raise_orchestration_event(iid, "approval", data="alice")
    st = dt.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.get_output() == "approved by alice"


def test_timeout_beats_external_event(dt):
    st = run(dt, workflows.approval, input=0.3)
    assert st.get_output() == "timed out"


def test_continue_as_new_and_custom_status(dt):
    st = run(dt, workflows.counter, input=[0, 5])
    assert st.runtime_status == client.OrchestrationStatus.COMPLETED
    assert st.get_output() == 5
    assert st.get_custom_status() == {"iteration": 5}
    history = dt.get_orchestration_history(st.instance_id)
    # Only the last execution is kept.
    assert sum(1 for e in history if type(e).__name__ == "ExecutionStartedEvent") == 1


def test_retries_then_success(dt):
    st = run(dt, workflows.with_retries, input=uid("flaky"))
    assert st.runtime_status == client.OrchestrationStatus.COMPLETED, st.failure_details
    assert st.get_output() == "ok after 3"


def test_failure_details_reach_the_client(dt):
    st = run(dt, workflows.failing, input="kaboom")
    assert st.runtime_status == client.OrchestrationStatus.FAILED
    fd = st.failure_details
    assert "kaboom" in fd.message
    # The inner failure (the activity's ValueError) survives the round trip through Cairn.
    assert fd.inner_failure is not None and fd.inner_failure.error_type.endswith("ValueError")
    # The activity's own failure is kept in history exactly as the worker reported it.
    failed = [e for e in dt.get_orchestration_history(st.instance_id) if type(e).__name__ == "TaskFailedEvent"]
    assert len(failed) == 1
    assert failed[0].failure_details.error_type.endswith("ValueError")
    assert failed[0].failure_details.message == "kaboom"
    assert "raise ValueError" in failed[0].failure_details.stack_trace


def test_terminate_suspend_resume(dt):
    iid = dt.schedule_new_orchestration(workflows.waiter)
    dt.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    dt.suspend_orchestration(iid, reason="hold on")
    assert dt.get_orchestration_state(iid).runtime_status == client.OrchestrationStatus.SUSPENDED
    dt.raise_orchestration_event(iid, "go", data=42)
    time.sleep(0.3)
    assert dt.get_orchestration_state(iid).runtime_status == client.OrchestrationStatus.SUSPENDED
    dt.resume_orchestration(iid)
    st = dt.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.get_output() == 42

    iid = dt.schedule_new_orchestration(workflows.waiter)
    dt.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    dt.terminate_orchestration(iid, output="stopped by test")
    st = dt.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.runtime_status == client.OrchestrationStatus.TERMINATED
    assert st.get_output() == "stopped by test"
    assert st.failure_details is None


def test_recursive_terminate_reaches_children(dt):
    iid = uid("tree")
    dt.schedule_new_orchestration(workflows.waits_on_child, instance_id=iid)
    dt.wait_for_orchestration_start(f"{iid}-child", timeout=TIMEOUT)
    dt.terminate_orchestration(iid, output="stop all", recursive=True)
    child = dt.wait_for_orchestration_completion(f"{iid}-child", timeout=TIMEOUT)
    assert child.runtime_status == client.OrchestrationStatus.TERMINATED
    assert dt.get_orchestration_state(iid).runtime_status == client.OrchestrationStatus.TERMINATED


def test_purge_one_and_by_filter(dt):
    prefix = uid("purge")
    ids = [run(dt, workflows.chaining, instance_id=f"{prefix}-{i}").instance_id for i in range(5)]
    result = dt.purge_orchestration(ids[0])
    assert result.deleted_instance_count == 1
    assert dt.get_orchestration_state(ids[0]) is None
    running = dt.schedule_new_orchestration(workflows.waiter, instance_id=f"{prefix}-running")
    dt.wait_for_orchestration_start(running, timeout=TIMEOUT)
    result = dt.purge_orchestrations_by(created_time_from=None, created_time_to=None,
                                        runtime_status=[client.OrchestrationStatus.COMPLETED])
    assert result.deleted_instance_count >= 4
    for i in ids[1:]:
        assert dt.get_orchestration_state(i) is None
    assert dt.get_orchestration_state(running) is not None, "running instances are never purged"
    dt.terminate_orchestration(running)


def test_query_with_paging(server, dt):
    prefix = uid("q")
    for i in range(25):
        dt.schedule_new_orchestration(workflows.chaining, instance_id=f"{prefix}-{i:02}")
    for i in range(25):
        dt.wait_for_orchestration_completion(f"{prefix}-{i:02}", timeout=TIMEOUT)
    states = dt.get_all_orchestration_states(client.OrchestrationQuery(instance_id_prefix=prefix,
                                                                      fetch_inputs_and_outputs=True))
    assert sorted(s.instance_id for s in states) == [f"{prefix}-{i:02}" for i in range(25)]
    assert all(s.get_output() == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"] for s in states)
    # Raw paging: pages of 10 with continuation tokens.
    stub = pb_grpc.TaskHubSidecarServiceStub(grpc.insecure_channel(server.address))
    seen, token = [], None
    while True:
        q = pb.InstanceQuery(instanceIdPrefix=wrappers_pb2.StringValue(value=prefix), maxInstanceCount=10)
        if token:
            q.continuationToken.value = token
        resp = stub.QueryInstances(pb.QueryInstancesRequest(query=q))
        assert len(resp.orchestrationState) <= 10
        seen += [s.instanceId for s in resp.orchestrationState]
        if not resp.HasField("continuationToken") or not resp.continuationToken.value:
            break
        token = resp.continuationToken.value
    assert seen == sorted(seen) and len(seen) == 25


def test_query_by_status_pages_newest_first_across_partitions(server, dt):
    """Without an id prefix a query is served from the status index of every partition and
    merged newest first; its continuation tokens walk the pages in that order."""
    tag = uid("newest")
    ids = [f"{tag}-{i:02}" for i in range(12)]
    for iid in ids:
        dt.schedule_new_orchestration(workflows.echo_orchestration, input=iid, instance_id=iid)
        dt.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    running = f"{tag}-running"
    dt.schedule_new_orchestration(workflows.waiter, instance_id=running)
    dt.wait_for_orchestration_start(running, timeout=TIMEOUT)
    stub = pb_grpc.TaskHubSidecarServiceStub(grpc.insecure_channel(server.address))
    seen, token, pages = [], None, 0
    while True:
        q = pb.InstanceQuery(runtimeStatus=[pb.ORCHESTRATION_STATUS_COMPLETED], maxInstanceCount=5)
        if token:
            q.continuationToken.value = token
        resp = stub.QueryInstances(pb.QueryInstancesRequest(query=q))
        pages += 1
        assert len(resp.orchestrationState) <= 5
        assert all(s.orchestrationStatus == pb.ORCHESTRATION_STATUS_COMPLETED for s in resp.orchestrationState)
        seen += [s.instanceId for s in resp.orchestrationState]
        if not resp.HasField("continuationToken") or not resp.continuationToken.value:
            break
        token = resp.continuationToken.value
    ours = [i for i in seen if i.startswith(tag)]
    assert ours == list(reversed(ids)), ours
    assert running not in seen and len(seen) == len(set(seen)) and pages >= 3
    # Created times never increase down the pages.
    created = {s.instance_id: s.created_at for s in dt.get_all_orchestration_states(
        client.OrchestrationQuery(runtime_status=[client.OrchestrationStatus.COMPLETED]))}
    times = [created[i] for i in seen if i in created]
    assert times == sorted(times, reverse=True)
    dt.raise_orchestration_event(running, "go", data=None)


def test_large_payload_round_trips(dt):
    big = "x" * (1024 * 1024)
    st = run(dt, workflows.echo_orchestration, input=big)
    assert st.runtime_status == client.OrchestrationStatus.COMPLETED
    assert st.get_output() == big


def test_oversized_payload_is_rejected_not_truncated(dt):
    too_big = "y" * (5 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as e:
        dt.schedule_new_orchestration(workflows.echo_orchestration, input=too_big)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit" in e.value.details()


def test_bad_input_gets_clear_statuses(server, dt):
    stub = pb_grpc.TaskHubSidecarServiceStub(grpc.insecure_channel(server.address))
    with pytest.raises(grpc.RpcError) as e:
        dt.raise_orchestration_event("no-such-instance", "x", data=1)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.StartInstance(pb.CreateInstanceRequest(instanceId="x", name=""))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        stub.StartInstance(pb.CreateInstanceRequest(instanceId="bad\nid", name="chaining"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    iid = dt.schedule_new_orchestration(workflows.waiter)
    dt.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as e:
        dt.schedule_new_orchestration(workflows.waiter, instance_id=iid)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    dt.terminate_orchestration(iid)
    dt.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert dt.get_orchestration_state("never-started") is None
    with pytest.raises(grpc.RpcError) as e:
        stub.CompleteActivityTask(pb.ActivityResponse(instanceId="x", taskId=1, completionToken="bogus"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # An orchestration name no worker knows fails inside the SDK worker, with the name in the error.
    st = run(dt, "no_such_orchestration")
    assert st.runtime_status == client.OrchestrationStatus.FAILED
    assert "no_such_orchestration" in st.failure_details.message


def test_restart_and_history_stream(dt):
    st = run(dt, workflows.chaining)
    history = dt.get_orchestration_history(st.instance_id)
    kinds = [type(e).__name__ for e in history]
    assert kinds[0] == "OrchestratorStartedEvent" and kinds[1] == "ExecutionStartedEvent"
    assert kinds.count("TaskScheduledEvent") == 3 and kinds.count("TaskCompletedEvent") == 3
    assert kinds[-1] == "ExecutionCompletedEvent"
    new_id = dt.restart_orchestration(st.instance_id, restart_with_new_instance_id=True)
    assert new_id != st.instance_id
    assert dt.wait_for_orchestration_completion(new_id, timeout=TIMEOUT).get_output() == st.get_output()


def test_scheduled_start(dt):
    from datetime import datetime, timedelta, timezone
    at = datetime.now(timezone.utc) + timedelta(seconds=1)
    iid = dt.schedule_new_orchestration(workflows.chaining, start_at=at)
    assert dt.get_orchestration_state(iid).runtime_status == client.OrchestrationStatus.PENDING
    st = dt.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.runtime_status == client.OrchestrationStatus.COMPLETED


def test_task_hub_rpcs_empty_the_hub():
    s = CairnServer().start()
    try:
        stub = pb_grpc.TaskHubSidecarServiceStub(grpc.insecure_channel(s.address))
        stub.CreateTaskHub(pb.CreateTaskHubRequest())
        w = new_worker(s.address)
        w.start()
        try:
            c = client.TaskHubGrpcClient(host_address=s.address)
            done = run(c, workflows.chaining).instance_id
            waiting = c.schedule_new_orchestration(workflows.waiter)
            c.wait_for_orchestration_start(waiting, timeout=TIMEOUT)
            stub.DeleteTaskHub(pb.DeleteTaskHubRequest())
            assert c.get_orchestration_state(done) is None
            assert c.get_orchestration_state(waiting) is None
        finally:
            w.stop()
    finally:
        s.stop()


def test_unfinished_work_item_goes_to_the_next_worker():
    """A worker that takes a work item and disconnects does not lose it."""
    s = CairnServer("--health-ping-secs", "1").start()
    try:
        channel = grpc.insecure_channel(s.address)
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)
        c = client.TaskHubGrpcClient(host_address=s.address)
        iid = c.schedule_new_orchestration(workflows.chaining)
        stream = stub.GetWorkItems(pb.GetWorkItemsRequest())
        item = next(stream)
        while item.HasField("healthPing"):
            item = next(stream)
        assert item.HasField("orchestratorRequest")
        assert item.orchestratorRequest.instanceId == iid
        assert len(item.orchestratorRequest.executionId.value) == 32
        first = [e.WhichOneof("eventType") for e in item.orchestratorRequest.newEvents]
        assert first[:2] == ["orchestratorStarted", "executionStarted"]
        # An idle stream gets health pings.
        ping = next(stream)
        assert ping.HasField("healthPing")
        stream.cancel()  # disconnect without completing
        w = new_worker(s.address)
        w.start()
        try:
            st = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
            assert st.runtime_status == client.OrchestrationStatus.COMPLETED
            # The first worker's token is no longer valid.
            with pytest.raises(grpc.RpcError) as e:
                stub.CompleteOrchestratorTask(pb.OrchestratorResponse(instanceId=iid,
                                                                      completionToken=item.completionToken))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            w.stop()
    finally:
        s.stop()


def test_several_workers_share_the_work(server, dt):
    extra = new_worker(server.address)
    extra.start()
    try:
        ids = [dt.schedule_new_orchestration(workflows.fan_out_fan_in, input=20) for _ in range(20)]
        for i in ids:
            assert dt.wait_for_orchestration_completion(i, timeout=TIMEOUT).get_output() == 380
    finally:
        extra.stop()


def test_rewind_through_the_sdk_client(dt):
    # A child that fails, under a parent: rewinding the parent rewinds the child, and only the
    # failed activity runs again.
    key = f"sdk-rw-{uuid.uuid4().hex[:8]}"
    workflows.broken.add(key)
    iid = dt.schedule_new_orchestration(workflows.rewindable_parent, input=key)
    s = dt.wait_for_orchestration_completion(iid, timeout=30)
    assert s.runtime_status == client.OrchestrationStatus.FAILED
    workflows.broken.discard(key)
    dt.rewind_orchestration(iid, reason="fixed")
    s = dt.wait_for_orchestration_completion(iid, timeout=30)
    assert s.runtime_status == client.OrchestrationStatus.COMPLETED, s.failure_details
    assert json.loads(s.serialized_output) == [f"Hello {key}!", f"{key} works"]
    child = dt.get_orchestration_state(f"{iid}-child")
    assert child.runtime_status == client.OrchestrationStatus.COMPLETED
    # Only Failed instances can be rewound.
    with pytest.raises(grpc.RpcError) as e:
        dt.rewind_orchestration(iid)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_bearer_token_guards_the_grpc_front():
    """With --auth-token, every gRPC call needs `authorization: Bearer <token>` metadata: the
    SDK's client and worker take it as `metadata=[...]` (the README shows it)."""
    s = CairnServer("--auth-token", "t0k3n-for-grpc").start()
    w = None
    try:
        for metadata in [None, [("authorization", "Bearer wrong")]]:
            bare = client.TaskHubGrpcClient(host_address=s.address, metadata=metadata)
            with pytest.raises(grpc.RpcError) as e:
                bare.get_orchestration_state("nobody")
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "Bearer <token>" in e.value.details()
        meta = [("authorization", "Bearer t0k3n-for-grpc")]
        c = client.TaskHubGrpcClient(host_address=s.address, metadata=meta)
        w = new_worker(s.address, metadata=meta)
        w.start()
        st = run(c, workflows.chaining)
        assert st.runtime_status == client.OrchestrationStatus.COMPLETED
        assert st.get_output() == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
        assert "t0k3n" not in s.log()
    finally:
        if w is not None:
            w.stop()
        s.stop()


def test_tls_on_the_grpc_front(tmp_path, monkeypatch):
    """With --tls-cert/--tls-key the SDK connects with `grpcs://host:port` (a private CA is
    trusted through GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, as the README shows), and the whole
    protocol (client calls, the worker's stream, completions) runs over TLS. A plaintext client
    gets no answer."""
    ca, cert, key = make_certificates(str(tmp_path))
    monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", ca)
    s = CairnServer("--tls-cert", cert, "--tls-key", key).start()
    w = None
    try:
        secure = f"grpcs://localhost:{s.port}"
        plain = client.TaskHubGrpcClient(host_address=s.address)
        with pytest.raises(grpc.RpcError) as e:
            plain.get_orchestration_state("nobody")
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        c = client.TaskHubGrpcClient(host_address=secure)
        w = new_worker(secure)
        w.start()
        st = run(c, workflows.chaining)
        assert st.runtime_status == client.OrchestrationStatus.COMPLETED
        assert st.get_output() == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
        assert "grpcs://" in s.log()
    finally:
        if w is not None:
            w.stop()
        s.stop()
