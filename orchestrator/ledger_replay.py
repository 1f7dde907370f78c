"""The ledger's deploy and rollback lines replayed in order: what each environment holds, who approved it, what
its checks said there, and every move; fed line by line, so a reader that follows the ledger replays only what
is new.

Plain Python, no temporalio. What a later line says about an earlier one (an approval into PROD of a deploy that
is already in QC, the test that verifies a deploy, a hold) is looked up when the placements are read, so feeding
the lines in pieces gives what feeding them at once gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from orchestrator.ledger_format import is_claim
from orchestrator.names import CONTAINER_ID, VERSION, clip
from shared import ENVIRONMENTS

TEXT_MAX = 100  # a string read from the ledger or the folders is shown clipped to this
ENTRY_FIELDS = ("version", "release_key", "run_id", "at", "approved_by")
VERIFIED, FAILED, UNTESTED, HELD = "verified", "failed", "untested", "held"


@dataclass
class Placement:
    """A container's version placed in an environment, who put it there, and how the folder differs (drift)."""

    version: str | None
    release_key: str | None = None
    run_id: str | None = None
    at: str | None = None
    approved_by: str | None = None
    drift: str | None = None
    # What its checks in this environment said: verified, failed, or untested (none ran, or a cancel stopped them).
    state: str = UNTESTED
    # Whether the deploy that put it there wrote a config file: deploys before quality gates wrote none.
    config_written: bool = field(default=True, repr=False, compare=False)
    # The SHA-256 of the config file the deploy wrote, where its ledger line says (deploys since issue 11).
    config_sha256: str | None = field(default=None, repr=False, compare=False)

    def as_json(self) -> dict[str, str | None]:
        entry = {**{name: getattr(self, name) for name in ENTRY_FIELDS}, "state": self.state}
        return {**entry, "drift": self.drift} if self.drift else entry


@dataclass(frozen=True)
class Move:
    """A promotion into an environment, or a rollback there, as one applied ledger line records it."""

    env: str
    container: str
    version: str  # promoted, or rolled back from
    release_key: str | None
    run_id: str | None
    at: str | None
    by: str | None  # a promotion's approver; the person who asked for a rollback
    rollback: bool = False
    restored: Placement | None = None  # what a rollback gave back; None: nothing


@dataclass(frozen=True)
class _Deployed:
    """An applied deploy line, as read: its Placement is made when asked for."""

    number: int  # its place among the lines fed (0-based)
    env: str
    container: str
    version: str
    entry: dict[str, object]


@dataclass(frozen=True)
class _RolledBack:
    env: str
    container: str
    version: str
    entry: dict[str, object]
    restored: dict[str, object] | None
    was: _Deployed | None  # the deploy that first put the restored version there, if the ledger has it


