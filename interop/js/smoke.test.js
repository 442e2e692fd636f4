// Smoke test: the official Durable Task JavaScript SDK (@microsoft/durabletask-js) against a
// real `cairn serve` started here. Run with CAIRN_BIN pointing at the cairn binary.
const { test } = require("node:test");
const assert = require("node:assert");
const { spawn } = require("node:child_process");
const net = require("node:net");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { TaskHubGrpcClient, TaskHubGrpcWorker, whenAll, OrchestrationStatus, NoOpLogger } = require("@microsoft/durabletask-js");

function freePort() {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitForPort(port, proc) {
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`cairn serve exited with ${proc.exitCode}`);
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1", () => { s.end(); resolve(true); });
      s.on("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("cairn serve did not start listening");
}

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
  const bin = process.env.CAIRN_BIN || path.join(__dirname, "../../target/debug/cairn");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cairn-js-"));
  const port = await freePort();
  const proc = spawn(bin, ["serve", "--data", path.join(dir, "data"), "--grpc", `127.0.0.1:${port}`, "--http", "127.0.0.1:0", "--partitions", "4"], {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  try {
    await waitForPort(port, proc);
    const address = `localhost:${port}`;
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
    proc.kill("SIGINT");
    await new Promise((r) => proc.once("exit", r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
