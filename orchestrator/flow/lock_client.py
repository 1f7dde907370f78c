"""The release's side of the target locks (orchestrator/locks.py): asking for them, waiting for grants, giving back.

Workflow code. The deploys' moves go out in batches, one move_locks activity at a time, so that a release of
many deploys does not start an activity per deploy at each step. A grant is a `lock_granted` signal; it may
come before the answer of the move that asked (in one workflow task, signals come first), and is kept.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from orchestrator.flow.release_run import ReleaseRun
    from orchestrator.flow.steps import move_locks
    from orchestrator.locks import LockAnswer, LockMove, LockRequest, target_of
    from shared import DeployInfo, StepInput

# A deploy that waits for a lock asks again this often (a terminated lock starts anew).
ASK_AGAIN = timedelta(seconds=60)


class LockClient:
    def __init__(self, run: ReleaseRun) -> None:
        self.run = run
        # The locks this release's deploys own or wait for, by target ("DEV/frontend").
        self.requests: dict[str, LockRequest] = {}
        # Lock ids granted to this release.
        self.granted: set[str] = set()
        # Targets asked for by a move whose answer has not come yet, with how many moves ask.
        self.asking: dict[str, int] = {}
        # Moves waiting for the activity that sends them, and whether one is under way.
        self.pending: list[tuple[LockMove, asyncio.Future[list[LockAnswer]]]] = []
        self.sending = False

    def grant(self, lock: str) -> None:
        """The lock_granted signal: only locks this release asked for, or asks for now (a stray signal must not
        grow the state)."""
        if target_of(lock) in self.asking or any(r.lock_id == lock for r in self.requests.values()):
            self.granted.add(lock)

    def mine(self, container: str) -> list[str]:
        """The places whose lock of container this release owns or waits for."""
        return [t.partition("/")[0] for t in self.requests if t.partition("/")[2] == container]

    async def move(self, d: DeployInfo, give_back: list[str] = (), take: list[str] = ()) -> list[LockAnswer]:  # type: ignore[assignment]
        """Give back and ask for the locks of d's container in these places; the answers to `take`, in order."""
        info = workflow.info()
        gone = [self.requests.pop(f"{place}/{d.container_id}") for place in give_back]
        for req in gone:
            self.granted.discard(req.lock_id)
        wanted = [
            LockRequest(
                lock_id="",  # named by the worker that asks (see LockActivities.move_locks)
                target=f"{place}/{d.container_id}",
                owner_id=info.workflow_id,
                owner_run_id=info.run_id,
                release_key=self.run.state.release_key,
            )
            for place in take
        ]
        answer: asyncio.Future[list[LockAnswer]] = asyncio.get_running_loop().create_future()
        self.pending.append((LockMove(give_back=gone, take=wanted), answer))
        for req in wanted:
            self.asking[req.target] = self.asking.get(req.target, 0) + 1
        if not self.sending:
            self.sending = True
            asyncio.ensure_future(self._send())
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            # A move under way completes, so that what it asked for is known and given back.
            await answer
            raise
        finally:
            for req in wanted:
                self.asking[req.target] -= 1
                if not self.asking[req.target]:
                    del self.asking[req.target]

    async def wait(self, d: DeployInfo, step: StepInput, answers: list[LockAnswer]) -> None:
        """Wait until every lock answered is granted; the deploy says whom it waits for."""
        for answer in answers:
            if not answer.asked:  # the one before it is granted now
                [answer] = await self.move(d, take=[answer.target.partition("/")[0]])
            owner, told = answer.owner, False
            while answer.lock_id not in self.granted:
                if owner not in (None, step.release_key) and not told:
                    told = True
                    self.run.note(step, "waiting", "lock", note=f"{answer.target}: held by {owner}")
                try:
                    await workflow.wait_condition(
                        lambda answer=answer: answer.lock_id in self.granted, timeout=ASK_AGAIN
                    )
                except TimeoutError:
                    # Asked again now and then: a lock workflow an operator terminated starts anew.
                    [again] = await self.move(d, take=[answer.target.partition("/")[0]])
                    owner = again.owner
            if told:
                self.run.note(step, "running", "lock")

    async def _send(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                move = LockMove(
                    give_back=[r for m, _ in batch for r in m.give_back], take=[r for m, _ in batch for r in m.take]
                )
                try:
                    answers = await move_locks(move)
                except BaseException as err:
                    for _, waiter in batch:
                        waiter.set_exception(err)
                    continue
                for a in (a for a in answers if a.asked):
                    request = next(r for r in move.take if r.target == a.target)
                    self.requests[a.target] = request.model_copy(update={"lock_id": a.lock_id})
                self.granted.update(a.lock_id for a in answers if a.granted)
                for m, waiter in batch:
                    waiter.set_result(answers[: len(m.take)])
                    answers = answers[len(m.take) :]
        finally:
            self.sending = False
