"""Durable entities through the protocol: the Python SDK's function-based and class-based
entities on Cairn."""
import json
import time
import uuid

from durabletask import client
from durabletask.entities import EntityInstanceId

import workflows

TIMEOUT = 60


def wait_for_state(dt, entity_id, want, seconds=30):
    deadline = time.time() + seconds
    meta = None
    while time.time() < deadline:
        meta = dt.get_entity(entity_id)
        # An entity whose first operation is still queued exists with no state yet; the SDK
        # gives that as None or "" depending on the field's presence.
        raw = meta.get_state() if meta is not None else None
        if raw and json.loads(raw) == want:
            return meta
        time.sleep(0.05)
    raise AssertionError(f"{entity_id} never reached {want}: {meta and meta.get_state()!r}")


def test_function_entity_signals_from_the_client(dt):
    e = EntityInstanceId("counter", uuid.uuid4().hex[:8])
    assert dt.get_entity(e) is None
    for i in range(20):
        dt.signal_entity(e, "add", i)
    wait_for_state(dt, e, sum(range(20)))


def test_orchestration_calls_and_signals_entities(dt):
    key = uuid.uuid4().hex[:8]
    iid = dt.schedule_new_orchestration(workflows.uses_entities, input=key)
    st = dt.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.runtime_status == client.OrchestrationStatus.COMPLETED, st.failure_details
    out = st.get_output()
    # The signal (+5) arrives before the call (+10); the failing operation's change is rolled back.
    assert out["after"] == 15 and out["now"] == 15 and out["failed"] is not None


def test_class_entity_and_critical_section(dt):
    a, b = uuid.uuid4().hex[:6], uuid.uuid4().hex[:6]
    dt.signal_entity(EntityInstanceId("account", a), "deposit", 10)
    wait_for_state(dt, EntityInstanceId("account", a), 10)
    ids = [dt.schedule_new_orchestration(workflows.locked_transfer, input=[a, b] if i % 2 else [b, a])
           for i in range(6)]
    for i in ids:
        st = dt.wait_for_orchestration_completion(i, timeout=TIMEOUT)
        assert st.runtime_status == client.OrchestrationStatus.COMPLETED, st.failure_details
    # Each transfer moved one unit inside a critical section: 10 - 3 + 3 and 0 + 3 - 3.
    wait_for_state(dt, EntityInstanceId("account", a), 10)
    wait_for_state(dt, EntityInstanceId("account", b), 0)
    meta = dt.get_entity(EntityInstanceId("account", a))
    assert not meta._locked_by  # no lock left behind
    assert meta.backlog_queue_size == 0
