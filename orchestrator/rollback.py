"""Rollback: what a deploy keeps of an environment before it changes it, giving that back byte for byte, and the
version a rollback-env re-promotes.

Plain Python, no temporalio. Each deploy keeps what the environment held of its container (artifact files and
config) in environments/<ENV>/.rollback/<run>/<container>/, once per run, whole or not at all.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

from orchestrator.errors import RollbackRefused
from orchestrator.ledger_format import is_claim
from orchestrator.names import clip
from orchestrator.workspace import KEPT_CONFIG, Workspace, atomic_write, container_of, write_if_changed
from shared import StepInput

# The ledger fields of a deploy that a rollback line's "restored" repeats.
RESTORED_FIELDS = ("version", "release_key", "run_id", "at", "config_sha256")


def keep_before(ws: Workspace, step: StepInput) -> None:
    """Keep what step.env holds of the container, once per run, before this run's deploy changes it."""
    kept = ws.kept_path(step)
    if kept.is_dir():
        return  # kept by an earlier attempt, before anything was changed
    kept.parent.mkdir(parents=True, exist_ok=True)
    partial = kept.with_name(f".{kept.name}.{secrets.token_hex(4)}.partial")
    partial.mkdir()
    for file in ws.files_of(step.env, step.deploy.container_id):
        atomic_write(partial / file.name, file.read_bytes())
    config = ws.config_path(step.env, step.deploy.container_id)
    if config.is_file():
        atomic_write(partial / KEPT_CONFIG, config.read_bytes())
    # Whole or not at all: a crash before the rename leaves a partial folder, and the retry keeps anew.
    os.rename(partial, kept)


def restore(ws: Workspace, step: StepInput, midway: Callable[[], None]) -> tuple[list[str], bool]:
    """Give step.env back what keep_before kept: (the artifacts it holds again, whether this execution wrote).

    In the order a deploy writes (old artifact beside the new, then the config, then the other removed), so a
    crash leaves the old pair or the new, never a config beside another version alone; midway() is called
    between the artifacts and the config. The caller knows there is a keepsake.
    """
    d, env = step.deploy, step.env
    kept = ws.kept_path(step)
    old = sorted(p.name for p in kept.iterdir() if p.name != KEPT_CONFIG and container_of(p.name) == d.container_id)
    applied = False
    for name in old:
        applied = write_if_changed(ws.env_dir(env) / name, ws.inside(kept / name).read_bytes()) or applied
    midway()
    config = ws.config_path(env, d.container_id)
    if (kept / KEPT_CONFIG).is_file():
        applied = write_if_changed(config, ws.inside(kept / KEPT_CONFIG).read_bytes()) or applied
    elif config.exists():
        config.unlink()
        applied = True
    for other in ws.files_of(env, d.container_id):
        if other.name not in old:
            other.unlink(missing_ok=True)
            applied = True
    return old, applied


def holder_before(entries: list[dict[str, object]], env: str, container: str, run_id: str) -> dict[str, object] | None:
    """Who put what env holds of container there, as the ledger says, leaving out run_id's own lines."""
    holder: dict[str, object] | None = None
    for e in entries:
        if e.get("env") != env or e.get("container") != container or e.get("run_id") == run_id or not is_claim(e):
            continue
        if e.get("step") == "deploy":
            holder = {k: e.get(k) for k in RESTORED_FIELDS}
        elif e.get("step") == "rollback":
            restored = e.get("restored")
            holder = restored if isinstance(restored, dict) else None
    return holder


def rollback_version(entries: list[dict[str, object]], env: str, container: str, to: str | None) -> str:
    """The version of container a rollback-env puts back into env: the one that passed its tests there before the
    one it holds, or `to`, which must have passed there. RollbackRefused says why there is none, in one line."""
    held: str | None = None
    verdicts: dict[str, bool] = {}
    for e in entries:
        if e.get("env") != env or e.get("container") != container or not is_claim(e):
            continue
        if e.get("step") == "deploy":
            held = str(e.get("version"))
        elif e.get("step") == "rollback":
            restored = e.get("restored")
            held = str(restored.get("version")) if isinstance(restored, dict) else None
        elif e.get("step") == "test":
            version = str(e.get("version"))
            verdicts.pop(version, None)  # keeps them in the order of their latest verdict
            verdicts[version] = e.get("passed") is True
    if to is not None:
        if not verdicts.get(to):
            raise RollbackRefused(
                f"cannot roll back {env} {container} to {clip(to)}: it never passed its tests in {env}"
            )
        return to
    passed = [v for v, ok in verdicts.items() if ok and v != held]
    if not passed:
        now = f"it holds {container}-{held}" if held else f"it holds no {container}"
        raise RollbackRefused(f"cannot roll back {env} {container}: no other version passed its tests there ({now})")
    return passed[-1]
