"""Orchestrators and activities the interop tests run on Cairn through the official SDK."""
import threading
from datetime import timedelta

from durabletask import task
from durabletask.entities import DurableEntity, EntityInstanceId

_attempts: dict[str, int] = {}
_lock = threading.Lock()


def greet(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello {name}!"


def double(ctx: task.ActivityContext, x: int) -> int:
    return x * 2


def flaky(ctx: task.ActivityContext, key: str) -> str:
    # Fails twice per key, then succeeds.
    with _lock:
        _attempts[key] = _attempts.get(key, 0) + 1
        n = _attempts[key]
    if n < 3:
        raise RuntimeError(f"transient failure {n} for {key}")
    return f"ok after {n}"


# Keys whose `switchable` activity fails until a test repairs them (the rewind tests).
broken: set[str] = set()


def switchable(ctx: task.ActivityContext, key: str) -> str:
    if key in broken:
        raise RuntimeError(f"{key} is broken")
    return f"{key} works"


def explode(ctx: task.ActivityContext, message: str) -> None:
    raise ValueError(message)


def echo(ctx: task.ActivityContext, value):
    return value


def chaining(ctx: task.OrchestrationContext, _):
    out = []
    for city in ["Tokyo", "Seattle", "London"]:
        out.append((yield ctx.call_activity(greet, input=city)))
    return out


def fan_out_fan_in(ctx: task.OrchestrationContext, n: int):
    results = yield task.when_all([ctx.call_activity(double, input=i) for i in range(n)])
    return sum(results)


def parent(ctx: task.OrchestrationContext, n: int):
    a = yield ctx.call_sub_orchestrator(fan_out_fan_in, input=n)
    b = yield ctx.call_sub_orchestrator(chaining, input=None, instance_id=f"{ctx.instance_id}-child")
    return {"sum": a, "greetings": b}


def sleeper(ctx: task.OrchestrationContext, seconds: float):
    start = ctx.current_utc_datetime
    yield ctx.create_timer(timedelta(seconds=seconds))
    return (ctx.current_utc_datetime - start).total_seconds()


def approval(ctx: task.OrchestrationContext, timeout_s: float):
    ctx.set_custom_status("waiting for approval")
    approved = ctx.wait_for_external_event("approval")
    timeout = ctx.create_timer(timedelta(seconds=timeout_s))
    winner = yield task.when_any([approved, timeout])
    if winner == approved:
        return f"approved by {approved.get_result()}"
    return "timed out"


def counter(ctx: task.OrchestrationContext, state):
    i, limit = state
    ctx.set_custom_status({"iteration": i})
    if i >= limit:
        return i
    yield ctx.call_activity(double, input=i)
    ctx.continue_as_new([i + 1, limit])


def with_retries(ctx: task.OrchestrationContext, key: str):
    policy = task.RetryPolicy(first_retry_interval=timedelta(milliseconds=50), max_number_of_attempts=5,
                              backoff_coefficient=2.0)
    return (yield ctx.call_activity(flaky, input=key, retry_policy=policy))


def failing(ctx: task.OrchestrationContext, message: str):
    yield ctx.call_activity(explode, input=message)


def rewindable(ctx: task.OrchestrationContext, key: str):
    first = yield ctx.call_activity(greet, input=key)
    second = yield ctx.call_activity(switchable, input=key)
    return [first, second]


def rewindable_parent(ctx: task.OrchestrationContext, key: str):
    return (yield ctx.call_sub_orchestrator(rewindable, input=key, instance_id=f"{ctx.instance_id}-child"))


def waiter(ctx: task.OrchestrationContext, _):
    value = yield ctx.wait_for_external_event("go")
    return value


def waits_on_child(ctx: task.OrchestrationContext, _):
    return (yield ctx.call_sub_orchestrator(waiter, instance_id=f"{ctx.instance_id}-child"))


def echo_orchestration(ctx: task.OrchestrationContext, value):
    return (yield ctx.call_activity(echo, input=value))


def counter_entity(ctx, input):
    """A function-based entity (registered as "counter")."""
    state = ctx.get_state(int, 0)
    if ctx.operation == "add":
        state += input
        ctx.set_state(state)
    elif ctx.operation == "fail":
        ctx.set_state(state + 1000)
        raise ValueError("refused")
    elif ctx.operation == "delete":
        ctx.set_state(None)
        return None
    return state


class Account(DurableEntity):
    """A class-based entity."""

    def deposit(self, amount: int) -> int:
        balance = self.get_state(int, 0) + amount
        self.set_state(balance)
        return balance

    def balance(self, _=None) -> int:
        return self.get_state(int, 0)


def uses_entities(ctx: task.OrchestrationContext, key: str):
    c = EntityInstanceId("counter", key)
    ctx.signal_entity(c, "add", 5)
    after = yield ctx.call_entity(c, "add", 10)
    try:
        yield ctx.call_entity(c, "fail")
        failed = None
    except Exception as e:  # the operation's error reaches the caller
        failed = type(e).__name__
    now = yield ctx.call_entity(c, "get")
    return {"after": after, "failed": failed, "now": now}


def locked_transfer(ctx: task.OrchestrationContext, keys):
    a, b = EntityInstanceId("account", keys[0]), EntityInstanceId("account", keys[1])
    with (yield ctx.lock_entities([a, b])):
        yield ctx.call_entity(a, "deposit", -1)
        yield ctx.call_entity(b, "deposit", 1)
    return "done"


ORCHESTRATORS = [chaining, fan_out_fan_in, parent, sleeper, approval, counter, with_retries, failing, waiter,
                 waits_on_child, echo_orchestration, uses_entities, locked_transfer, rewindable,
                 rewindable_parent]
ENTITIES = [(counter_entity, "counter"), (Account, "account")]
ACTIVITIES = [greet, double, flaky, explode, echo, switchable]
