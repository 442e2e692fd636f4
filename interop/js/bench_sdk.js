// SDK-path benchmark: the official Durable Task JavaScript SDK (@microsoft/durabletask-js)
// worker and client, in this one Node process, against a running Durable Task gRPC backend
// (`cairn serve` or the Python SDK's in-memory backend, interop/python/inmemory_backend.py).
// Same scenarios and JSON-lines format as interop/python/bench_sdk.py; interop/bench_sdk.sh
// starts the backends and runs both.
//
//   node interop/js/bench_sdk.js --address 127.0.0.1:PORT --backend-pid PID --backend-name cairn \
//        [--scenarios abcd] [--chain-n 200] [--chain-steps 10] [--tput-chains 2000] \
//        [--tput-inflight 100] [--fanout 1000] [--fanout-runs 3] [--signals 2000] \
//        [--signal-concurrency 20] [--poll-ms 10] [--timeout 600] [--json] [--progress]
//
// Prints one table row per scenario to stdout (--json: one JSON object per line instead;
// --progress: also the table row to stderr).
//
// CPU: this process's from process.cpuUsage() (all threads), the backend's from
// /proc/<backend-pid>/stat (utime+stime); without --backend-pid the backend's CPU is not reported.
"use strict";
const fs = require("node:fs");
const crypto = require("node:crypto");
const {
  TaskHubGrpcClient, TaskHubGrpcWorker, whenAll, OrchestrationStatus, EntityInstanceId,
} = require("@microsoft/durabletask-js");

const SDK_VERSION = require("@microsoft/durabletask-js/package.json").version;

// The SDK's default ConsoleLogger prints a line per work item; keep errors only.
const quietLogger = {
  error: (msg, ...rest) => console.error(`[durabletask] ${msg}`, ...rest),
  warn: () => {},
  info: () => {},
  debug: () => {},
};

// --- workflows ------------------------------------------------------------------------------

const noop = async (_ctx, x) => x;

const chain = async function* (ctx, steps) {
  let x = 0;
  for (let i = 0; i < steps; i++) {
    x = yield ctx.callActivity(noop, x + 1);
  }
  return x;
};

const fanout = async function* (ctx, n) {
  const results = yield whenAll(Array.from({ length: n }, (_, i) => ctx.callActivity(noop, i)));
  return results.length;
};

class Counter {
  run(op) {
    let state = op.state.getState(0) ?? 0;
    if (op.name === "add") {
      state += op.getInput();
      op.state.setState(state);
    }
    return state;
  }
}

// --- measurement ----------------------------------------------------------------------------

const CLK_TCK = 100; // USER_HZ; the kernel exports utime/stime in these units on Linux

