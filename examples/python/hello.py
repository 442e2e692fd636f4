# A complete durabletask app: with `cairn serve` running, `python examples/python/hello.py`.
from durabletask import client, task, worker


def greet(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello, {name}!"


def hello(ctx: task.OrchestrationContext, name: str):
    greeting = yield ctx.call_activity(greet, input=name)
    return greeting


# Leaving the `with` block stops the worker, so the program exits.
with worker.TaskHubGrpcWorker(host_address="localhost:4001") as w:
    w.add_orchestrator(hello)
    w.add_activity(greet)
    w.start()
    c = client.TaskHubGrpcClient(host_address="localhost:4001")
    iid = c.schedule_new_orchestration(hello, input="Cairn")
    state = c.wait_for_orchestration_completion(iid, timeout=60)
    print(state.runtime_status.name, state.serialized_output)
