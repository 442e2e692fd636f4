# The `approval` orchestration that examples/http/approval.sh drives over the HTTP API.
# With `cairn serve` running, `python examples/python/approval_worker.py`; Ctrl-C stops it.
import signal
import threading
from datetime import timedelta

from durabletask import task, worker


def approval(ctx: task.OrchestrationContext, timeout_s: int):
    ctx.set_custom_status("waiting for approval")
    approved = ctx.wait_for_external_event("approval")
    timeout = ctx.create_timer(timedelta(seconds=timeout_s))
    winner = yield task.when_any([approved, timeout])
    if winner == approved:
        return f"approved by {approved.get_result()}"
    return "timed out"


stop = threading.Event()
signal.signal(signal.SIGINT, lambda *_: stop.set())
signal.signal(signal.SIGTERM, lambda *_: stop.set())

with worker.TaskHubGrpcWorker(host_address="localhost:4001") as w:
    w.add_orchestrator(approval)
    w.start()
    print("approval worker running; Ctrl-C stops it", flush=True)
    stop.wait()
