"""The README's examples, kept true: the code blocks that mirror files under examples/ must match
them byte for byte, and the examples must run, as written, against a real `cairn serve` on its
default ports (gRPC 4001, HTTP 8080), because that is how the README tells a newcomer to run them.

The tests run one after another in this module; they share the one server on the default ports.
"""
import difflib
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import CairnServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
HELLO = "examples/python/hello.py"
APPROVAL_WORKER = "examples/python/approval_worker.py"
APPROVAL_SCRIPT = "examples/http/approval.sh"
# Files whose complete text the README shows. Each block is announced by a
# `<!-- mirrors PATH ... -->` line right above its opening fence.
MIRRORED = {HELLO, APPROVAL_WORKER}
GRPC_PORT = 4001
HTTP_PORT = 8080


def readme_blocks() -> list[tuple[str | None, str, int]]:
    """Every fenced block in the README: (mirrored path or None, text, line number of the fence)."""
    lines = README.read_text(encoding="utf-8").split("\n")
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            start = i
            body = []
            i += 1
            while i < len(lines) and lines[i] != "```":
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"README.md: the block opened at line {start + 1} is never closed"
            prev = lines[start - 1] if start > 0 else ""
            m = re.match(r"<!-- mirrors ([^\s,]+)", prev)
            blocks.append((m.group(1) if m else None, "".join(line + "\n" for line in body), start + 1))
        i += 1
    return blocks


def test_readme_blocks_match_their_files():
    mirrored = [(path, text, line) for path, text, line in readme_blocks() if path]
    shown = {path for path, _, _ in mirrored}
    missing = MIRRORED - shown
    assert not missing, (
        f"README.md no longer shows {sorted(missing)} (the `<!-- mirrors PATH -->` line above its "
        "code block is gone)"
    )
    for path, text, line in mirrored:
        file = ROOT / path
        assert file.exists(), f"README.md line {line} mirrors {path}, which does not exist"
        actual = file.read_text(encoding="utf-8")
        if text != actual:
            diff = "".join(difflib.unified_diff(
                actual.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=path, tofile=f"README.md (block at line {line})"))
            pytest.fail(
                f"README.md's code block at line {line} has drifted from {path}: make them the "
                f"same again (copy the file into the block, or the block into the file)\n{diff}")


def curl_commands(text: str, prompt: str) -> list[str]:
    """The curl commands in `text` (lines starting with `prompt` + "curl"), continuation lines
    joined and whitespace collapsed."""
    out = []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith(prompt + "curl "):
            continue
        cmd = line[len(prompt):]
        while cmd.endswith("\\"):
            i += 1
            cmd = cmd[:-1] + " " + lines[i]
        out.append(" ".join(cmd.split()))
    return out


def test_approval_script_sends_the_readmes_requests():
    shown = curl_commands(README.read_text(encoding="utf-8"), "$ ")
    assert len(shown) == 4, f"expected the README's curl session to have 4 requests: {shown}"
    script = curl_commands((ROOT / APPROVAL_SCRIPT).read_text(encoding="utf-8"), "")
    assert script == shown, (
        f"{APPROVAL_SCRIPT} no longer sends the requests the README shows, in that order\n"
        f"README: {shown}\nscript: {script}")


