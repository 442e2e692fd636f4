"""The Python SDK worker driving Cairn, compared in the same run with the same SDK against its
own in-memory test backend (`durabletask.testing`, not durable).

    .venv/bin/python interop/python/bench_sdk.py [--chains 300] [--fanout 1000] [--json]

Cairn runs as `cairn serve` (release build from $CAIRN_BIN or target/release/cairn) with fsync
on, on a fresh data directory.
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from durabletask import client, task, worker  # noqa: E402
from durabletask.testing import create_test_backend  # noqa: E402

from conftest import CairnServer, free_port  # noqa: E402


def noop(ctx: task.ActivityContext, x):
    return x


def chain3(ctx: task.OrchestrationContext, _):
    a = yield ctx.call_activity(noop, input=1)
    b = yield ctx.call_activity(noop, input=a)
    c = yield ctx.call_activity(noop, input=b)
    return c


def fanout(ctx: task.OrchestrationContext, n: int):
    results = yield task.when_all([ctx.call_activity(noop, input=i) for i in range(n)])
    return len(results)


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_backend(name: str, address: str, chains: int, fan: int):
    w = worker.TaskHubGrpcWorker(host_address=address)
    w.add_orchestrator(chain3)
    w.add_orchestrator(fanout)
    w.add_activity(noop)
    w.start()
    c = client.TaskHubGrpcClient(host_address=address)
    rows = []
    try:
        # Warm up the connection and the worker.
        c.wait_for_orchestration_completion(c.schedule_new_orchestration(chain3), timeout=60)
        started = {}
        t0 = time.time()
        for _ in range(chains):
            iid = c.schedule_new_orchestration(chain3)
            started[iid] = time.time()
        latencies = []
        for iid, t in started.items():
            st = c.wait_for_orchestration_completion(iid, timeout=600)
            assert st.runtime_status == client.OrchestrationStatus.COMPLETED, st.failure_details
            latencies.append(time.time() - t)
        elapsed = time.time() - t0
        rows.append({"backend": name, "scenario": "python-chain3", "ops": chains, "seconds": elapsed,
                     "ops_per_s": chains / elapsed, "p50_ms": percentile(latencies, 0.5) * 1000,
                     "p99_ms": percentile(latencies, 0.99) * 1000, "unit": "orchestrations"})
        runs = []
        for _ in range(3):
            t = time.time()
            st = c.wait_for_orchestration_completion(c.schedule_new_orchestration(fanout, input=fan), timeout=600)
            assert st.get_output() == fan, st.failure_details
            runs.append(time.time() - t)
        best = min(runs)
        rows.append({"backend": name, "scenario": f"python-fan-out-{fan}", "ops": fan, "seconds": best,
                     "ops_per_s": fan / best, "p50_ms": statistics.median(runs) * 1000,
                     "p99_ms": max(runs) * 1000, "unit": "activities (best of 3; latency = whole fan-out)"})
    finally:
        w.stop()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chains", type=int, default=300)
    ap.add_argument("--fanout", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("CAIRN_BIN", str(pathlib.Path(__file__).resolve().parents[2] / "target/release/cairn"))
    rows = []
    cairn = CairnServer().start()
    try:
        rows += run_backend("cairn (fsync on)", cairn.address, args.chains, args.fanout)
    finally:
        cairn.stop()
    port = free_port()
    backend = create_test_backend(port=port)
    try:
        rows += run_backend("durabletask.testing (in-memory)", f"localhost:{port}", args.chains, args.fanout)
    finally:
        backend.stop()
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return
    print(f"{'backend':<32} {'scenario':<22} {'ops':>6} {'seconds':>8} {'ops/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
    for r in rows:
        print(f"{r['backend']:<32} {r['scenario']:<22} {r['ops']:>6} {r['seconds']:>8.2f} {r['ops_per_s']:>9.1f} "
              f"{r['p50_ms']:>9.1f} {r['p99_ms']:>9.1f}")


if __name__ == "__main__":
    main()
