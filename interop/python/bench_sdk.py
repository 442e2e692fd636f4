"""SDK-path benchmark: the official Python SDK (`durabletask`) worker and client driving
`cairn serve` (fsync on, fresh data directory), side by side in the same run with the same SDK
against the SDK's own in-memory test backend (`durabletask.testing`, not durable), which runs in
its own process (interop/python/inmemory_backend.py) so that its CPU is measured apart from the
SDK's.

    .venv/bin/python interop/python/bench_sdk.py [--cairn-bin PATH] [--chain-n 200] [--json]

Scenarios (each against each backend):
  a  chain-latency   --chain-n chains of --chain-steps no-op activities, one at a time:
                     start -> completion p50/p99 per chain
  b  chain-tput      --tput-chains chains of --chain-steps, --tput-inflight in flight:
                     activity steps/s (latency = start -> completion per chain)
  c  fan-out         one orchestration fanning out to --fanout no-op activities, --fanout-runs
                     times: activities/s over all runs, p50/p99 = median/max whole fan-out ms
  d  entity-signals  --signals `add 1` signals from the client to one counter entity,
                     --signal-concurrency outstanding, then polling until its state equals
                     --signals: signals/s up to that point (latency = signal acknowledged)

For each scenario the CPU seconds (utime+stime from /proc/<pid>/stat) of the SDK process (this
process: worker and client) and of the backend process are reported, also as a share of the
scenario's wall time (100% = one core busy).

Without --target, the script starts its own backends: `cairn serve` ($CAIRN_BIN, --cairn-bin,
default target/release/cairn) and the in-memory backend. With --target NAME=HOST:PORT@PID
(repeatable) it uses running backends instead (interop/bench_sdk.sh does that).
`--table FILE...` prints the table for JSON lines written by this script or by
interop/js/bench_sdk.js (`-` reads stdin).
"""
import argparse
import importlib.metadata
import json
import logging
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from durabletask import client, task, worker  # noqa: E402
from durabletask.entities import EntityInstanceId  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
SDK_VERSION = importlib.metadata.version("durabletask")


# --- workflows ---------------------------------------------------------------------------------

def noop(ctx: task.ActivityContext, x):
    return x


def chain(ctx: task.OrchestrationContext, steps: int):
    x = 0
    for _ in range(steps):
        x = yield ctx.call_activity(noop, input=x + 1)
    return x


def fanout(ctx: task.OrchestrationContext, n: int):
    results = yield task.when_all([ctx.call_activity(noop, input=i) for i in range(n)])
    return len(results)


def counter(ctx, value):
    state = ctx.get_state(int, 0)
    if ctx.operation == "add":
        state += value
        ctx.set_state(state)
    return state


# --- measurement -------------------------------------------------------------------------------

def cpu_seconds(pid) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Meter:
    def __init__(self, backend_pid):
        self.backend_pid = backend_pid

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.sdk0 = cpu_seconds("self")
        self.be0 = cpu_seconds(self.backend_pid)
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.sdk_cpu = cpu_seconds("self") - self.sdk0
        self.backend_cpu = cpu_seconds(self.backend_pid) - self.be0
        return False

    def fields(self):
        return {"wall_s": self.wall, "sdk_cpu_s": self.sdk_cpu, "backend_cpu_s": self.backend_cpu,
                "sdk_cpu_share": self.sdk_cpu / self.wall, "backend_cpu_share": self.backend_cpu / self.wall}


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def quiet_logger(name):
    log = logging.getLogger(f"bench-{name}")
    log.setLevel(logging.WARNING)
    if not log.handlers:
        log.addHandler(logging.StreamHandler())
    log.propagate = False
    return log


# --- scenarios ---------------------------------------------------------------------------------

def completed(c, iid, timeout):
    st = c.wait_for_orchestration_completion(iid, timeout=timeout)
    if st is None or st.runtime_status != client.OrchestrationStatus.COMPLETED:
        raise RuntimeError(f"{iid}: {st and st.runtime_status} {st and st.failure_details}")
    return st


def scenario_chain_latency(c, meter, args):
    lat = []
    with meter:
        for _ in range(args.chain_n):
            t = time.perf_counter()
            st = completed(c, c.schedule_new_orchestration(chain, input=args.chain_steps), args.timeout)
            lat.append(time.perf_counter() - t)
            assert st.get_output() == args.chain_steps, st.serialized_output
    return {"scenario": "a chain-latency", "ops": args.chain_n, "unit": "chains",
            "rate": args.chain_n / meter.wall, "p50_ms": percentile(lat, 0.5) * 1000,
            "p99_ms": percentile(lat, 0.99) * 1000, "steps": args.chain_steps}


