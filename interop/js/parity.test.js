// Parity tests: behaviours of the Durable Task reference backends that `cairn serve` must match,
// checked with the official JavaScript SDK (@microsoft/durabletask-js) and, where the SDK's
// client cannot express the request, with raw gRPC through the SDK's generated stubs.
// Every test starts its own `cairn serve` (CAIRN_BIN) and always stops it.
const { test } = require("node:test");
const assert = require("node:assert");
const grpc = require("@grpc/grpc-js");
const {
  TaskHubGrpcClient,
  TaskHubGrpcWorker,
  OrchestrationStatus,
  NoOpLogger,
  EntityInstanceId,
  VersionMatchStrategy,
  VersionFailureStrategy,
} = require("@microsoft/durabletask-js");
const pb = require("@microsoft/durabletask-js/dist/proto/orchestrator_service_pb");
const { TaskHubSidecarServiceClient } = require("@microsoft/durabletask-js/dist/proto/orchestrator_service_grpc_pb");
const { StringValue } = require("google-protobuf/google/protobuf/wrappers_pb");
const WorkerLogEvents = require("@microsoft/durabletask-js/dist/worker/logs");
const { startCairn } = require("./cairn");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** An entity's state as the client reports it (undefined when it has none). */
async function entityState(client, id) {
  const m = await client.getEntity(id, true);
  return m && m.includesState ? m.state : undefined;
}

/** A silent logger that remembers the SDK's structured log events (to see what a worker got). */
class RecordingLogger extends NoOpLogger {
  constructor() {
    super();
    this.events = [];
  }
  logEvent(level, event, message) {
    this.events.push({ level, ...event, message });
  }
  /** Instance ids of the orchestration work items this worker received. */
  orchestrationItems() {
    return this.events
      .filter((e) => e.eventId === WorkerLogEvents.EVENT_WORK_ITEM_RECEIVED && e.properties?.type === "Orchestrator Request")
      .map((e) => e.properties.instanceId);
  }
  entityItems() {
    return this.events.filter((e) => e.eventId === WorkerLogEvents.EVENT_ENTITY_REQUEST_RECEIVED).map((e) => e.properties.instanceId);
  }
}

/**
 * Runs `body(cairn, scope)` against a fresh `cairn serve`; `scope.worker(...)`/`scope.client()`
 * create SDK objects that are stopped (workers in parallel) before the server, also on failure.
 */
async function withCairn(args, body) {
  const cairn = await startCairn(args);
  const workers = [];
  const clients = [];
  const stubs = [];
  const scope = {
    async worker(options, register) {
      const w = new TaskHubGrpcWorker({ hostAddress: cairn.address, logger: new NoOpLogger(), ...options });
      register(w);
      await w.start();
      workers.push(w);
      return w;
    },
    client() {
      const c = new TaskHubGrpcClient({ hostAddress: cairn.address, logger: new NoOpLogger() });
      clients.push(c);
      return c;
    },
    stub() {
      const s = new TaskHubSidecarServiceClient(cairn.address, grpc.credentials.createInsecure());
      stubs.push(s);
      return s;
    },
  };
  try {
    await body(cairn, scope);
  } finally {
    await Promise.allSettled(workers.map((w) => w.stop()));
    await Promise.allSettled(clients.map((c) => c.stop()));
    for (const s of stubs) s.close();
    await cairn.stop();
  }
}

