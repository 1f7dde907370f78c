"""The release being run: what it is (as gathered from the catalog) and where it stands, as people see it: its
state (the status query), its events, its status (a search attribute) and the Web UI's details.

Every part of the workflow shares one ReleaseRun, and changes what people see only through it, which keeps the
state, the events, the search attribute and the details in step. Workflow code: deterministic, no I/O.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from orchestrator.names import clip, one_line
    from orchestrator.render import render_details
    from shared import EVENT_CHARS, EVENTS_KEPT, RUNNING, Cell, DeployState, ReleaseInfo, ReleaseState, StepInput

# Registered by `make server` and the tests; on Temporal Cloud, create them in the namespace.
RELEASE_KEY_ATTRIBUTE = SearchAttributeKey.for_keyword("ReleaseKey")
RELEASE_STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("ReleaseStatus")

# Cells still open when a release ends; they say how it ended.
OPEN_CELLS = ("pending", "waiting", "running", "held")


class ReleaseRun:
    """The release (ReleaseInfo: as started, then as gathered) and its ReleaseState, and the ways that changes."""

    def __init__(self, release: ReleaseInfo) -> None:
        self.info = release
        self.state = ReleaseState(release_key=release.release_key, release_date=release.release_date)

    def gathered(self, release: ReleaseInfo) -> None:
        """The release as the catalog describes it: its deploys, each pending in each of its environments."""
        self.info = release
        self.state.release_date = release.release_date
        self.state.approved = release.approved
        self.state.deploys = [
            DeployState(
                deploy_key=d.deploy_key,
                container_id=d.container_id,
                artifact=f"{d.container_id}-{d.version}",
                approved=d.approved,
                cells={env: Cell() for env in d.environments},
            )
            for d in release.deploys
        ]

    def deploy(self, deploy_key: str) -> DeployState:
        return next(d for d in self.state.deploys if d.deploy_key == deploy_key)

    def note(
        self,
        step: StepInput,
        status: str,
        verb: str,
        attempts: int = 0,
        error: str | None = None,
        note: str | None = None,
    ) -> None:
        """A step of a deploy in an environment changed: status "waiting" with why (note), "running", "done"...

        attempts, once the step completed: how many it took. The cell, the deploy's wait and the events follow.
        """
        deploy = self.deploy(step.deploy.deploy_key)
        cell = deploy.cells[step.env]
        cell.status, cell.step = status, verb  # type: ignore[assignment]
        deploy.waiting_for = one_line(note) if status == "waiting" and note else None
        if note:
            self.event(f"{deploy.artifact} waits for {note}")
        if attempts:
            cell.deployed = cell.deployed or verb == "deploy"
            cell.steps_done += 1
            cell.attempts += attempts
            tries = f" (attempt {attempts})" if attempts > 1 else ""
            self.event(f"{verb} {deploy.artifact} {'in' if verb == 'test' else '→'} {step.env}{tries}")
        if error:
            self.event(f"{verb} {deploy.artifact} in {step.env} failed: {error}")
        self.show()

    def event(self, text: str) -> None:
        self.state.events.append(clip(f"{workflow.now():%H:%M:%S} {one_line(text)}", EVENT_CHARS))
        del self.state.events[:-EVENTS_KEPT]
        self.state.event_count += 1
        self.show()

    def set_status(self, status: str) -> None:
        self.state.status = status
        # Only releases started with the search attributes (so registered) upsert them.
        if workflow.info().typed_search_attributes.get(RELEASE_KEY_ATTRIBUTE) is not None:
            workflow.upsert_search_attributes([RELEASE_STATUS_ATTRIBUTE.value_set(status)])
        self.show()

    def resume(self, waited: str, to: str = RUNNING) -> None:
        """The last wait that set status `waited` (FROZEN, HELD) is over: status `to`, if nothing changed it since.

        Waits call this in `finally`, which also runs when the worker evicts the run from its cache (the coroutine
        is closed outside the workflow's loop): then there is no run to change, and nothing is done."""
        if self.state.status == waited and workflow.in_workflow():
            self.set_status(to)

    def finish(self, status: str, error: str | None = None) -> None:
        """The release ended with status (and error); cells still open say it stopped there."""
        self.close_cells()
        self.state.error = one_line(error) if error else None
        self.set_status(status)

    def close_cells(self) -> None:
        """Cells still pending, waiting, running or held become cancelled; nothing waits any more."""
        for d in self.state.deploys:
            d.waiting_for = None
            for cell in d.cells.values():
                if cell.status in OPEN_CELLS:
                    cell.status = "cancelled"

    def deployed(self) -> str:
        """What reached where: "frontend-1.1 → DEV, TEST; sbstore-1.7 → DEV", or "nothing"."""
        deployed = "; ".join(
            f"{d.artifact} → {', '.join(e for e, c in d.cells.items() if c.deployed)}"
            for d in self.state.deploys
            if any(c.deployed for c in d.cells.values())
        )
        return deployed or "nothing"

    def show(self) -> None:
        workflow.set_current_details(render_details(self.state))
