"""Faults that once went unnoticed, planted again: each must make the tests fail.

`make faults` copies the repository into a temporary folder once per fault, changes the
code there (never here), runs the test files that should notice, and prints caught or
MISSED for each. A fault whose code is no longer found is reported as stale, so this list
cannot silently stop planting anything. `make faults ARGS="-k ledger"` plants a subset;
`--all` runs the whole suite against each fault instead of its own test files.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Fault:
    name: str
    file: str
    old: str  # must occur exactly once in file
    new: str
    tests: tuple[str, ...]


FAULTS = [
    Fault(
        "build always rewrites its artifact",
        "release_management.py",
        "            if applied:\n                atomic_write(artifact, content)",
        "            if True:\n                atomic_write(artifact, content)",
        ("tests/test_idempotency.py", "tests/test_release_management.py"),
    ),
    Fault(
        "deploy writes its file twice",
        "release_management.py",
        "        applied = _write_if_changed(target, data)\n",
        "        applied = _write_if_changed(target, data)\n        atomic_write(target, data)\n",
        ("tests/test_idempotency.py", "tests/test_release_management.py"),
    ),
    Fault(
        "an activity runs each step twice",
        "activities.py",
        "            outcome = getattr(self.rm, verb)(",
        "            getattr(self.rm, verb)(step, attempt=attempt, progress=activity.heartbeat, cancelled=_cancelled)\n"
        "            outcome = getattr(self.rm, verb)(",
        ("tests/test_idempotency.py", "tests/test_workflows.py"),
    ),
    Fault(
        "writes without the temporary file and rename",
        "release_management.py",
        '    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")\n',
        "    path.write_bytes(data)\n    return\n"
        '    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")\n',
        ("tests/test_idempotency.py", "tests/test_release_management.py"),
    ),
    Fault(
        "the old version removed before the new one is written",
        "release_management.py",
        "        applied = _write_if_changed(target, data)\n",
        "        for old in target_dir.iterdir():\n"
        "            if old.name != name and old.is_file() and _container_of(old.name) == d.container_id:\n"
        "                old.unlink()\n"
        "        applied = _write_if_changed(target, data)\n",
        ("tests/test_idempotency.py", "tests/test_release_management.py"),
    ),
    Fault(
        "the old version removed before the configuration names the new one",
        "release_management.py",
        '        if self.midway is not None:\n            self.midway("deploy", step, attempt)\n',
        "        for old in target_dir.iterdir():\n"
        "            if old.name != name and old.is_file() and _container_of(old.name) == d.container_id:\n"
        "                old.unlink()\n"
        '        if self.midway is not None:\n            self.midway("deploy", step, attempt)\n',
        ("tests/test_gates.py",),
    ),
    Fault(
        "the configuration written before the artifact it names",
        "release_management.py",
        "        applied = _write_if_changed(target, data)\n        if self.midway is not None:\n",
        "        config = self.config_path(env, d.container_id)\n"
        "        config.parent.mkdir(exist_ok=True)\n"
        "        _write_if_changed(config, render_config(d, env, step.release_key))\n"
        "        applied = _write_if_changed(target, data)\n        if self.midway is not None:\n",
        ("tests/test_gates.py",),
    ),
    Fault(
        "placeholders in configuration values left as they are",
        "release_management.py",
        '.replace("{env}", env)',
        "",
        ("tests/test_gates.py",),
    ),
    Fault(
        "a deploy no longer asks the ledger whether its version passed upstream",
        "release_management.py",
        "        if not self.ledger.verified(d.container_id, d.version, upstream):\n",
        "        if False:\n",
        ("tests/test_gates.py",),
    ),
    Fault(
        "a test that failed its gate counts as a proof",
        "release_management.py",
        'entry.get("env")), entry.get("passed", True) is True\n',
        'entry.get("env")), True\n',
        ("tests/test_gates.py",),
    ),
    Fault(
        "test lines written before quality gates no longer count as passed",
        "release_management.py",
        'entry.get("passed", True) is True',
        'entry.get("passed", False) is True',
        ("tests/test_gates.py",),
    ),
    Fault(
        "the ledger's index learns no proofs",
        "release_management.py",
        "            self.db.executemany(\n"
        '                "INSERT OR REPLACE INTO proofs VALUES (?, ?)", '
        "((k, int(v)) for k, v in sorted(verdicts.items()))\n"
        "            )\n",
        "",
        ("tests/test_gates.py",),
    ),
    Fault(
        "a retry runs the checks again instead of reading this run's verdict",
        "release_management.py",
        "            verdict = _verdict(report, step.run_id, step.retry)\n",
        "            verdict = None\n",
        ("tests/test_gates.py",),
    ),
    Fault(
        "a check that fails does not stop the checks after it",
        "release_management.py",
        "            if not passed:\n",
        "            if not passed and check == checks[-1]:\n",
        ("tests/test_gates.py",),
    ),
    Fault(
        "the worker ignores FAILING_CHECKS",
        "run_worker.py",
        ", failing_checks=settings.failing_checks",
        "",
        ("tests/test_gates.py",),
    ),
    Fault(
        "FAILURE_AT=midway never strikes",
        "activities.py",
        "            rm.midway = self._midway\n",
        "            pass\n",
        ("tests/test_gates.py",),
    ),
    Fault(
        "a gate failure retried",
        "release_management.py",
        "(UnknownRelease, CatalogError, MissingArtifact, InvalidStep, NotVerified, GateFailed, VerificationFailed)",
        "(UnknownRelease, CatalogError, MissingArtifact, InvalidStep, NotVerified, VerificationFailed)",
        ("tests/test_release_management.py",),
    ),
    Fault(
        "a health failure retried",
        "release_management.py",
        "NotVerified, GateFailed, VerificationFailed)",
        "NotVerified, GateFailed)",
        ("tests/test_gates.py",),
    ),
    Fault(
        "the health check never runs",
        "release_management.py",
        "        for check in [*checks, HEALTH]:\n",
        "        for check in checks:\n",
        ("tests/test_gates.py",),
    ),
    Fault(
        "a health failure raised as a gate failure",
        "release_management.py",
        "                error = VerificationFailed if check == HEALTH else GateFailed\n",
        "                error = GateFailed\n",
        ("tests/test_gates.py",),
    ),
    Fault(
        "promotion from DEV instead of the environment before",
        "release_management.py",
        "        return self.env_dir(ENVIRONMENTS[i - 1]), ENVIRONMENTS[i - 1]",
        '        return self.env_dir("DEV"), ENVIRONMENTS[i - 1]',
        ("tests/test_release_management.py",),
    ),
    Fault(
        "the ledger without its flock",
        "release_management.py",
        "            fcntl.flock(fd, fcntl.LOCK_EX)\n",
        "            pass\n",
        ("tests/test_ledger.py",),
    ),
    Fault(
        "the '..' rule of id validation removed",
        "shared.py",
        '    if not pattern.fullmatch(value) or ".." in value:',
        "    if not pattern.fullmatch(value):",
        ("tests/test_release_management.py",),
    ),
    Fault(
        "the 'release is not approved' check removed",
        "workflows.py",
        "        if not self.state.approved:\n            raise ApplicationError(",
        "        if False:\n            raise ApplicationError(",
        ("tests/test_approvals.py",),
    ),
    Fault(
        "the validator's 'skipped' rule removed",
        "workflows.py",
        "        if _skipped(deploy):\n",
        "        if False:\n",
        ("tests/test_approvals.py",),
    ),
    Fault(
        "the validator's 'still gathering' rule removed",
        "workflows.py",
        "        if not self.gathered:\n",
        "        if False:\n",
        ("tests/test_approvals.py",),
    ),
    Fault(
        "the approval system's scan overwrites a person's approval",
        "workflows.py",
        "            d.approved = d.approved or d.deploy_key not in report.unapproved_deploys",
        "            d.approved = d.deploy_key not in report.unapproved_deploys",
        ("tests/test_approvals.py",),
    ),
    Fault(
        "invalid signals no longer noted in the release's events",
        "workflows.py",
        '            self._event(f"ignored an approval signal: {err}")\n',
        "            pass\n",
        ("tests/test_approvals.py", "tests/test_reliability.py"),
    ),
    Fault(
        "retry counts dropped from status",
        "shared.py",
        "            if c is not None and c.attempts > c.steps_done:",
        "            if False:",
        ("tests/test_release_management.py", "tests/test_cli.py"),
    ),
    Fault(
        "cancel after the release finished exits 0",
        "run_workflow.py",
        '    print(f"Release {key} finished before the cancel took effect: SUCCESS")\n    return 1',
        '    print(f"Release {key} finished before the cancel took effect: SUCCESS")\n    return 0',
        ("tests/test_cli.py",),
    ),
    Fault(
        "'no worker polling' exits 2 instead of 3",
        "run_workflow.py",
        "    if result is None:\n        return 3",
        "    if result is None:\n        return 2",
        ("tests/test_cli.py", "tests/test_first_minutes.py"),
    ),
    Fault(
        "the ledger's de-duplication removed",
        "release_management.py",
        "            applied = not claimed\n",
        "            applied = True\n",
        ("tests/test_ledger.py", "tests/test_idempotency.py"),
    ),
]


def plant(fault: Fault, root: Path) -> None:
    path = root / fault.file
    text = path.read_text()
    if text.count(fault.old) != 1:
        raise LookupError(f"{fault.file} holds the code to change {text.count(fault.old)} times, not once")
    path.write_text(text.replace(fault.old, fault.new))


def copy_repo(into: Path) -> None:
    """The files git would commit (tracked and new, not ignored), as they are in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def trial(fault: Fault, whole_suite: bool) -> tuple[str, str]:
    """(verdict, detail): caught, MISSED or stale."""
    with tempfile.TemporaryDirectory(prefix="fault-") as tmp:
        root = Path(tmp)
        copy_repo(root)
        try:
            plant(fault, root)
        except LookupError as e:
            return "stale", str(e)
        tests = ["tests"] if whole_suite else [t for t in fault.tests if (root / t).exists()]
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=root,
            capture_output=True,
            text=True,
        )
        if run.returncode == 0:
            return "MISSED", f"{' '.join(tests)} passed"
        failed = [line for line in run.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return "caught", failed[0] if failed else run.stdout.strip().splitlines()[-1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="plant only faults whose name contains this")
    parser.add_argument("--all", action="store_true", help="run the whole suite against each fault")
    parser.add_argument("-j", type=int, default=2, help="faults tried at once (default 2)")
    args = parser.parse_args(argv)
    chosen = [f for f in FAULTS if args.k.lower() in f.name.lower()]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.j) as pool:
        verdicts = list(pool.map(lambda f: trial(f, args.all), chosen))
    for fault, (verdict, detail) in zip(chosen, verdicts, strict=True):
        print(f"{verdict:<7} {fault.name}: {detail}", flush=True)
    caught = sum(v == "caught" for v, _ in verdicts)
    print(f"{caught} of {len(chosen)} planted faults caught in {time.monotonic() - started:.0f} s")
    return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