/** A raw unary gRPC call; rejects with the grpc ServiceError (which carries `.code`). */
function unary(stub, method, request) {
  return new Promise((resolve, reject) => {
    stub[method](request, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

/** Asserts every instance stays PENDING (never picked up by a worker) for `ms`. */
async function assertStaysPending(client, ids, ms) {
  const until = Date.now() + ms;
  do {
    for (const id of ids) {
      const s = await client.getOrchestrationState(id, false);
      assert.ok(s, `instance ${id} exists`);
      assert.strictEqual(OrchestrationStatus[s.runtimeStatus], "PENDING", `instance ${id} must stay PENDING while no matching worker is connected`);
    }
    await sleep(200);
  } while (Date.now() < until);
}

async function completed(client, id, timeoutSeconds = 30) {
  const s = await client.waitForOrchestrationCompletion(id, true, timeoutSeconds);
  assert.ok(s, `instance ${id} exists`);
  assert.strictEqual(
    OrchestrationStatus[s.runtimeStatus],
    "COMPLETED",
    `instance ${id}: ${s.failureDetails ? s.failureDetails.message : "no failure details"}`,
  );
  return JSON.parse(s.serializedOutput);
}

// Two apps sharing one hub: each registers its own orchestration and activity.
function registerA(w) {
  w.addNamedOrchestrator("OrchA", async function* (ctx, n) {
    return yield ctx.callActivity("actA", n);
  });
  w.addNamedActivity("actA", async (_ctx, n) => `A${n}`);
}
function registerB(w) {
  w.addNamedOrchestrator("OrchB", async function* (ctx, n) {
    return yield ctx.callActivity("actB", n);
  });
  w.addNamedActivity("actB", async (_ctx, n) => `B${n}`);
}

test("1a work-item filters: two workers with different registrations share one hub", async () => {
  await withCairn([], async (cairn, scope) => {
    const logA = new RecordingLogger();
    const logB = new RecordingLogger();
    await scope.worker({ workItemFilters: "auto", logger: logA }, registerA);
    await scope.worker({ workItemFilters: "auto", logger: logB }, registerB);
    const client = scope.client();
    const a = await Promise.all(Array.from({ length: 10 }, (_, i) => client.scheduleNewOrchestration("OrchA", i, `a-${i}`)));
    const b = await Promise.all(Array.from({ length: 10 }, (_, i) => client.scheduleNewOrchestration("OrchB", i, `b-${i}`)));
    assert.deepStrictEqual(await Promise.all(a.map((id) => completed(client, id))), a.map((_, i) => `A${i}`));
    assert.deepStrictEqual(await Promise.all(b.map((id) => completed(client, id))), b.map((_, i) => `B${i}`));
    // Each worker saw only its own orchestrations.
    assert.ok(logA.orchestrationItems().length > 0 && logB.orchestrationItems().length > 0);
    assert.deepStrictEqual(logA.orchestrationItems().filter((id) => !id.startsWith("a-")), []);
    assert.deepStrictEqual(logB.orchestrationItems().filter((id) => !id.startsWith("b-")), []);
  });
});

test("1b work-item filters: work no connected worker runs stays pending until one connects", async () => {
  await withCairn([], async (cairn, scope) => {
    const logA = new RecordingLogger();
    await scope.worker({ workItemFilters: "auto", logger: logA }, registerA);
    const client = scope.client();
    const b = await client.scheduleNewOrchestration("OrchB", 7, "b-waits");
    const a = await client.scheduleNewOrchestration("OrchA", 1, "a-runs");
    assert.strictEqual(await completed(client, a), "A1"); // worker A is up and working
    await assertStaysPending(client, [b], 2000);
    assert.deepStrictEqual(logA.orchestrationItems().filter((id) => id === b), [], "worker A must not receive OrchB");
    await scope.worker({ workItemFilters: "auto" }, registerB);
    assert.strictEqual(await completed(client, b), "B7");
  });
});

test("1c work-item filters: versions listed by a Strict worker; no filters means everything", async () => {
  const versioned = async function* (ctx, input) {
    return `${input}@${ctx.version || "none"}`;
  };
  await withCairn([], async (cairn, scope) => {
    const strictLog = new RecordingLogger();
    // Fail (rather than Reject) on a version mismatch: a wrongly dispatched item would FAIL the
    // instance, so the test sees it.
    await scope.worker(
      {
        workItemFilters: "auto",
        logger: strictLog,
        versioning: { version: "2", matchStrategy: VersionMatchStrategy.Strict, failureStrategy: VersionFailureStrategy.Fail },
      },
      (w) => w.addNamedOrchestrator("Versioned", versioned),
    );
    const client = scope.client();
    const v2 = await client.scheduleNewOrchestration("Versioned", "x", { instanceId: "v2", version: "2" });
    const v1 = await client.scheduleNewOrchestration("Versioned", "x", { instanceId: "v1", version: "1" });
    const none = await client.scheduleNewOrchestration("Versioned", "x", { instanceId: "none" });
    assert.strictEqual(await completed(client, v2), "x@2");
    await assertStaysPending(client, [v1, none], 2000);
    assert.deepStrictEqual(strictLog.orchestrationItems().filter((id) => id !== v2), [], "the Strict v2 worker must receive only v2");
    // A worker that sends no filters at all receives everything.
    await scope.worker({}, (w) => w.addNamedOrchestrator("Versioned", versioned));
    assert.strictEqual(await completed(client, v1), "x@1");
    assert.strictEqual(await completed(client, none), "x@none");
  });
});

test("1d work-item filters: entity operations go only to a worker that registers the entity", async () => {
  const counter = () => ({
    run(op) {
      const n = op.state.getState(0) ?? 0;
      if (op.name === "add") op.state.setState(n + op.getInput());
      return op.state.getState(0);
    },
  });
  await withCairn([], async (cairn, scope) => {
    const logX = new RecordingLogger();
    // Filters with orchestrations but no entity entries: no entity work at all.
    await scope.worker({ workItemFilters: "auto", logger: logX }, (w) => w.addNamedOrchestrator("Noop", async function* () { return 1; }));
    const client = scope.client();
    const id = new EntityInstanceId("Counter", "c1");
    await client.signalEntity(id, "add", 5);
    await sleep(2000);
    assert.deepStrictEqual(logX.entityItems(), [], "a worker whose filters list no entities must not receive entity work");
    // No state yet (the SDK reports an entity with only queued operations as missing or stateless).
    const stateBefore = await entityState(client, id);
    assert.ok(stateBefore === undefined || stateBefore === null || stateBefore === "", `no state yet, got ${JSON.stringify(stateBefore)}`);

    // Entity names match case-insensitively: a raw stream asking for "COUNTER" gets the batch
    // for "@counter@c1"; cancelling the stream hands it back to the queue.
    const stub = scope.stub();
    const req = new pb.GetWorkItemsRequest();
    const filters = new pb.WorkItemFilters();
    const ef = new pb.EntityFilter();
    ef.setName("COUNTER");
    filters.addEntities(ef);
    req.setWorkitemfilters(filters);
    const stream = stub.getWorkItems(req);
    stream.on("error", () => {}); // the cancellation below
    const got = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("raw stream with entity filter COUNTER received no entity work in 10 s")), 10000);
      stream.on("data", (item) => {
        const r = item.hasEntityrequest() ? item.getEntityrequest() : item.hasEntityrequestv2() ? item.getEntityrequestv2() : null;
        if (r) {
          clearTimeout(timer);
          resolve(r.getInstanceid());
        }
      });
    });
    stream.cancel();
    assert.strictEqual(got.toLowerCase(), "@counter@c1");

    await scope.worker({ workItemFilters: "auto" }, (w) => w.addNamedEntity("Counter", counter));
    const deadline = Date.now() + 20000;
    let state;
    while (Date.now() < deadline) {
      state = await entityState(client, id);
      if (state === 5) break;
      await sleep(100);
    }
    assert.strictEqual(state, 5, "the worker registering Counter ran the queued operation");
    assert.deepStrictEqual(logX.entityItems(), []);
  });
});