def port_in_use(port: int) -> str | None:
    """Why `port` cannot be used for the README's server, or None if it is free."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        # `localhost` may resolve to either; something answering on one would take the
        # examples' connections.
        try:
            with socket.socket(family) as s:
                s.settimeout(0.5)
                if s.connect_ex((host, port)) == 0:
                    return f"something is listening on [{host}]:{port}"
        except OSError:
            pass
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return f"127.0.0.1:{port} cannot be bound ({e})"
    return None


@pytest.fixture(scope="module")
def default_server():
    for port in (GRPC_PORT, HTTP_PORT):
        why = port_in_use(port)
        if why:
            pytest.skip(f"the README's examples use the default ports {GRPC_PORT} and {HTTP_PORT}, "
                        f"and {why}")
    server = CairnServer()
    server.port, server.address = GRPC_PORT, f"localhost:{GRPC_PORT}"
    server.http_port, server.http = HTTP_PORT, f"http://127.0.0.1:{HTTP_PORT}"
    try:
        server.start()
    except RuntimeError as e:
        if "in use" in str(e).lower():
            pytest.skip(f"the default ports were taken while cairn serve started: {e}")
        raise
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", HTTP_PORT), timeout=0.2).close()
            break
        except OSError:
            assert time.time() < deadline, f"cairn serve's HTTP port never opened: {server.log()}"
            time.sleep(0.05)
    yield server
    server.stop()
    server.tmp.cleanup()


def python(path: str) -> list[str]:
    # The interpreter running this suite is the one with durabletask installed.
    return [sys.executable, str(ROOT / path)]


def test_hello_py_runs_and_exits(default_server):
    try:
        r = subprocess.run(python(HELLO), cwd=ROOT, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{HELLO} did not exit within 60 s (is its worker stopped?)\n"
                    f"stdout: {e.stdout}\nstderr: {e.stderr}")
    assert r.returncode == 0, f"{HELLO} exited with {r.returncode}\n{r.stderr}\n{default_server.log()}"
    assert r.stdout == 'COMPLETED "Hello, Cairn!"\n', r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    # The README shows this very output.
    assert f"$ python {HELLO}\n{r.stdout}" in README.read_text(encoding="utf-8")


class Worker:
    """examples/python/approval_worker.py as a child process."""

    def __init__(self, tmp: pathlib.Path):
        self.out, self.err = tmp / "worker.out", tmp / "worker.err"
        self.proc = subprocess.Popen(python(APPROVAL_WORKER), cwd=ROOT,
                                     stdout=open(self.out, "wb"), stderr=open(self.err, "wb"))
        deadline = time.time() + 30
        while "approval worker running" not in self.out.read_text():
            assert self.proc.poll() is None, f"{APPROVAL_WORKER} exited early:\n{self.stderr()}"
            assert time.time() < deadline, f"{APPROVAL_WORKER} did not start:\n{self.stderr()}"
            time.sleep(0.05)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stop(self, sig: int) -> None:
        """Sends `sig` and checks that the worker stops cleanly."""
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{APPROVAL_WORKER} did not stop within 45 s of signal {sig}:\n{self.stderr()}")
        assert rc == 0, f"{APPROVAL_WORKER} exited with {rc} on signal {sig}:\n{self.stderr()}"
        assert "Traceback" not in self.stderr(), self.stderr()
        assert "Worker shutdown completed" in self.stderr(), self.stderr()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_approval_session_over_http(default_server, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail(f"curl is not installed, and {APPROVAL_SCRIPT} (the README's HTTP session) needs "
                    "it: apt-get install curl")
    worker = Worker(tmp_path)
    try:
        try:
            r = subprocess.run(["bash", str(ROOT / APPROVAL_SCRIPT)], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{APPROVAL_SCRIPT} did not finish within 60 s\n{e.stdout}\n{e.stderr}")
        out = r.stdout
        context = f"{out}\n{r.stderr}\nworker:\n{worker.stderr()}\nserver:\n{default_server.log()}"
        assert r.returncode == 0, f"{APPROVAL_SCRIPT} exited with {r.returncode}\n{context}"
        statuses = re.findall(r"^HTTP/1\.1 (\d+)", out, flags=re.M)
        # start, status while running, raise event, status once completed
        assert statuses == ["202", "202", "202", "200"], f"{statuses}\n{context}"
        assert '"customStatus":"waiting for approval"' in out, context
        final = out.rstrip().rsplit("\n", 1)[-1]
        assert '"runtimeStatus":"Completed"' in final and '"output":"approved by alice"' in final, context
        worker.stop(signal.SIGTERM)
    finally:
        worker.kill()


def test_approval_worker_stops_on_ctrl_c(default_server, tmp_path):
    worker = Worker(tmp_path)
    try:
        time.sleep(0.5)  # let it connect, so that stopping closes a live stream
        worker.stop(signal.SIGINT)
    finally:
        worker.kill()
