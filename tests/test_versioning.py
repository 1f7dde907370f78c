"""Worker Versioning (orchestrator/versioning.py, docs/design.md): releases pinned to the worker version that
started them, a new version taking new releases, and a namespace or a setting without it.

Real dev servers and run_worker.py / run_workflow.py as subprocesses, as an operator runs them.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import VersioningBehavior
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from orchestrator import worker_settings
from orchestrator.cli.diagnostics import pinned_to
from orchestrator.flow.release_run import RELEASE_KEY_ATTRIBUTE, RELEASE_STATUS_ATTRIBUTE
from orchestrator.settings import Settings, default_deployment
from orchestrator.versioning import WORKFLOW_CODE, code_digest, current_build_id
from shared import release_workflow_id
from tests.conftest import REPO, installed_binary, target_of
from tests.support import (
    WorkerProcess,
    eventually,
    run_patched,
    run_python,
    run_script,
    script_env,
    stopped_at_the_end,
    task_queue,
)

HOLD = "RELEASE-FEB-24-BETA-HOLD"  # waits for an approval of sbstore: it stays running until a person acts
ALPHA_DEV = "RELEASE-JAN-24-ALPHA-DEV"


async def version_of(client: Client, key: str) -> tuple[int, str | None]:
    """(behavior, build id) of the release's latest run."""
    run = await client.get_workflow_handle(release_workflow_id(key)).describe()
    return run.raw_description.workflow_execution_info.versioning_info.behavior, pinned_to(run)


def worker(env: dict[str, str], log: Path, **settings: str) -> WorkerProcess:
    return WorkerProcess(env | settings, log).start()


async def status_word(env: dict[str, str], key: str) -> str:
    code, out = await run_script(["status", key], env)
    return out.splitlines()[0]


@pytest.mark.slow(20)
async def test_a_release_stays_on_its_version_while_a_new_one_takes_new_releases(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = script_env(target_of(dev_server), tmp_path, task_queue())
    client = dev_server.client
    with stopped_at_the_end([worker(env, tmp_path / "a.log", WORKER_BUILD_ID="1.0.0-aaaa")]) as workers:
        deployment = default_deployment(env["RELEASE_TASK_QUEUE"])
        assert (
            f"Worker version {deployment} 1.0.0-aaaa: current, new releases start on it"
            in (tmp_path / "a.log").read_text()
        )
        held = asyncio.ensure_future(run_script(["--release-key", HOLD], env, limit=120))
        await eventually(lambda: waits_for_approval(env))
        assert await version_of(client, HOLD) == (VersioningBehavior.VERSIONING_BEHAVIOR_PINNED, "1.0.0-aaaa")

        # A new version: it becomes current, and takes the next release; the held one stays pinned to its own.
        workers.append(worker(env, tmp_path / "b.log", WORKER_BUILD_ID="1.0.0-bbbb"))
        assert await current_build_id(client, deployment) == "1.0.0-bbbb"
        code, out = await run_script(["--release-key", ALPHA_DEV], env)
        assert code == 0, out
        assert await version_of(client, ALPHA_DEV) == (VersioningBehavior.VERSIONING_BEHAVIOR_PINNED, "1.0.0-bbbb")

        # Without a worker of its version, the held release waits, and the tools say for which version. (A
        # stopped worker's poller counts for POLLER_FRESH_SECONDS, 90: here 1, until it is seen gone.)
        workers[0].stop()
        pinned = "no worker of version 1.0.0-aaaa, which the release is pinned to, polls task queue"
        shortened = {"POLLER_FRESH_SECONDS": 1, "WORKER_ANSWER": 1}

        async def status_says_pinned() -> bool:
            code, out = await run_patched(["status", HOLD], env, **shortened)
            return code == 0 and f"Release {HOLD}: AWAITING_APPROVAL; {pinned}" in out

        await eventually(status_says_pinned)
        code, out = await run_patched(["approve", HOLD, "--by", "ana"], env, **shortened)
        assert code == 3 and out.startswith(f"error: {pinned}"), out
        assert "start one from the code of version 1.0.0-aaaa (setup.md, Upgrading workers) and try again" in out

        # Its version back: an older one than the current, it takes no new releases but finishes its own.
        workers.append(worker(env, tmp_path / "a2.log", WORKER_BUILD_ID="1.0.0-aaaa"))
        assert (
            "1.0.0-aaaa: older than the current one; it runs the releases pinned to it"
            in (tmp_path / "a2.log").read_text()
        )
        assert await current_build_id(client, deployment) == "1.0.0-bbbb"
        code, out = await run_script(["approve", HOLD, "--by", "ana"], env)
        assert code == 0, out
        code, out = await held
    assert code == 0 and out.splitlines()[-1].startswith(f"Result: Release {HOLD}: SUCCESS"), out
    assert "Worker stopped." in (tmp_path / "a.log").read_text()  # the stop above was a clean one


async def waits_for_approval(env: dict[str, str]) -> bool:
    return (await status_word(env, HOLD)).startswith(f"Release {HOLD}: AWAITING_APPROVAL")


@pytest.mark.slow(10)
async def test_worker_versioning_off_runs_unversioned(dev_server: WorkflowEnvironment, tmp_path: Path) -> None:
    env = script_env(target_of(dev_server), tmp_path, task_queue(), WORKER_VERSIONING="off")
    with stopped_at_the_end([worker(env, tmp_path / "w.log")]):
        code, out = await run_script(["--release-key", ALPHA_DEV], env)
    assert code == 0, out
    assert "Worker version" not in (tmp_path / "w.log").read_text()
    assert await version_of(dev_server.client, ALPHA_DEV) == (VersioningBehavior.VERSIONING_BEHAVIOR_UNSPECIFIED, None)
    assert await current_build_id(dev_server.client, default_deployment(env["RELEASE_TASK_QUEUE"])) is None


@pytest.fixture
async def server_without_versioning() -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=installed_binary("temporal"),
        search_attributes=[RELEASE_KEY_ATTRIBUTE, RELEASE_STATUS_ATTRIBUTE],
        dev_server_extra_args=["--dynamic-config-value", "system.enableDeploymentVersions=false"],
    )
    yield env
    await env.shutdown()


