"""A deploy's steps as the catalog's commands run them: in the workspace, each output in a log beside the reports.

Plain Python, no temporalio. Each method returns None when the catalog gives no command for that step: the step
is then simulated by release_management.py.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.command_runner import CommandFailed, CommandRefused, Liveness, run_command
from orchestrator.gates import Verdict
from orchestrator.step_commands import StepCommand, StepCommands, placeholders_for
from orchestrator.workspace import Workspace, artifact_name, bytes_of
from shared import StepInput


class CommandSteps:
    """step's commands, each run with the step's liveness."""

    def __init__(self, ws: Workspace, step: StepInput, live: Liveness) -> None:
        self.ws, self.step, self.live = ws, step, live
        # Checked again here: the payload may come from a client that skipped the catalog.
        self.commands = StepCommands.model_validate(step.deploy.commands or {})

    def has_check(self, check: str) -> bool:
        return self.commands.for_check(check) is not None

    def build(self) -> bool | None:
        """Build the artifact into the artifactory by the build command; whether it changed the file."""
        command = self.commands.build
        if command is None:
            return None
        artifact = self.ws.artifact_path(self.step.deploy)
        before = bytes_of(artifact)
        self._run(command, None, artifact, artifact.with_name("reports") / artifact.name / "build.log")
        if not artifact.is_file():
            raise CommandFailed(f"the build command left no {artifact.name} in the artifactory")
        return bytes_of(artifact) != before

    def deploy(self, data: bytes, source: str) -> bool | None:
        """Put data, the promoted artifact, into the environment by the deploy command; whether it changed the
        file. The command must leave exactly those bytes there."""
        command = self.commands.deploy
        if command is None:
            return None
        d, env = self.step.deploy, self.step.env
        target = self.ws.env_dir(env) / artifact_name(d)
        before = bytes_of(target)
        self._run(command, env, target, self.ws.report_path(d, env, "deploy").with_suffix(".log"))
        if bytes_of(target) != data:
            raise CommandFailed(f"the deploy command did not put {target.name} from {source} into {env}")
        return before != data

    def check(self, check: str) -> Verdict | None:
        """A check's verdict by its command: exit 0 passes; a final failure fails, with its last lines as the
        finding; "try again" raises, as does a command refused before it ran (a mistake in the catalog)."""
        command = self.commands.for_check(check)
        if command is None:
            return None
        d, env = self.step.deploy, self.step.env
        log = self.ws.report_path(d, env, check, self.step.retry).with_suffix(".log")
        try:
            self._run(command, env, self.ws.env_dir(env) / artifact_name(d), log, check)
        except CommandRefused:
            raise  # nothing ran: not the check's verdict
        except CommandFailed as e:
            return False, [str(e)]
        return True, []

    def _run(self, command: StepCommand, env: str | None, artifact: Path, log: Path, check: str | None = None) -> None:
        """Run a step's command in the workspace, its output in log; CommandError says how it failed."""
        log.parent.mkdir(parents=True, exist_ok=True)
        values = placeholders_for(self.step.deploy, self.step.release_key, env, artifact, check)
        run_command(command, values, self.ws.workspace, log, self.live.heartbeat, self.live.cancelled)
