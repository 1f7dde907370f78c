"""The release's own bookkeeping (orchestrator/flow/release_run.py), without a server: what a cancel or a
failure leaves in its state.

These are deterministic helpers of ReleaseWorkflow; the workflow tests reach them only in the
rare moments a release is cancelled while a deploy waits or a step runs (found by mutation testing).
"""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError

from orchestrator.flow.approvals import _skipped
from orchestrator.flow.release_run import ReleaseRun
from orchestrator.flow.steps import message_of
from orchestrator.render import render_details
from shared import Cell, DeployState, ReleaseInfo, ReleaseState


def release(*deploys: DeployState) -> ReleaseRun:
    run = ReleaseRun(ReleaseInfo(release_key="R-1"))
    run.state.deploys = list(deploys)
    return run


def deploy(container: str, **cells: Cell) -> DeployState:
    return DeployState(
        deploy_key=f"R-1:{container}", container_id=container, artifact=f"{container}-1.0", approved=True, cells=cells
    )


def test_closing_cancels_what_was_pending_waiting_or_running_and_keeps_the_rest() -> None:
    waiting = deploy(
        "frontend",
        DEV=Cell(status="done", deployed=True),
        TEST=Cell(status="running", step="test", deployed=True),
        QC=Cell(status="waiting"),
        PROD=Cell(status="pending"),
    )
    waiting.waiting_for = "QC/frontend: held by R-2"
    failed = deploy("sbstore", DEV=Cell(status="failed"), TEST=Cell(status="skipped"))
    wf = release(waiting, failed)
    wf.close_cells()
    assert {env: c.status for env, c in waiting.cells.items()} == {
        "DEV": "done",
        "TEST": "cancelled",
        "QC": "cancelled",
        "PROD": "cancelled",
    }
    assert waiting.waiting_for is None
    assert [c.status for c in failed.cells.values()] == ["failed", "skipped"]


def test_what_was_deployed_is_listed_per_artifact_and_environment() -> None:
    wf = release(
        deploy("frontend", DEV=Cell(deployed=True), TEST=Cell(deployed=True), QC=Cell()),
        deploy("sbstore", DEV=Cell()),
        deploy("bff", DEV=Cell(deployed=True)),
    )
    assert wf.deployed() == "frontend-1.0 → DEV, TEST; bff-1.0 → DEV"
    assert release(deploy("sbstore", DEV=Cell())).deployed() == "nothing"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            ApplicationError("cannot deploy: QC does not hold it", type="MissingArtifact"),
            "cannot deploy: QC does not hold it",
        ),
        (ValueError("bad input"), "bad input"),  # no .message: its str()
        (ApplicationError("", type="Empty"), "Empty: "),  # an empty message: str(), which names the type
    ],
)
def test_an_error_is_told_in_its_own_words(error: BaseException, message: str) -> None:
    assert message_of(error) == message


def test_a_huge_error_is_cut_to_a_thousand_characters() -> None:
    told = message_of(ValueError("x" * 5000))
    assert len(told) == 1000 and told.endswith("…")
    assert message_of(ValueError("y" * 1000)) == "y" * 1000


def test_a_deploy_is_skipped_only_when_every_cell_is() -> None:
    assert _skipped(deploy("a", DEV=Cell(status="skipped"), TEST=Cell(status="skipped")))
    assert not _skipped(deploy("a", DEV=Cell(status="skipped"), TEST=Cell(status="pending")))


def test_the_web_ui_details_show_one_line_per_deploy_with_every_environment() -> None:
    cells = {
        "DEV": Cell(status="done", steps_done=3, attempts=4),
        "TEST": Cell(status="running", step="test", steps_done=1, attempts=1),
        "QC": Cell(status="waiting", step="lock"),
        "PROD": Cell(),
    }
    state = ReleaseState(
        release_key="K",
        status="FAILED",
        error="it *broke*\nhere",
        deploys=[
            DeployState(
                deploy_key="K:f",
                container_id="frontend",
                artifact="frontend-1.1",
                approved=False,
                cells=cells,
                waiting_for="QC/frontend: held by OTHER",
            )
        ],
    )
    lines = render_details(state).splitlines()
    assert lines[0] == "**FAILED**: it \\*broke\\* here"  # one line, shown as written
    assert "- **frontend-1.1** (not approved): DEV ✓ (+1 retry) · TEST test · QC waiting · PROD pending" in lines
    assert lines[-1] == "- frontend-1.1 waits for QC/frontend: held by OTHER"