class Replay:
    """Lines fed in ledger order (feed), and what they say (placements, moves)."""

    def __init__(self) -> None:
        self.fed = 0
        self.skipped = 0  # deploy and rollback lines without a valid environment, container or version
        self.approvers: dict[tuple[object, object], str] = {}
        self.first_gated: int | None = None
        self.gated_runs: set[object] = set()
        self.verdicts: dict[tuple[object, ...], str] = {}
        self.deploy_of: dict[tuple[object, object], tuple[object, object]] = {}  # (run, deploy key) -> (c, v)
        self.deployed: dict[tuple[object, ...], _Deployed] = {}
        self.held: dict[str, dict[str, _Deployed | _RolledBack]] = {env: {} for env in ENVIRONMENTS}
        self.moved: dict[str, list[_Deployed | _RolledBack]] = {env: [] for env in ENVIRONMENTS}
        self.order: list[tuple[str, int]] = []  # every move as (env, its index in moved[env]), in ledger order

    def feed(self, entries: list[dict[str, object]]) -> None:
        for e in entries:
            number, self.fed = self.fed, self.fed + 1
            self._note(number, e)
            if e.get("step") in ("deploy", "rollback") and is_claim(e):
                self._move(number, e)

    def placements(self) -> dict[str, dict[str, Placement]]:
        """What each environment holds (environments that hold something, containers sorted as placed)."""
        return {env: {c: self._placement(r) for c, r in held.items()} for env, held in self.held.items() if held}

    def moves(self) -> list[Move]:
        """Every move, in ledger order."""
        return [self._move_of(self.moved[env][i]) for env, i in self.order]

    def newest_moves(self, env: str, limit: int) -> tuple[list[Move], int]:
        """The newest moves into env, newest first (at most limit), and how many there are in all."""
        mine = self.moved[env]
        return [self._move_of(r) for r in reversed(mine[-limit:])], len(mine)

    def _note(self, number: int, e: dict[str, object]) -> None:
        """What a line says about others: approvals, the first line of quality gates, tests and holds."""
        step, run = e.get("step"), e.get("run_id")
        if step == "approve" and is_claim(e) and isinstance(e.get("approver"), str):
            self.approvers.setdefault((run, e.get("deploy_key")), clip(str(e["approver"]), TEXT_MAX))
        # Config files came with quality gates: lines from then on (test lines naming their checks, unfreezes,
        # rollbacks) mark the runs, and the part of the ledger, whose deploys wrote one.
        if step in ("unfreeze", "rollback") or (step == "test" and ("checks" in e or "failed_check" in e)):
            self.first_gated = number if self.first_gated is None else self.first_gated
            self.gated_runs.add(run)
        if step == "deploy":
            self.deploy_of[(run, e.get("deploy_key"))] = (e.get("container"), e.get("version"))
        if step == "hold" and (what := self.deploy_of.get((run, e.get("deploy_key")))):
            container, version = what
            self.verdicts[(e.get("env"), container, run, version)] = HELD
        if step == "test" and is_claim(e):
            key = (e.get("env"), e.get("container"), run, e.get("version"))
            # A line without a verdict (written by hand, or before gates) proves nothing either way.
            self.verdicts[key] = {True: VERIFIED, False: FAILED}.get(e.get("passed"), UNTESTED)  # type: ignore[arg-type]

    def _move(self, number: int, e: dict[str, object]) -> None:
        env, container, version, restored = e.get("env"), e.get("container"), e.get("version"), e.get("restored")
        if not (env in ENVIRONMENTS and valid_name(container, CONTAINER_ID) and valid_name(version, VERSION)):
            self.skipped += 1
            return
        assert isinstance(env, str) and isinstance(container, str) and isinstance(version, str)
        record: _Deployed | _RolledBack
        if e.get("step") == "deploy":
            record = _Deployed(number, env, container, version, e)
            self.deployed[(env, container, e.get("run_id"), version)] = record
            self.held[env][container] = record
        else:
            readable = isinstance(restored, dict) and valid_name(restored.get("version"), VERSION)
            if restored is not None and not readable:
                self.skipped += 1
                return
            back = restored if isinstance(restored, dict) else None
            was = self.deployed.get((env, container, back.get("run_id"), back.get("version"))) if back else None
            record = _RolledBack(env, container, version, e, back, was)
            if back is None:
                self.held[env].pop(container, None)
            else:
                self.held[env][container] = record
        self.moved[env].append(record)
        self.order.append((env, len(self.moved[env]) - 1))

    def _placement(self, r: _Deployed | _RolledBack) -> Placement:
        if isinstance(r, _Deployed):
            e, run = r.entry, r.entry.get("run_id")
            placement = Placement(r.version, text_of(e.get("release_key")), text_of(run), text_of(e.get("at")))
            placement.approved_by = self._approver(e)
            placement.config_written = (self.first_gated is not None and r.number > self.first_gated) or (
                run in self.gated_runs
            )
            placement.config_sha256 = text_of(e.get("config_sha256"))
            placement.state = self.verdicts.get((r.env, r.container, run, r.version), UNTESTED)
            return placement
        assert r.restored is not None
        deployed = self._placement(r.was) if r.was is not None else None
        back = Placement(*(text_of(r.restored.get(k)) for k in ENTRY_FIELDS))
        if "approved_by" not in r.restored and deployed is not None:
            back.approved_by = deployed.approved_by
        back.config_written = deployed.config_written if deployed is not None else True
        back.config_sha256 = text_of(r.restored.get("config_sha256")) or (deployed.config_sha256 if deployed else None)
        was = (r.env, r.container, r.restored.get("run_id"), r.restored.get("version"))
        back.state = self.verdicts.get(was, UNTESTED)
        return back

    def _approver(self, e: dict[str, object]) -> str | None:
        run = e.get("run_id")
        return self.approvers.get((run, e.get("deploy_key"))) or self.approvers.get((run, e.get("release_key")))

    def _move_of(self, r: _Deployed | _RolledBack) -> Move:
        e = r.entry
        key, run, at = (text_of(e.get(k)) for k in ("release_key", "run_id", "at"))
        where = (r.env, r.container, r.version, key, run, at)
        if isinstance(r, _Deployed):
            return Move(*where, self._approver(e))
        return Move(*where, text_of(e.get("by")), True, self._placement(r) if r.restored is not None else None)


def replay(entries: list[dict[str, object]]) -> tuple[dict[str, dict[str, Placement]], list[Move], int]:
    """Applied deploy and rollback lines replayed in ledger order: what each environment holds, every move
    in ledger order, and how many such lines were skipped for lacking a valid environment, container or version.
    """
    r = Replay()
    r.feed(entries)
    return r.placements(), r.moves(), r.skipped


def valid_name(value: object, pattern: re.Pattern[str]) -> bool:
    # The names make paths: a hand-written line must not send a comparison outside the workspace.
    return isinstance(value, str) and bool(pattern.fullmatch(value)) and ".." not in value


def text_of(value: object) -> str | None:
    return clip(value, TEXT_MAX) if isinstance(value, str) else None