test("2 ORCHESTRATION_STATUS_CANCELED in status lists is accepted and matches nothing", async () => {
  const S = pb.OrchestrationStatus;
  await withCairn([], async (cairn, scope) => {
    await scope.worker({}, (w) => {
      w.addNamedOrchestrator("Echo", async function* (_ctx, x) { return x; });
      w.addNamedOrchestrator("Waits", async function* (ctx) { return yield ctx.waitForExternalEvent("go"); });
    });
    const client = scope.client();
    const done = [];
    for (const i of [1, 2]) {
      const id = await client.scheduleNewOrchestration("Echo", `in${i}`, `done-${i}`);
      assert.strictEqual(await completed(client, id), `in${i}`);
      done.push(id);
    }
    const running = await client.scheduleNewOrchestration("Waits", undefined, "running-1");
    await client.waitForOrchestrationStart(running, false, 30);
    const stub = scope.stub();

    const query = async (statuses) => {
      const q = new pb.InstanceQuery();
      q.setRuntimestatusList(statuses);
      const req = new pb.QueryInstancesRequest();
      req.setQuery(q);
      const res = await unary(stub, "queryInstances", req);
      return res.getOrchestrationstateList().map((s) => s.getInstanceid()).sort();
    };
    assert.deepStrictEqual(await query([S.ORCHESTRATION_STATUS_CANCELED]), []);
    assert.deepStrictEqual(await query([S.ORCHESTRATION_STATUS_CANCELED, S.ORCHESTRATION_STATUS_COMPLETED]), done);
    assert.deepStrictEqual(await query([]), [...done, running].sort(), "an empty list is no filter");

    const listReq = new pb.ListInstanceIdsRequest();
    listReq.setRuntimestatusList([S.ORCHESTRATION_STATUS_CANCELED]);
    assert.deepStrictEqual((await unary(stub, "listInstanceIds", listReq)).getInstanceidsList(), []);

    const purgeReq = new pb.PurgeInstancesRequest();
    const pf = new pb.PurgeInstanceFilter();
    pf.setRuntimestatusList([S.ORCHESTRATION_STATUS_CANCELED]);
    purgeReq.setPurgeinstancefilter(pf);
    assert.strictEqual((await unary(stub, "purgeInstances", purgeReq)).getDeletedinstancecount(), 0);
    assert.deepStrictEqual(await query([S.ORCHESTRATION_STATUS_COMPLETED]), done, "purging CANCELED purged nothing");

    // Reusing a completed instance's id with CANCELED and COMPLETED replaceable.
    const start = new pb.CreateInstanceRequest();
    start.setInstanceid(done[0]);
    start.setName("Echo");
    const input = new StringValue();
    input.setValue(JSON.stringify("again"));
    start.setInput(input);
    const policy = new pb.OrchestrationIdReusePolicy();
    policy.setReplaceablestatusList([S.ORCHESTRATION_STATUS_CANCELED, S.ORCHESTRATION_STATUS_COMPLETED]);
    start.setOrchestrationidreusepolicy(policy);
    assert.strictEqual((await unary(stub, "startInstance", start)).getInstanceid(), done[0]);
    assert.strictEqual(await completed(client, done[0]), "again");

    await client.raiseOrchestrationEvent(running, "go", "ok");
    assert.strictEqual(await completed(client, running), "ok");
  });
});

