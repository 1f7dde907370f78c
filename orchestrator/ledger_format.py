"""What a ledger line means: the step it is about, whether it claims the effect, what it proves; and reading lines.

Plain Python, no temporalio. The ledger, its index and the inventory all read lines through these.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import NamedTuple

from shared import ARTIFACTORY, StepInput


def identity_of(entry: Mapping[str, object]) -> tuple[object, ...]:
    """What a ledger line is about: one step of one deploy in one environment of one release run.

    A try a person asked for (retry, see StepInput) is a step of its own; lines without one keep their identity.
    """
    identity = tuple(entry.get(k) for k in ("run_id", "deploy_key", "step", "env"))
    if entry.get("step") == "approve" and entry.get("env"):
        identity = (*identity, entry.get("approver"))  # an environment's entry needs approvals of several people
    return (*identity, entry["retry"]) if entry.get("retry") else identity


def read_bytes(fd: int, start: int, end: int | None = None) -> bytes:
    """The file's bytes from start to end (or to its end)."""
    chunks, offset = [], start
    while end is None or offset < end:
        chunk = os.pread(fd, 1 << 16 if end is None else min(1 << 16, end - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def parse_lines(data: bytes) -> tuple[list[dict[str, object]], list[int]]:
    """The entries in ledger bytes that start a line, and the 1-based numbers of lines that are not JSON objects."""
    entries: list[dict[str, object]] = []
    unreadable: list[int] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            value = None
        # A torn line, or anything not written by record, is not evidence of a step.
        if isinstance(value, dict):
            entries.append(value)
        else:
            unreadable.append(number)
    return entries, unreadable


def is_claim(entry: Mapping[str, object]) -> bool:
    # Lines written before "applied" existed were each one applied effect.
    return entry.get("applied", True) is True


def claimed_in(entries: list[dict[str, object]], identity: tuple[object, ...]) -> bool:
    return any(is_claim(e) and identity_of(e) == identity for e in entries)


class Proof(NamedTuple):
    """What the ledger says of a version in a place: passed (built, for the artifactory), and the SHA-256 of the
    bytes that did (None on lines written before 1.1, which recorded no digest)."""

    passed: bool
    digest: str | None

    def __bool__(self) -> bool:
        return self.passed


def proof_of(entry: Mapping[str, object]) -> tuple[tuple[object, object, object], Proof] | None:
    """What a ledger line says for promotions: ((container, version, "artifactory"), a pass) for a build,
    ((container, version, env), its verdict) for tests in env; None for anything else.

    A test passed only if its line says so ("passed": true): a line without it proves nothing.
    """
    step, digest = entry.get("step"), entry.get("sha256")
    digest = digest if isinstance(digest, str) else None
    if step == "build":
        return (entry.get("container"), entry.get("version"), ARTIFACTORY), Proof(True, digest)
    if step == "test":
        passed = entry.get("passed") is True
        return (entry.get("container"), entry.get("version"), entry.get("env")), Proof(passed, digest)
    return None


def now_iso() -> str:
    """Now, as ledger lines and reports write times: ISO 8601 in UTC, to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def step_line(
    step: StepInput, verb: str, attempt: int, started_at: str, extra: Mapping[str, object] | None = None
) -> dict[str, object]:
    """The ledger line of one execution of a step (build, deploy, test, rollback), before "applied" is known."""
    d = step.deploy
    return {
        **(extra or {}),
        "release_key": step.release_key,
        "run_id": step.run_id,
        "deploy_key": d.deploy_key,
        "container": d.container_id,
        "version": d.version,
        "step": verb,
        "env": step.env,
        **({"retry": step.retry} if step.retry else {}),
        "attempt": attempt,
        "started_at": started_at,
        "at": now_iso(),
    }
