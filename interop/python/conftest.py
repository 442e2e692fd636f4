"""Fixtures: a real `cairn serve` process (started by the tests) and SDK workers/clients.

The binary comes from $CAIRN_BIN (the Rust test that drives this suite sets it) or
target/debug/cairn. With $CAIRN_CLUSTER_NATS (NATS server URLs), every server runs in cluster
mode with its hub in JetStream: one hub per data directory, so a restart on the same directory
finds the same hub.
"""
import hashlib
import os
import pathlib
import socket
import subprocess
import tempfile
import time

import pytest
from durabletask import client, worker

import workflows

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CairnServer:
    """A `cairn serve` child process on a free port and a fresh data directory."""

    def __init__(self, *extra_args: str, data_dir: str | None = None, hub: str | None = None):
        self.bin = os.environ.get("CAIRN_BIN", str(ROOT / "target" / "debug" / "cairn"))
        self.tmp = tempfile.TemporaryDirectory(prefix="cairn-interop-")
        self.data = data_dir or os.path.join(self.tmp.name, "data")
        self.port = free_port()
        self.address = f"localhost:{self.port}"
        self.http_port = free_port()
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.extra = list(extra_args)
        nats = os.environ.get("CAIRN_CLUSTER_NATS")
        if nats:
            # Servers given the same `hub` are nodes of one hub, sharing its partitions.
            hub = hub or "py-" + hashlib.sha1(self.data.encode()).hexdigest()[:12]
            self.extra += ["--cluster", nats, "--hub", hub]
        self.proc = None
        self.log_path = os.path.join(self.tmp.name, "serve.log")

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.bin, "serve", "--data", self.data, "--grpc", f"127.0.0.1:{self.port}",
             "--http", f"127.0.0.1:{self.http_port}", "--partitions", "4", *self.extra],
            stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn,cairn=info", "NO_COLOR": "1"},
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cairn serve exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"cairn serve did not start listening: {self.log()}")

    def kill(self):
        """SIGKILL: no flush, no checkpoint."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log(self) -> str:
        try:
            return open(self.log_path, encoding="utf-8", errors="replace").read()[-4000:]
        except OSError:
            return ""


def make_certificates(directory: str) -> tuple[str, str, str]:
    """A private CA and a server certificate it signed for localhost and 127.0.0.1, made with
    the `openssl` tool: (CA certificate, server certificate, server key) paths."""
    d = pathlib.Path(directory)
    ca_key, ca, key, csr, cert, ext = (str(d / n) for n in
                                       ["ca.key", "ca.pem", "key.pem", "req.csr", "cert.pem", "ext"])
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    quiet = {"check": True, "capture_output": True}
    subprocess.run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
                    "-subj", "/CN=Cairn interop CA"], **quiet)
    subprocess.run(["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
                   **quiet)
    pathlib.Path(ext).write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
                    "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext], **quiet)
    return ca, cert, key


def new_worker(address: str, metadata: list[tuple[str, str]] | None = None) -> worker.TaskHubGrpcWorker:
    w = worker.TaskHubGrpcWorker(host_address=address, metadata=metadata)
    for o in workflows.ORCHESTRATORS:
        w.add_orchestrator(o)
    for a in workflows.ACTIVITIES:
        w.add_activity(a)
    for entity, name in workflows.ENTITIES:
        w.add_entity(entity, name=name)
    return w


@pytest.fixture(scope="session")
def server():
    s = CairnServer().start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def sdk_worker(server):
    w = new_worker(server.address)
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def dt(server, sdk_worker) -> client.TaskHubGrpcClient:
    return client.TaskHubGrpcClient(host_address=server.address)
