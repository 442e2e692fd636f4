"""The HTTP management API of `cairn serve`, over real HTTP, with orchestrations run by the
official Python SDK worker: the Durable Functions routes and shapes, every error path, auth,
metrics, and the OpenAPI document checked against the live routes."""
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

import workflows
from conftest import CairnServer

BASE = "/runtime/webhooks/durabletask"


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


def call(server, method, path, body=None, headers=None, raw=None):
    url = path if path.startswith("http") else server.http + path
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in (headers or {}):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.headers, e.read())


def wait_done(server, url, timeout=30):
    """Polls a status URL the way a Durable Functions client does: 202 means again."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = call(server, "GET", url)
        if r.status != 202:
            return r
        assert r.headers["Retry-After"] == "5"
        assert r.headers["Location"].startswith(server.http)
        time.sleep(0.1)
    raise AssertionError(f"{url} still running after {timeout}s")


def start(server, name, input=None, instance_id=None):
    path = f"{BASE}/orchestrators/{name}" + (f"/{instance_id}" if instance_id else "")
    r = call(server, "POST", path, body=input)
    assert r.status == 202, r.body
    return r


def uid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def error_of(r, status, kind):
    assert r.status == status, (r.status, r.body)
    e = r.json()
    assert e["error"] == kind, e
    assert e["message"], e
    return e["message"]


def test_start_then_202_then_200_with_history(server, sdk_worker):
    r = start(server, "chaining")
    payload = r.json()
    for key in ["id", "statusQueryGetUri", "sendEventPostUri", "terminatePostUri", "rewindPostUri",
                "purgeHistoryDeleteUri", "restartPostUri", "suspendPostUri", "resumePostUri"]:
        assert payload[key], key
    assert r.headers["Location"] == payload["statusQueryGetUri"]
    assert r.headers["Retry-After"] == "10"
    assert payload["sendEventPostUri"].endswith("/raiseEvent/{eventName}")
    done = wait_done(server, payload["statusQueryGetUri"])
    assert done.status == 200
    s = done.json()
    assert s["runtimeStatus"] == "Completed"
    assert s["output"] == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    assert s["name"] == "chaining" and s["instanceId"] == payload["id"]
    assert "historyEvents" not in s
    h = call(server, "GET", payload["statusQueryGetUri"] + "?showHistory=true&showHistoryOutput=true").json()
    events = h["historyEvents"]
    types = [e["EventType"] for e in events]
    assert types[0] == "ExecutionStarted" and types[-1] == "ExecutionCompleted", types
    # Durable Functions folds scheduling into outcomes and leaves episode markers out.
    assert "TaskScheduled" not in types and "OrchestratorStarted" not in types, types
    completed = [e for e in events if e["EventType"] == "TaskCompleted"]
    assert [e["Result"] for e in completed] == s["output"]
    assert all(e["FunctionName"] == "greet" and e["ScheduledTime"] <= e["Timestamp"] for e in completed)
    quiet = call(server, "GET", payload["statusQueryGetUri"] + "?showHistory=true&showInput=false").json()
    assert all(e.get("Result") is None for e in quiet["historyEvents"])
    assert quiet["input"] is None


def test_start_with_id_raise_event_and_conflicts(server, sdk_worker):
    iid = uid("waiter")
    start(server, "waiter", instance_id=iid)
    # A live instance with that id: conflict, nothing replaced.
    error_of(call(server, "POST", f"{BASE}/orchestrators/waiter/{iid}"), 409, "Conflict")
    r = call(server, "GET", f"{BASE}/instances/{iid}")
    assert r.status == 202 and r.json()["runtimeStatus"] in ("Pending", "Running")
    error_of(call(server, "POST", f"{BASE}/instances/{iid}/raiseEvent/go", raw=b"{not json"), 400, "BadRequest")
    assert call(server, "POST", f"{BASE}/instances/{iid}/raiseEvent/go", body={"ok": 1}).status == 202
    done = wait_done(server, f"{BASE}/instances/{iid}")
    assert done.status == 200 and done.json()["output"] == {"ok": 1}
    # Ended: events and terminations no longer apply (410), a new start replaces it.
    error_of(call(server, "POST", f"{BASE}/instances/{iid}/raiseEvent/go", body=1), 410, "Gone")
    error_of(call(server, "POST", f"{BASE}/instances/{iid}/terminate"), 410, "Gone")
    error_of(call(server, "POST", f"{BASE}/instances/{iid}/suspend"), 410, "Gone")
    start(server, "waiter", instance_id=iid)
    assert call(server, "GET", f"{BASE}/instances/{iid}").json()["runtimeStatus"] in ("Pending", "Running")
    assert call(server, "POST", f"{BASE}/instances/{iid}/terminate?reason=cleanup").status == 202


def test_error_paths_are_clear(server):
    error_of(call(server, "GET", f"{BASE}/instances/no-such-instance"), 404, "NotFound")
    for op in ["terminate", "suspend", "resume", "rewind", "restart"]:
        error_of(call(server, "POST", f"{BASE}/instances/no-such-instance/{op}"), 404, "NotFound")
    error_of(call(server, "POST", f"{BASE}/instances/no-such-instance/raiseEvent/x", body=1), 404, "NotFound")
    error_of(call(server, "DELETE", f"{BASE}/instances/no-such-instance"), 404, "NotFound")
    msg = error_of(call(server, "POST", f"{BASE}/orchestrators/chaining", raw=b"{broken"), 400, "BadRequest")
    assert "not valid JSON" in msg
    msg = error_of(call(server, "PUT", f"{BASE}/instances"), 405, "MethodNotAllowed")
    assert "PUT" in msg
    error_of(call(server, "GET", f"{BASE}/orchestrators/chaining"), 405, "MethodNotAllowed")
    error_of(call(server, "GET", "/runtime/webhooks/durabletask/nothing/here"), 404, "NoSuchRoute")
    error_of(call(server, "POST", f"{BASE}/instances/x/explode"), 404, "NoSuchRoute")
    assert "Bogus" in error_of(call(server, "GET", f"{BASE}/instances?runtimeStatus=Bogus"), 400, "BadRequest")
    assert "top" in error_of(call(server, "GET", f"{BASE}/instances?top=0"), 400, "BadRequest")
    assert "createdTimeFrom" in error_of(call(server, "GET", f"{BASE}/instances?createdTimeFrom=yesterday"), 400, "BadRequest")
    assert "showHistory" in error_of(call(server, "GET", f"{BASE}/instances/x?showHistory=maybe"), 400, "BadRequest")
    assert "createdTimeFrom" in error_of(call(server, "DELETE", f"{BASE}/instances"), 400, "BadRequest")
    error_of(call(server, "POST", f"{BASE}/orchestrators/chaining/{'x' * 300}"), 400, "BadRequest")
    error_of(call(server, "POST", f"{BASE}/entities/counter/k?op=", body=1), 400, "BadRequest")
    # Larger than the payload limit (4 MiB by default): refused whole, with the limit named.
    big = json.dumps("x" * (5 * 1024 * 1024)).encode()
    msg = error_of(call(server, "POST", f"{BASE}/orchestrators/echo_orchestration", raw=big), 413, "PayloadTooLarge")
    assert "max-payload-bytes" in msg


def test_query_filters_and_continuation(server, sdk_worker):
    prefix = uid("q")
    ids = [f"{prefix}-{i}" for i in range(7)]
    for i in ids:
        start(server, "echo_orchestration", input=i, instance_id=i)
    for i in ids:
        assert wait_done(server, f"{BASE}/instances/{i}").json()["runtimeStatus"] == "Completed"
    seen, token, pages = [], None, 0
    while True:
        headers = {"x-ms-continuation-token": token} if token else {}
        r = call(server, "GET", f"{BASE}/instances?instanceIdPrefix={prefix}&top=3&showInput=false", headers=headers)
        assert r.status == 200
        page = r.json()
        assert len(page) <= 3 and all(p["input"] is None for p in page)
        seen += [p["instanceId"] for p in page]
        pages += 1
        token = r.headers.get("x-ms-continuation-token")
        if not token:
            break
    assert sorted(seen) == sorted(ids) and pages >= 3
    done = call(server, "GET", f"{BASE}/instances?instanceIdPrefix={prefix}&runtimeStatus=Completed,Failed").json()
    assert len(done) == 7 and all(p["output"] == p["instanceId"] for p in done)
    assert call(server, "GET", f"{BASE}/instances?instanceIdPrefix={prefix}&runtimeStatus=Running").json() == []
    assert call(server, "GET", f"{BASE}/instances?instanceIdPrefix={prefix}&createdTimeFrom=2999-01-01T00:00:00Z").json() == []
    # Purge one, then the rest by filter.
    r = call(server, "DELETE", f"{BASE}/instances/{ids[0]}")
    assert r.status == 200 and r.json() == {"instancesDeleted": 1}
    error_of(call(server, "GET", f"{BASE}/instances/{ids[0]}"), 404, "NotFound")
    error_of(call(server, "DELETE", f"{BASE}/instances/{ids[0]}"), 404, "NotFound")
    r = call(server, "DELETE", f"{BASE}/instances?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Completed&instanceIdPrefix={prefix}")
    assert r.status == 200 and r.json() == {"instancesDeleted": 6}, r.body
    error_of(call(server, "DELETE", f"{BASE}/instances?createdTimeFrom=2000-01-01T00:00:00Z&instanceIdPrefix={prefix}"), 404, "NotFound")
    # Asking only for live statuses purges nothing (and never means "any status").
    start(server, "echo_orchestration", input="keep", instance_id=f"{prefix}-keep")
    wait_done(server, f"{BASE}/instances/{prefix}-keep")
    error_of(call(server, "DELETE", f"{BASE}/instances?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Running&instanceIdPrefix={prefix}"), 404, "NotFound")
    assert call(server, "GET", f"{BASE}/instances/{prefix}-keep").status == 200


def test_suspend_resume_terminate(server, sdk_worker):
    iid = uid("approval")
    start(server, "approval", input=600, instance_id=iid)
    url = f"{BASE}/instances/{iid}"
    deadline = time.time() + 20
    while call(server, "GET", url).json()["customStatus"] != "waiting for approval":
        assert time.time() < deadline
        time.sleep(0.05)
    error_of(call(server, "DELETE", url), 409, "Conflict")
    error_of(call(server, "POST", f"{url}/rewind"), 409, "Conflict")
    assert call(server, "POST", f"{url}/suspend?reason=maintenance").status == 202
    r = call(server, "GET", url)
    assert r.status == 202 and r.json()["runtimeStatus"] == "Suspended"
    assert call(server, "POST", f"{url}/resume?reason=done").status == 202
    assert call(server, "GET", url).json()["runtimeStatus"] == "Running"
    assert call(server, "POST", f"{url}/terminate?reason=not%20needed").status == 202
    r = wait_done(server, url)
    assert r.status == 200
    s = r.json()
    assert s["runtimeStatus"] == "Terminated" and s["output"] == "not needed"
    types = [e["EventType"] for e in call(server, "GET", url + "?showHistory=true").json()["historyEvents"]]
    assert types[-2:] == ["ExecutionTerminated", "ExecutionCompleted"], types


def test_rewind_reruns_the_failed_activity(server, sdk_worker):
    key = uid("rw")
    workflows.broken.add(key)
    r = start(server, "rewindable", input=key)
    url = r.json()["statusQueryGetUri"]
    failed = wait_done(server, url)
    assert failed.status == 200 and failed.json()["runtimeStatus"] == "Failed"
    assert "is broken" in failed.json()["failureDetails"]["errorMessage"]
    assert call(server, "GET", url + "?returnInternalServerErrorOnFailure=true").status == 500
    workflows.broken.discard(key)
    assert call(server, "POST", r.json()["rewindPostUri"].replace("{text}", "repaired")).status == 202
    done = wait_done(server, url)
    assert done.status == 200, done.body
    s = done.json()
    assert s["runtimeStatus"] == "Completed", s
    assert s["output"] == [f"Hello {key}!", f"{key} works"]
    types = [e["EventType"] for e in call(server, "GET", url + "?showHistory=true").json()["historyEvents"]]
    assert "ExecutionRewound" in types and "TaskFailed" not in types, types
    error_of(call(server, "POST", f"{BASE}/instances/{s['instanceId']}/rewind"), 410, "Gone")
    # Restart: the same orchestration and input under a new id.
    r = call(server, "POST", f"{BASE}/instances/{s['instanceId']}/restart")
    assert r.status == 202 and r.json()["id"] != s["instanceId"]
    assert wait_done(server, r.headers["Location"]).json()["output"] == s["output"]


def test_entities_signal_get_list(server, sdk_worker):
    key = uid("k")
    assert call(server, "POST", f"{BASE}/entities/counter/{key}?op=add", body=5).status == 202
    assert call(server, "POST", f"{BASE}/entities/counter/{key}?op=add", body=2).status == 202
    deadline = time.time() + 20
    while True:
        r = call(server, "GET", f"{BASE}/entities/counter/{key}")
        if r.status == 200 and r.json() == 7:
            break
        assert time.time() < deadline, (r.status, r.body)
        time.sleep(0.05)
    listed = call(server, "GET", f"{BASE}/entities/counter?fetchState=true").json()
    mine = [e for e in listed if e["entityId"] == {"name": "counter", "key": key}]
    assert len(mine) == 1 and mine[0]["state"] == 7 and mine[0]["lastOperationTime"].endswith("Z")
    everything = call(server, "GET", f"{BASE}/entities?top=1000").json()
    assert any(e["entityId"]["key"] == key and "state" not in e for e in everything)
    error_of(call(server, "GET", f"{BASE}/entities/counter/{uid('none')}"), 404, "NotFound")


def test_metrics_in_prometheus_format(server, sdk_worker):
    start(server, "echo_orchestration", input="m")
    time.sleep(0.3)
    r = call(server, "GET", "/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.body.decode()
    for name in ['cairn_instances{status="Completed"}', "cairn_work_queue_length{", "cairn_work_queue_oldest_seconds{",
                 "cairn_log_sync_seconds_bucket{", "cairn_log_batch_records_bucket{", "cairn_cache_hit_ratio",
                 "cairn_cache_bytes{", 'cairn_cache_lookups_total{partition="0",result="hit"}', "cairn_episodes_total{",
                 "cairn_activities_total{"]:
        assert name in text, name
    completed = [l for l in text.splitlines() if l.startswith('cairn_instances{status="Completed"}')]
    assert float(completed[0].split()[-1]) >= 1
    stats = call(server, "GET", "/api/stats").json()
    assert stats["partitions"] == 4 and len(stats["queues"]) == 4
    assert stats["totals"]["episodes"] >= 1 and stats["instancesByStatus"]["Completed"] >= 1


def test_openapi_document_matches_the_live_routes(server):
    doc = call(server, "GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    fill = {"instanceId": "openapi-probe", "name": "openapi_probe", "eventName": "e",
            "entityName": "counter", "entityKey": "openapi-probe"}
    checked = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            url = path
            for k, v in fill.items():
                url = url.replace("{" + k + "}", v)
            assert "{" not in url, url
            if "op" in [p["name"] for p in op.get("parameters", [])]:
                url += "?op=add"
            r = call(server, method.upper(), url, body=1 if method in ("post",) else None)
            assert r.status != 405, f"{method.upper()} {path} is documented but not served"
            if r.status == 404:
                assert r.json()["error"] != "NoSuchRoute", f"{method.upper()} {path} is documented but not routed"
            assert str(r.status) in op["responses"], f"{method.upper()} {path} answered {r.status}, not documented: {r.body[:200]}"
            checked += 1
    assert checked >= 20
    # And the other way: every route answers something other than "no such route" only if documented.
    undocumented = [("GET", f"{BASE}/instance"), ("POST", f"{BASE}/orchestrators"), ("GET", "/api/nothing")]
    for method, url in undocumented:
        error_of(call(server, method, url), 404, "NoSuchRoute")


def test_bearer_token_guards_every_management_route():
    s = CairnServer("--auth-token", "t0k3n-for-tests").start()
    try:
        doc = call(s, "GET", "/openapi.json")
        assert doc.status == 200
        for path in ["/", "/healthz", "/assets/app.js", "/assets/app.css"]:
            assert call(s, "GET", path).status == 200, path
        for method, path in [("GET", f"{BASE}/instances"), ("POST", f"{BASE}/orchestrators/chaining"),
                             ("GET", "/metrics"), ("GET", "/api/stats"), ("DELETE", f"{BASE}/instances/x"),
                             ("GET", f"{BASE}/entities")]:
            r = call(s, method, path)
            msg = error_of(r, 401, "Unauthorized")
            assert "Bearer" in msg and r.headers["WWW-Authenticate"] == "Bearer"
            error_of(call(s, method, path, headers={"Authorization": "Bearer wrong"}), 401, "Unauthorized")
        ok = {"Authorization": "Bearer t0k3n-for-tests"}
        # The scheme name is case-insensitive.
        assert call(s, "GET", f"{BASE}/instances", headers={"Authorization": "bearer t0k3n-for-tests"}).status == 200
        assert call(s, "GET", f"{BASE}/instances", headers=ok).status == 200
        assert call(s, "GET", "/metrics", headers=ok).status == 200
        r = call(s, "POST", f"{BASE}/orchestrators/chaining", headers=ok)
        assert r.status == 202
        assert "t0k3n" not in s.log()
    finally:
        s.stop()


def test_scale_recommendation_follows_the_backlog():
    """`/api/scale` (and its gauges in /metrics) asks for no worker and no node while the hub is
    idle, one worker per `--scale-backlog-per-worker` of backlog while work waits for a worker,
    and nothing again once the backlog is gone; a cluster node keeps a standby. Instances
    terminated while waiting for a worker leave the work queue at once."""
    s = CairnServer("--scale-backlog-per-worker", "40").start()
    nodes_when_busy = 2 if os.environ.get("CAIRN_CLUSTER_NATS") else 1
    try:
        scale = call(s, "GET", "/api/scale").json()
        assert scale["idle"] is True, scale
        assert (scale["workers"]["recommended"], scale["nodes"]["recommended"]) == (0, 0), scale
        ids = [f"scale-{uuid.uuid4().hex[:8]}-{i}" for i in range(100)]
        for iid in ids:
            start(s, "nobody_runs_this", instance_id=iid)
        deadline = time.time() + 30
        while time.time() < deadline:
            scale = call(s, "GET", "/api/scale").json()
            if scale["backlog"]["instances"] == 100:
                break
            time.sleep(0.05)
        assert scale["backlog"]["instances"] == 100, scale
        assert scale["workers"] == {"recommended": 3, "connected": 0,
                                    "reason": "a backlog of 100 at 40 per worker"}, scale
        assert scale["nodes"]["recommended"] == nodes_when_busy, scale
        assert scale["idle"] is False and scale["policy"]["backlogPerWorker"] == 40, scale
        metrics = call(s, "GET", "/metrics").body.decode()
        assert "cairn_scale_recommended_workers 3" in metrics, metrics
        assert f"cairn_scale_recommended_nodes {nodes_when_busy}" in metrics
        assert "cairn_scale_backlog 100" in metrics
        assert call(s, "GET", "/api/workers").json()["unserved"][0]["waiting"] == 100
        for iid in ids:
            assert call(s, "POST", f"{BASE}/instances/{iid}/terminate").status == 202
        # Terminated while they waited for a worker: their episodes are withdrawn from the
        # queue, so nothing waits any more and no worker will be handed them.
        deadline = time.time() + 30
        while time.time() < deadline:
            scale = call(s, "GET", "/api/scale").json()
            if scale["idle"] and scale["backlog"]["waiting"] == 0:
                break
            time.sleep(0.05)
        assert scale["idle"] and scale["workers"]["recommended"] == 0, scale
        assert scale["backlog"]["waiting"] == 0, scale
        assert call(s, "GET", "/api/workers").json()["unserved"] == []
        queued = [line for line in call(s, "GET", "/metrics").body.decode().splitlines()
                  if line.startswith("cairn_work_queue_length")]
        assert queued and all(line.endswith(" 0") for line in queued), queued
    finally:
        s.stop()
