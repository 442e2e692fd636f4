// Helpers shared by the JS interop tests: start a real `cairn serve` (CAIRN_BIN, default the
// debug build) on a free gRPC port with a fresh temp data directory, and stop it again.
const { spawn } = require("node:child_process");
const net = require("node:net");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

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

/**
 * Starts `cairn serve` with its own data directory and free ports; `extraArgs` are appended
 * (e.g. ["--work-item-lease", "2s"]). Resolves to { address, port, proc, dir, stop }, where
 * `stop()` kills the server (SIGINT, then SIGKILL after 10 s) and removes the directory.
 */
async function startCairn(extraArgs = []) {
  const bin = process.env.CAIRN_BIN || path.join(__dirname, "../../target/debug/cairn");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cairn-js-"));
  const port = await freePort();
  const proc = spawn(
    bin,
    ["serve", "--data", path.join(dir, "data"), "--grpc", `127.0.0.1:${port}`, "--http", "127.0.0.1:0", "--partitions", "4", ...extraArgs],
    { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RUST_LOG: "warn" } },
  );
  const exited = new Promise((r) => proc.once("exit", r));
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill("SIGINT");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 10000);
      await exited;
      clearTimeout(timer);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitForPort(port, proc);
  } catch (e) {
    await stop();
    throw e;
  }
  return { address: `localhost:${port}`, port, proc, dir, stop };
}

module.exports = { freePort, waitForPort, startCairn };
