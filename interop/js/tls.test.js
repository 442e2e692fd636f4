// The JavaScript SDK on a Cairn that faces a network: TLS on the gRPC front (a private CA given
// as `credentials`) and the bearer token as `authorization` metadata, the README's settings.
const { test } = require("node:test");
const assert = require("node:assert");
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const { TaskHubGrpcClient, TaskHubGrpcWorker, OrchestrationStatus, NoOpLogger } = require("@microsoft/durabletask-js");
const { startCairn } = require("./cairn");

const hello = async (_ctx, name) => `Hello ${name}!`;
const chain = async function* (ctx) {
  const out = [];
  for (const city of ["Tokyo", "Seattle"]) {
    out.push(yield ctx.callActivity(hello, city));
  }
  return out;
};

/** A private CA and a server certificate it signed for localhost, made with `openssl`. */
function makeCertificates(dir) {
  const f = (n) => path.join(dir, n);
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  const run = (args) => execFileSync("openssl", args, { stdio: "pipe" });
  run(["req", "-x509", ...ec, "-keyout", f("ca.key"), "-out", f("ca.pem"), "-days", "2", "-subj", "/CN=Cairn JS test CA"]);
  run(["req", ...ec, "-keyout", f("key.pem"), "-out", f("req.csr"), "-subj", "/CN=localhost"]);
  fs.writeFileSync(f("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  run(["x509", "-req", "-in", f("req.csr"), "-CA", f("ca.pem"), "-CAkey", f("ca.key"), "-CAcreateserial", "-out", f("cert.pem"), "-days", "2", "-extfile", f("ext")]);
  return { ca: f("ca.pem"), cert: f("cert.pem"), key: f("key.pem") };
}

test("the JavaScript SDK runs over TLS with a bearer token", async () => {
  const certDir = fs.mkdtempSync(path.join(require("node:os").tmpdir(), "cairn-js-tls-"));
  const { ca, cert, key } = makeCertificates(certDir);
  const cairn = await startCairn(["--tls-cert", cert, "--tls-key", key, "--auth-token", "js-t0ken"]);
  const credentials = grpc.credentials.createSsl(fs.readFileSync(ca));
  const metadataGenerator = async () => {
    const m = new grpc.Metadata();
    m.set("authorization", "Bearer js-t0ken");
    return m;
  };
  const common = { hostAddress: cairn.address, credentials, metadataGenerator, logger: new NoOpLogger() };
  const worker = new TaskHubGrpcWorker(common);
  worker.addOrchestrator(chain);
  worker.addActivity(hello);
  const client = new TaskHubGrpcClient(common);
  // Right certificate, no token: refused by Cairn, not by TLS.
  const anonymous = new TaskHubGrpcClient({ hostAddress: cairn.address, credentials, logger: new NoOpLogger() });
  let started = false;
  try {
    await assert.rejects(anonymous.getOrchestrationState("nobody"), (e) => {
      assert.strictEqual(e.code, grpc.status.UNAUTHENTICATED, String(e));
      return true;
    });
    await worker.start();
    started = true;
    const id = await client.scheduleNewOrchestration(chain);
    const state = await client.waitForOrchestrationCompletion(id, true, 60);
    assert.strictEqual(state.runtimeStatus, OrchestrationStatus.COMPLETED);
    assert.deepStrictEqual(JSON.parse(state.serializedOutput), ["Hello Tokyo!", "Hello Seattle!"]);
  } finally {
    if (started) await worker.stop();
    await client.stop();
    await anonymous.stop();
    await cairn.stop();
    fs.rmSync(certDir, { recursive: true, force: true });
  }
});
