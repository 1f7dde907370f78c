"""One way to declare a person's decision on a release: an Update with its validator, and its Signal twin.

The Update is what the command line sends: its validator refuses a bad decision before it reaches the history,
and it answers. The Signal has the same name and payload, for the Web UI's "Send a Signal" dialog: it cannot
answer, so it is checked alike and, when refused, ignored with an event that says why.

The handlers delegate to a helper the workflow owns (found by `helper(workflow)`), which has `check(arg)`
(raises ValueError), `async apply(arg) -> reply`, and `run` (the ReleaseRun, for the event).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from orchestrator.flow.release_run import ReleaseRun


class DecisionHelper(Protocol):
    run: ReleaseRun

    def check(self, arg: Any) -> Any: ...

    def apply(self, arg: Any) -> Awaitable[Any]: ...


def update_and_signal(
    name: str, arg_type: type, reply_type: type, helper: Callable[[Any], DecisionHelper], what: str
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The Update `name` and the Signal `name`, for a workflow class body: `x, x_signal = update_and_signal(...)`.

    what names the signal in the event of one ignored ("an approval": "ignored an approval signal: ...").
    """

    async def update(self: Any, arg: Any) -> Any:
        return await helper(self).apply(arg)

    def validate(self: Any, arg: Any) -> None:
        helper(self).check(arg)

    async def signal(self: Any, arg: Any) -> None:
        decided = helper(self)
        try:
            decided.check(arg)
        except ValueError as err:
            decided.run.event(f"ignored {what} signal: {err}")
            return
        await decided.apply(arg)

    # The SDK reads the payload's type from these hints.
    update.__annotations__ = {"arg": arg_type, "return": reply_type}
    validate.__annotations__ = {"arg": arg_type, "return": None}
    signal.__annotations__ = {"arg": arg_type, "return": None}
    for fn, suffix in ((update, ""), (validate, "_validator"), (signal, "_signal")):
        fn.__name__ = fn.__qualname__ = f"{name}{suffix}"
    declared = workflow.update(name=name)(update)
    declared.validator(validate)
    return declared, workflow.signal(name=name)(signal)