def scenario_chain_tput(c, meter, args):
    lat, errors = [], []
    lock = threading.Lock()
    remaining = [args.tput_chains]

    def loop():
        while True:
            with lock:
                if remaining[0] == 0 or errors:
                    return
                remaining[0] -= 1
            try:
                t = time.perf_counter()
                completed(c, c.schedule_new_orchestration(chain, input=args.chain_steps), args.timeout)
                d = time.perf_counter() - t
            except Exception as e:  # noqa: BLE001 - reported after the run
                with lock:
                    errors.append(e)
                return
            with lock:
                lat.append(d)

    with meter:
        threads = [threading.Thread(target=loop, daemon=True)
                   for _ in range(min(args.tput_inflight, args.tput_chains))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    if errors:
        raise errors[0]
    steps = args.tput_chains * args.chain_steps
    return {"scenario": "b chain-tput", "ops": steps, "unit": "activity steps", "rate": steps / meter.wall,
            "p50_ms": percentile(lat, 0.5) * 1000, "p99_ms": percentile(lat, 0.99) * 1000,
            "chains": args.tput_chains, "steps": args.chain_steps, "inflight": args.tput_inflight}


def scenario_fanout(c, meter, args):
    runs = []
    with meter:
        for _ in range(args.fanout_runs):
            t = time.perf_counter()
            st = completed(c, c.schedule_new_orchestration(fanout, input=args.fanout), args.timeout)
            runs.append(time.perf_counter() - t)
            assert st.get_output() == args.fanout, st.serialized_output
    ops = args.fanout * args.fanout_runs
    return {"scenario": "c fan-out", "ops": ops, "unit": "activities", "rate": ops / meter.wall,
            "p50_ms": statistics.median(runs) * 1000, "p99_ms": max(runs) * 1000,
            "fanout": args.fanout, "runs_ms": [r * 1000 for r in runs]}


def scenario_entity_signals(c, meter, args):
    e = EntityInstanceId("counter", uuid.uuid4().hex[:12])
    n, conc = args.signals, max(1, min(args.signal_concurrency, args.signals))
    lat, errors = [], []
    lock = threading.Lock()

    def send(count):
        mine = []
        try:
            for _ in range(count):
                t = time.perf_counter()
                c.signal_entity(e, "add", 1)
                mine.append(time.perf_counter() - t)
        except Exception as ex:  # noqa: BLE001
            errors.append(ex)
        with lock:
            lat.extend(mine)

    state = None
    with meter:
        threads = [threading.Thread(target=send, args=(n // conc + (1 if i < n % conc else 0),), daemon=True)
                   for i in range(conc)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        acked = time.perf_counter() - meter.t0
        if errors:
            raise errors[0]
        deadline = time.time() + args.timeout
        while time.time() < deadline:
            meta = c.get_entity(e)
            raw = meta.get_state() if meta is not None else None
            state = json.loads(raw) if raw else None
            if state == n:
                break
            time.sleep(args.poll_ms / 1000)
        else:
            raise RuntimeError(f"{e} reached {state}, not {n}")
    return {"scenario": "d entity-signals", "ops": n, "unit": "signals", "rate": n / meter.wall,
            "p50_ms": percentile(lat, 0.5) * 1000, "p99_ms": percentile(lat, 0.99) * 1000,
            "all_acked_s": acked, "concurrency": conc}


SCENARIOS = {"a": scenario_chain_latency, "b": scenario_chain_tput, "c": scenario_fanout,
             "d": scenario_entity_signals}


def run_target(name, address, pid, args):
    wlog = quiet_logger("worker")
    w = worker.TaskHubGrpcWorker(host_address=address, logger=wlog)
    w.add_orchestrator(chain)
    w.add_orchestrator(fanout)
    w.add_activity(noop)
    w.add_entity(counter, name="counter")
    w.start()
    c = client.TaskHubGrpcClient(host_address=address, logger=quiet_logger("client"))
    rows = []
    try:
        # Warm up the connections and the worker.
        for _ in range(3):
            completed(c, c.schedule_new_orchestration(chain, input=args.chain_steps), args.timeout)
        for key in args.scenarios:
            meter = Meter(pid)
            row = {"sdk": "python", "backend": name, "sdk_version": SDK_VERSION}
            row.update(SCENARIOS[key](c, meter, args))
            row.update(meter.fields())
            rows.append(row)
            emit(row, args)
    finally:
        wlog.setLevel(logging.CRITICAL)  # stop() logs the cancelled work-item stream as an error
        w.stop()
    return rows


# --- output ------------------------------------------------------------------------------------

HEADER = (f"{'sdk':<7} {'backend':<10} {'scenario':<17} {'ops':>7} {'unit':<15} {'wall s':>8} {'ops/s':>9} "
          f"{'p50 ms':>9} {'p99 ms':>9} {'sdk cpu s':>10} {'sdk %':>6} {'backend cpu s':>14} {'back %':>7}")


def table_line(r):
    return (f"{r['sdk']:<7} {r['backend']:<10} {r['scenario']:<17} {r['ops']:>7} {r['unit']:<15} {r['wall_s']:>8.2f} "
            f"{r['rate']:>9.1f} {r['p50_ms']:>9.1f} {r['p99_ms']:>9.1f} {r['sdk_cpu_s']:>10.2f} "
            f"{r['sdk_cpu_share'] * 100:>5.0f}% {r['backend_cpu_s']:>14.2f} {r['backend_cpu_share'] * 100:>6.0f}%")


NOTES = """\
cairn = `cairn serve`, fsync on, fresh data dir; in-memory = durabletask.testing backend (not durable),
own process. ops/s: a chains/s, b activity steps/s, c activities/s, d signals/s. p50/p99: a, b start->
completion per chain; c median/max whole fan-out; d signal acknowledged. cpu: utime+stime during the
scenario; % = cpu s / wall s (100% = one core)."""


def print_table(rows):
    print(HEADER)
    for r in rows:
        print(table_line(r))
    print(NOTES)


def emit(row, args):
    if args.json:
        print(json.dumps(row), flush=True)
    if args.progress:
        print(table_line(row), file=sys.stderr, flush=True)


def read_rows(paths):
    rows = []
    for p in paths:
        f = sys.stdin if p == "-" else open(p)
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    return rows


# --- backends ----------------------------------------------------------------------------------

class InMemoryProcess:
    def __init__(self):
        from conftest import free_port
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, str(pathlib.Path(__file__).parent / "inmemory_backend.py"),
                                      "--port", str(self.port)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"in-memory backend did not start: {line!r}")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cairn-bin", help="cairn binary (default $CAIRN_BIN or target/release/cairn)")
    ap.add_argument("--target", action="append", default=[], metavar="NAME=HOST:PORT@PID",
                    help="use a running backend (repeatable) instead of starting cairn and in-memory")
    ap.add_argument("--backends", default="cairn,in-memory", help="backends to start without --target")
    ap.add_argument("--scenarios", default="abcd", help="subset of abcd")
    ap.add_argument("--chain-n", type=int, default=200, help="(a) chains run one at a time")
    ap.add_argument("--chain-steps", type=int, default=10, help="(a, b) activities per chain")
    ap.add_argument("--tput-chains", type=int, default=2000, help="(b) chains")
    ap.add_argument("--tput-inflight", type=int, default=100, help="(b) chains in flight")
    ap.add_argument("--fanout", type=int, default=1000, help="(c) activities in the fan-out")
    ap.add_argument("--fanout-runs", type=int, default=3, help="(c) fan-outs run one after another")
    ap.add_argument("--signals", type=int, default=2000, help="(d) signals to the counter")
    ap.add_argument("--signal-concurrency", type=int, default=20, help="(d) signals outstanding")
    ap.add_argument("--poll-ms", type=float, default=10, help="(d) entity state poll interval")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for any one thing")
    ap.add_argument("--json", action="store_true", help="one JSON object per line instead of the table")
    ap.add_argument("--progress", action="store_true", help="print each row to stderr as it is measured")
    ap.add_argument("--table", nargs="+", metavar="FILE", help="print the table for JSON-lines files and exit")
    args = ap.parse_args()
    if args.table:
        print_table(read_rows(args.table))
        return
    args.scenarios = [s for s in args.scenarios if s in SCENARIOS]

    rows = []
    if args.target:
        for t in args.target:
            name, rest = t.split("=", 1)
            address, pid = rest.rsplit("@", 1)
            rows += run_target(name, address, int(pid), args)
    else:
        if args.cairn_bin:
            os.environ["CAIRN_BIN"] = args.cairn_bin
        os.environ.setdefault("CAIRN_BIN", str(ROOT / "target/release/cairn"))
        from conftest import CairnServer
        for name in args.backends.split(","):
            server = CairnServer() if name == "cairn" else InMemoryProcess()
            server.start()
            try:
                rows += run_target(name, server.address, server.proc.pid, args)
            finally:
                server.stop()
    if not args.json:
        print_table(rows)


if __name__ == "__main__":
    main()