test("3 terminate, suspend, resume and raise-event on an ended instance succeed and change nothing", async () => {
  await withCairn([], async (cairn, scope) => {
    await scope.worker({}, (w) => {
      w.addNamedOrchestrator("Echo", async function* (_ctx, x) { return x; });
      w.addNamedOrchestrator("Waits", async function* (ctx) { return yield ctx.waitForExternalEvent("go"); });
    });
    const client = scope.client();
    const doneId = await client.scheduleNewOrchestration("Echo", "out", "ended-completed");
    assert.strictEqual(await completed(client, doneId), "out");
    const termId = await client.scheduleNewOrchestration("Waits", undefined, "ended-terminated");
    await client.waitForOrchestrationStart(termId, false, 30);
    await client.terminateOrchestration(termId, "bye");
    const t = await client.waitForOrchestrationCompletion(termId, true, 30);
    assert.strictEqual(OrchestrationStatus[t.runtimeStatus], "TERMINATED");

    for (const id of [doneId, termId]) {
      const before = await client.getOrchestrationState(id, true);
      const historyBefore = (await client.getOrchestrationHistory(id)).length;
      await client.terminateOrchestration(id, "again");
      await client.suspendOrchestration(id);
      await client.resumeOrchestration(id);
      await client.raiseOrchestrationEvent(id, "go", "late");
      await sleep(500);
      const after = await client.getOrchestrationState(id, true);
      assert.strictEqual(OrchestrationStatus[after.runtimeStatus], OrchestrationStatus[before.runtimeStatus], id);
      assert.strictEqual(after.serializedOutput, before.serializedOutput, id);
      assert.strictEqual(after.lastUpdatedAt.getTime(), before.lastUpdatedAt.getTime(), id);
      assert.strictEqual((await client.getOrchestrationHistory(id)).length, historyBefore, `${id}: no events added`);
    }

    await assert.rejects(client.terminateOrchestration("no-such-instance", "x"), (e) => {
      assert.strictEqual(e.code, grpc.status.NOT_FOUND, `terminate of a missing instance: ${e.message}`);
      return true;
    });
  });
});

