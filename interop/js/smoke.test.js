// Smoke test: the official Durable Task JavaScript SDK (@microsoft/durabletask-js) against a
// real `cairn serve` started here. Run with CAIRN_BIN pointing at the cairn binary.
const { test } = require("node:test");
const assert = require("node:assert");
const { TaskHubGrpcClient, TaskHubGrpcWorker, whenAll, OrchestrationStatus, NoOpLogger } = require("@microsoft/durabletask-js");
const { startCairn } = require("./cairn");

const hello = async (_ctx, name) => `Hello ${name}!`;

const chain = async function* (ctx) {
  const out = [];
  for (const city of ["Tokyo", "Seattle", "London"]) {
    out.push(yield ctx.callActivity(hello, city));
  }
  return out;
};

const fanOut = async function* (ctx, n) {
  const results = yield whenAll(Array.from({ length: n }, (_, i) => ctx.callActivity(hello, `#${i}`)));
  return results.length;
};

const waitForApproval = async function* (ctx) {
  const answer = yield ctx.waitForExternalEvent("approval");
  return `approved by ${answer}`;
};

test("the JavaScript SDK runs orchestrations on Cairn", async () => {
  const cairn = await startCairn();
  try {
    const address = cairn.address;
    const worker = new TaskHubGrpcWorker({ hostAddress: address, logger: new NoOpLogger() });
    worker.addOrchestrator(chain);
    worker.addOrchestrator(fanOut);
    worker.addOrchestrator(waitForApproval);
    worker.addActivity(hello);
    await worker.start();
    const client = new TaskHubGrpcClient({ hostAddress: address, logger: new NoOpLogger() });
    try {
      let id = await client.scheduleNewOrchestration(chain);
      let state = await client.waitForOrchestrationCompletion(id, true, 60);
      assert.strictEqual(state.runtimeStatus, OrchestrationStatus.COMPLETED);
      assert.deepStrictEqual(JSON.parse(state.serializedOutput), ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]);

      id = await client.scheduleNewOrchestration(fanOut, 50);
      state = await client.waitForOrchestrationCompletion(id, true, 60);
      assert.strictEqual(JSON.parse(state.serializedOutput), 50);

      id = await client.scheduleNewOrchestration(waitForApproval);
      await client.waitForOrchestrationStart(id, false, 60);
      await client.raiseOrchestrationEvent(id, "approval", "carol");
      state = await client.waitForOrchestrationCompletion(id, true, 60);
      assert.strictEqual(JSON.parse(state.serializedOutput), "approved by carol");
      assert.strictEqual(state.failureDetails, undefined);
    } finally {
      await worker.stop();
      await client.stop();
    }
  } finally {
    await cairn.stop();
  }
});