function backendCpu(pid) {
  if (!pid) return NaN;
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

function selfCpu() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

async function measure(pid, body) {
  const t0 = performance.now();
  const sdk0 = selfCpu();
  const be0 = backendCpu(pid);
  const row = await body(t0);
  const wall = (performance.now() - t0) / 1000;
  const sdk = selfCpu() - sdk0;
  const be = backendCpu(pid) - be0;
  return {
    ...row, rate: row.ops / wall, wall_s: wall, sdk_cpu_s: sdk, backend_cpu_s: be,
    sdk_cpu_share: sdk / wall, backend_cpu_share: be / wall,
  };
}

function median(values) {
  const v = [...values].sort((a, b) => a - b);
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

function percentile(values, q) {
  if (!values.length) return NaN;
  const v = [...values].sort((a, b) => a - b);
  return v[Math.min(v.length - 1, Math.floor(q * v.length))];
}

// --- scenarios ------------------------------------------------------------------------------

async function completed(client, id, timeout) {
  const st = await client.waitForOrchestrationCompletion(id, true, timeout);
  if (!st || st.runtimeStatus !== OrchestrationStatus.COMPLETED) {
    throw new Error(`${id}: ${st && st.runtimeStatus} ${JSON.stringify(st && st.failureDetails)}`);
  }
  return st;
}

async function runChain(client, steps, timeout) {
  const t = performance.now();
  const st = await completed(client, await client.scheduleNewOrchestration(chain, steps), timeout);
  const ms = performance.now() - t;
  if (JSON.parse(st.serializedOutput) !== steps) throw new Error(`chain returned ${st.serializedOutput}`);
  return ms;
}

async function chainLatency(client, a, _t0) {
  const lat = [];
  for (let i = 0; i < a.chainN; i++) lat.push(await runChain(client, a.chainSteps, a.timeout));
  return {
    scenario: "a chain-latency", ops: a.chainN, unit: "chains",
    p50_ms: percentile(lat, 0.5), p99_ms: percentile(lat, 0.99), steps: a.chainSteps,
  };
}

async function chainTput(client, a, _t0) {
  const lat = [];
  let remaining = a.tputChains;
  const loop = async () => {
    while (remaining > 0) {
      remaining--;
      lat.push(await runChain(client, a.chainSteps, a.timeout));
    }
  };
  await Promise.all(Array.from({ length: Math.min(a.tputInflight, a.tputChains) }, loop));
  const steps = a.tputChains * a.chainSteps;
  return {
    scenario: "b chain-tput", ops: steps, unit: "activity steps",
    p50_ms: percentile(lat, 0.5), p99_ms: percentile(lat, 0.99),
    chains: a.tputChains, steps: a.chainSteps, inflight: a.tputInflight,
  };
}

async function fanOut(client, a, _t0) {
  const runs = [];
  for (let i = 0; i < a.fanoutRuns; i++) {
    const t = performance.now();
    const st = await completed(client, await client.scheduleNewOrchestration(fanout, a.fanout), a.timeout);
    runs.push(performance.now() - t);
    if (JSON.parse(st.serializedOutput) !== a.fanout) throw new Error(`fan-out returned ${st.serializedOutput}`);
  }
  const ops = a.fanout * a.fanoutRuns;
  return {
    scenario: "c fan-out", ops, unit: "activities",
    p50_ms: median(runs), p99_ms: Math.max(...runs), fanout: a.fanout, runs_ms: runs,
  };
}

async function entitySignals(client, a, t0) {
  const id = new EntityInstanceId("counter", crypto.randomBytes(6).toString("hex"));
  const n = a.signals;
  const conc = Math.max(1, Math.min(a.signalConcurrency, n));
  const lat = [];
  let next = 0;
  const sender = async () => {
    while (next < n) {
      next++;
      const t = performance.now();
      await client.signalEntity(id, "add", 1);
      lat.push(performance.now() - t);
    }
  };
  await Promise.all(Array.from({ length: conc }, sender));
  const acked = (performance.now() - t0) / 1000;
  const deadline = Date.now() + a.timeout * 1000;
  let state;
  for (;;) {
    const meta = await client.getEntity(id, true);
    state = meta && meta.state;
    if (state === n) break;
    if (Date.now() > deadline) throw new Error(`${id} reached ${state}, not ${n}`);
    await new Promise((r) => setTimeout(r, a.pollMs));
  }
  return {
    scenario: "d entity-signals", ops: n, unit: "signals",
    p50_ms: percentile(lat, 0.5), p99_ms: percentile(lat, 0.99), all_acked_s: acked, concurrency: conc,
  };
}

const SCENARIOS = { a: chainLatency, b: chainTput, c: fanOut, d: entitySignals };

// --- main -----------------------------------------------------------------------------------

function parseArgs(argv) {
  const a = {
    address: null, backendPid: 0, backendName: null, scenarios: "abcd", chainN: 200, chainSteps: 10,
    tputChains: 2000, tputInflight: 100, fanout: 1000, fanoutRuns: 3, signals: 2000,
    signalConcurrency: 20, pollMs: 10, timeout: 600, json: false, progress: false,
  };
  for (let i = 2; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === "--json") { a.json = true; continue; }
    if (flag === "--progress") { a.progress = true; continue; }
    if (flag === "-h" || flag === "--help") {
      console.log(fs.readFileSync(__filename, "utf8").split("\n").filter((l) => l.startsWith("//")).join("\n"));
      process.exit(0);
    }
    const key = flag.replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in a) || i + 1 >= argv.length) throw new Error(`unknown or incomplete option ${flag}`);
    const v = argv[++i];
    a[key] = typeof a[key] === "number" || a[key] === 0 ? Number(v) : v;
  }
  if (!a.address) throw new Error("--address HOST:PORT is required");
  a.backendName = a.backendName || a.address;
  return a;
}

function tableLine(r) {
  const n = (x, w, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : "-").padStart(w);
  const pct = (x, w) => `${Number.isFinite(x) ? (x * 100).toFixed(0) : "-"}%`.padStart(w);
  return `${r.sdk.padEnd(7)} ${r.backend.padEnd(10)} ${r.scenario.padEnd(17)} ${String(r.ops).padStart(7)} `
    + `${r.unit.padEnd(15)} ${n(r.wall_s, 8, 2)} ${n(r.rate, 9)} ${n(r.p50_ms, 9)} ${n(r.p99_ms, 9)} `
    + `${n(r.sdk_cpu_s, 10, 2)} ${pct(r.sdk_cpu_share, 6)} ${n(r.backend_cpu_s, 14, 2)} ${pct(r.backend_cpu_share, 7)}`;
}

async function main() {
  const a = parseArgs(process.argv);
  const worker = new TaskHubGrpcWorker({ hostAddress: a.address, logger: quietLogger });
  worker.addOrchestrator(chain);
  worker.addOrchestrator(fanout);
  worker.addActivity(noop);
  worker.addNamedEntity("counter", () => new Counter());
  await worker.start();
  const client = new TaskHubGrpcClient({ hostAddress: a.address, logger: quietLogger });
  const rows = [];
  try {
    for (let i = 0; i < 3; i++) await runChain(client, a.chainSteps, a.timeout); // warm-up
    for (const key of a.scenarios) {
      if (!SCENARIOS[key]) continue;
      const row = await measure(a.backendPid, (t0) => SCENARIOS[key](client, a, t0));
      const full = { sdk: "js", backend: a.backendName, sdk_version: SDK_VERSION, ...row };
      rows.push(full);
      console.log(a.json ? JSON.stringify(full) : tableLine(full));
      if (a.progress) console.error(tableLine(full));
    }
  } finally {
    await worker.stop();
    await client.stop();
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(e);
  process.exit(1);
});