test("5 work-item lease: an activity held past the lease is dispatched again", async () => {
  let calls = 0;
  let release;
  const hang = new Promise((r) => (release = r));
  await withCairn(["--work-item-lease", "2s"], async (cairn, scope) => {
    try {
      await scope.worker({}, (w) => {
        w.addNamedOrchestrator("Leased", async function* (ctx) { return yield ctx.callActivity("flaky"); });
        w.addNamedActivity("flaky", async () => {
          calls += 1;
          if (calls === 1) {
            await hang;
            return "first";
          }
          return "second";
        });
      });
      const client = scope.client();
      const id = await client.scheduleNewOrchestration("Leased", undefined, "leased-1");
      const started = Date.now();
      assert.strictEqual(await completed(client, id, 20), "second");
      assert.ok(Date.now() - started >= 1500, "re-dispatched only after the lease ran out");
      assert.strictEqual(calls, 2, "the activity ran exactly twice");
      // The first call's completion now arrives with a stale token: refused, nothing changes.
      release();
      await sleep(500);
      assert.strictEqual(await completed(client, id, 5), "second");
      assert.strictEqual(calls, 2);
    } finally {
      release();
    }
  });
});

test("7 latency: a 10-step activity chain through the protocol", async () => {
  await withCairn([], async (cairn, scope) => {
    await scope.worker({}, (w) => {
      w.addNamedActivity("step", async (_ctx, n) => n + 1);
      w.addNamedOrchestrator("Chain10", async function* (ctx) {
        let n = 0;
        for (let i = 0; i < 10; i++) n = yield ctx.callActivity("step", n);
        return n;
      });
    });
    const client = scope.client();
    const run = async () => {
      const t0 = process.hrtime.bigint();
      const id = await client.scheduleNewOrchestration("Chain10");
      assert.strictEqual(await completed(client, id), 10);
      return Number(process.hrtime.bigint() - t0) / 1e6;
    };
    await run(); // warm-up
    const times = [];
    for (let i = 0; i < 20; i++) times.push(await run());
    times.sort((x, y) => x - y);
    const pct = (p) => times[Math.min(times.length - 1, Math.ceil((p / 100) * times.length) - 1)];
    const p50 = pct(50);
    const p99 = pct(99);
    console.log(`10-step chain over gRPC, 20 runs: p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms`);
    assert.ok(p50 < 300, `p50 ${p50.toFixed(1)} ms must be under 300 ms`);
  });
});