@pytest.mark.slow(10)
async def test_a_namespace_without_worker_versioning(
    server_without_versioning: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = script_env(target_of(server_without_versioning), tmp_path, task_queue())
    code, _, err = await run_python(
        [str(REPO / "run_worker.py")], env | {"WORKER_VERSIONING": "manual"}, 60, merge=False
    )
    assert (code, err) == (
        2,
        "error: WORKER_VERSIONING=manual: namespace default has no Worker Versioning; "
        "enable it on the server, or set WORKER_VERSIONING=auto (or off)\n",
    )
    with stopped_at_the_end([worker(env, tmp_path / "w.log")]):
        code, out = await run_script(["--release-key", ALPHA_DEV], env)
    assert code == 0, out
    log = (tmp_path / "w.log").read_text()
    assert "note: namespace default has no Worker Versioning: this worker runs unversioned\n" in log
    assert await version_of(server_without_versioning.client, ALPHA_DEV) == (
        VersioningBehavior.VERSIONING_BEHAVIOR_UNSPECIFIED,
        None,
    )


def test_the_build_id_follows_the_workflow_code_and_nothing_else(tmp_path: Path) -> None:
    for pattern in (*WORKFLOW_CODE, "orchestrator/cli/*.py", "activities.py", "run_workflow.py"):
        for path in REPO.glob(pattern):
            (tmp_path / path.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp_path / path.relative_to(REPO))
    before = code_digest(tmp_path)
    assert before == code_digest(REPO) and len(before) == 12
    for outside in ("orchestrator/cli/follower.py", "activities.py", "run_workflow.py"):
        (tmp_path / outside).write_text((tmp_path / outside).read_text() + "\n# a change outside the workflow code\n")
    assert code_digest(tmp_path) == before
    deploys = tmp_path / "orchestrator" / "flow" / "deploys.py"
    deploys.write_text(deploys.read_text() + "\n# a change to the workflow code\n")
    assert code_digest(tmp_path) != before


def test_make_worker_notices_a_worker_that_runs_older_workflow_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env()
    target = {"target_host": "localhost:7233", "namespace": "default"}
    (tmp_path / "worker.settings").write_text(
        worker_settings.settings_line(worker_settings.settings_of(settings, target, "1.0.0-old"))
    )
    (tmp_path / "worker.pid").write_text("4242")
    assert worker_settings.check_running(str(tmp_path), worker_settings.settings_of(settings, target, "1.0.0-new")) == 1
    said = capsys.readouterr().out
    assert "with WORKER_BUILD_ID=1.0.0-old, not WORKER_BUILD_ID=1.0.0-new as asked" in said
    assert said.rstrip().endswith(
        "restart it with `make STATE=" + str(tmp_path) + " stop-worker && make STATE=" + str(tmp_path) + " worker`"
    ), said
