"""Quality gates and the health check of a deploy in an environment: one verdict and one report per check.

Plain Python, no temporalio. A report this try already wrote is its verdict: a retry by Temporal never runs a
check again, so a failure stays one and a check that passed is not run twice. Only a new try that a person asks
for (StepInput.retry) runs them anew, with reports of its own beside the failed try's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from orchestrator.ledger_format import now_iso
from orchestrator.workspace import Workspace, atomic_write
from shared import HEALTH, StepInput

# How much of a check command's output its report keeps (all of it is in the log beside the report).
OUTPUT_KEPT = 2000

# A check's verdict: (passed, findings).
Verdict = tuple[bool, list[str]]


def run_checks(
    ws: Workspace, step: StepInput, check: Callable[[str], Verdict], has_command: Callable[[str], bool], started: str
) -> tuple[bool, str | None, list[str]]:
    """The environment's checks, then its health check, in order, each once per try, until one fails.

    check(name) runs one (its command or the simulation); has_command(name) says whether it ran a command, whose
    log the report names. Returns whether this execution wrote a report, the check that failed (None: all
    passed) and its findings.
    """
    d, env = step.deploy, step.env
    applied = False
    for name in [*d.checks_in(env), HEALTH]:
        report = ws.report_path(d, env, name, step.retry)
        verdict = verdict_of(report, step.run_id, step.retry)
        if verdict is None:
            verdict = check(name)
            # A report of another run is replaced: the report says what this run found.
            report.parent.mkdir(parents=True, exist_ok=True)
            body = {
                "container": d.container_id,
                "version": d.version,
                "environment": env,
                "check": name,
                "passed": verdict[0],
                "findings": verdict[1],
                "release_key": step.release_key,
                "run_id": step.run_id,
                **({"retry": step.retry} if step.retry else {}),
                **_command_output(report.with_suffix(".log") if has_command(name) else None),
                "started_at": started,
                "finished_at": now_iso(),
            }
            atomic_write(report, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
            applied = True
        if not verdict[0]:
            return applied, name, verdict[1]
    return applied, None, []


def verdict_of(report: Path, run_id: str, retry: int = 0) -> Verdict | None:
    """(passed, findings) of a check report this run's try wrote; None if there is none that reads."""
    try:
        body = json.loads(report.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # not a report this tool wrote whole: run the check again
    if not isinstance(body, dict) or body.get("run_id") != run_id or body.get("retry", 0) != retry:
        return None
    findings = body.get("findings")
    return body.get("passed") is True, [str(f) for f in findings] if isinstance(findings, list) else []


def _command_output(log: Path | None) -> dict[str, str]:
    """The report's fields for a check run as a command: its log's name and the end of its output."""
    if log is None:
        return {}
    try:
        text = log.read_bytes()[-OUTPUT_KEPT:].decode(errors="replace")
    except FileNotFoundError:
        text = ""
    return {"log": log.name, "output": text}
