"""Faults that once went unnoticed, planted again: each must make the tests fail.

`make faults` copies the repository into a temporary folder once per fault, changes the code there (never
here), runs the test files that should notice, and prints caught or MISSED for each. A fault names the
function (or module-level name) it changes, found through `ast` in whatever product file holds it now, and
a piece of code that must occur once in it: moving the function to another module does not make it stale;
rewriting that code does, and a stale fault is reported (as is a test file that no longer exists), so this
list cannot silently stop planting anything. `make faults ARGS="-k ledger"` plants a subset; `--all` runs
the whole suite against each fault instead of its own test files.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_PRODUCT = ("tests", "resources", "mutants", "examples")


@dataclass(frozen=True)
class Fault:
    name: str
    where: str  # a function ("ReleaseManagement.build", "atomic_write") or a module-level name
    old: str  # must occur exactly once in it
    new: str
    tests: tuple[str, ...]


def _fault(name: str, where: str, old: str, new: str, *tests: str) -> Fault:
    return Fault(name, where, old, new, tuple(f"tests/{t}" for t in tests))


FAULTS = [
    # --- idempotent steps, atomic writes, the ledger
    _fault(
        "build always rewrites its artifact",
        "ReleaseManagement.build",
        "            applied = write_if_changed(artifact, build_content(d, step.release_key))\n",
        "            applied = not artifact.exists() or artifact.read_bytes() != build_content(d, step.release_key)\n"
        "            __import__('orchestrator.workspace').workspace.atomic_write(artifact, "
        "build_content(d, step.release_key))\n",
        "test_idempotency.py",
        "test_release_management.py",
    ),
    _fault(
        "deploy writes its file twice",
        "ReleaseManagement.deploy",
        "            applied = write_if_changed(self.env_dir(env) / name, data)\n",
        "            applied = write_if_changed(self.env_dir(env) / name, data)\n"
        "            __import__('orchestrator.workspace').workspace.atomic_write(self.env_dir(env) / name, data)\n",
        "test_idempotency.py",
        "test_release_management.py",
    ),
    _fault(
        "an activity runs each step twice",
        "ReleaseActivities._step",
        "            outcome = getattr(self.rm, verb)(",
        "            getattr(self.rm, verb)(step, attempt=attempt, live=Liveness(activity.heartbeat, _cancelled))\n"
        "            outcome = getattr(self.rm, verb)(",
        "test_idempotency.py",
        "test_workflows.py",
    ),
    _fault(
        "writes without the temporary file and rename",
        "atomic_write",
        '    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")\n',
        "    path.write_bytes(data)\n    return\n",
        "test_idempotency.py",
        "test_release_management.py",
    ),
    _fault(
        "the ledger without its flock",
        "Ledger._locked",
        "            fcntl.flock(fd, fcntl.LOCK_EX)\n",
        "            pass\n",
        "test_ledger.py",
    ),
    _fault(
        "the ledger's de-duplication removed",
        "Ledger.record_unless_claimed",
        "            applied = not claimed\n",
        "            applied = True\n",
        "test_ledger.py",
        "test_idempotency.py",
    ),
    # --- a deploy and its configuration
    _fault(
        "the old version removed before the new one is written",
        "ReleaseManagement.deploy",
        "        applied = CommandSteps(",
        "        [old.unlink() for old in self.files_of(env, d.container_id) if old.name != name]\n"
        "        applied = CommandSteps(",
        "test_idempotency.py",
        "test_deploy.py",
    ),
    _fault(
        "the old version removed before the configuration names the new one",
        "ReleaseManagement.deploy",
        "        if self.midway is not None:\n",
        "        [old.unlink() for old in self.files_of(env, d.container_id) if old.name != name]\n"
        "        if self.midway is not None:\n",
        "test_deploy.py",
    ),
    _fault(
        "the configuration written before the artifact it names",
        "ReleaseManagement.deploy",
        "        applied = CommandSteps(",
        "        self.config_path(env, d.container_id).parent.mkdir(exist_ok=True)\n"
        "        write_if_changed(self.config_path(env, d.container_id), render_config(d, env, step.release_key))\n"
        "        applied = CommandSteps(",
        "test_deploy.py",
    ),
    _fault(
        "placeholders in configuration values left as they are",
        "render_config",
        '.replace("{env}", env)',
        "",
        "test_deploy.py",
    ),
    # --- verified upstream
    _fault(
        "a deploy no longer asks the ledger whether its version passed upstream",
        "promotable",
        "    if not proof.passed:\n",
        "    if False:\n",
        "test_promotion.py",
    ),
    _fault(
        "promotion from DEV instead of the environment before",
        "promotable",
        "ws.env_dir(ENVIRONMENTS[i - 1])",
        'ws.env_dir("DEV")',
        "test_release_management.py",
    ),
    _fault(
        "a test that failed its gate counts as a proof",
        "proof_of",
        'passed = entry.get("passed") is True',
        "passed = True",
        "test_promotion.py",
    ),
    _fault(
        "the ledger's index learns no proofs",
        "ClaimIndex._index",
        '            self.db.executemany(\n                "INSERT OR REPLACE INTO proofs VALUES (?, ?, ?)",',
        "            (lambda *_: None)(\n                None,",
        "test_promotion.py",
    ),
    # --- quality gates and the health check
    _fault(
        "a retry runs the checks again instead of reading this run's verdict",
        "run_checks",
        "        verdict = verdict_of(report, step.run_id, step.retry)\n",
        "        verdict = None\n",
        "test_gates.py",
    ),
    _fault(
        "a check that fails does not stop the checks after it",
        "run_checks",
        "        if not verdict[0]:\n",
        "        if not verdict[0] and name == HEALTH:\n",
        "test_gates.py",
    ),
    _fault(
        "the health check never runs",
        "run_checks",
        "    for name in [*d.checks_in(env), HEALTH]:\n",
        "    for name in d.checks_in(env):\n",
        "test_gates.py",
    ),
    _fault(
        "a health failure raised as a gate failure",
        "ReleaseManagement.test",
        "            error = VerificationFailed if failed == HEALTH else GateFailed\n",
        "            error = GateFailed\n",
        "test_gates.py",
    ),
    _fault(
        "a gate failure retried",
        "NON_RETRYABLE_ERRORS",
        "        GateFailed,\n",
        "",
        "test_release_management.py",
    ),
    _fault(
        "a health failure retried",
        "NON_RETRYABLE_ERRORS",
        "        VerificationFailed,\n",
        "",
        "test_gates.py",
    ),
    _fault(
        "the worker ignores FAILING_CHECKS",
        "serve",
        "        failing_checks=settings.failing_checks,\n",
        "",
        "test_gates.py",
    ),
    _fault(
        "FAILURE_AT=midway never strikes",
        "ReleaseActivities.__init__",
        "            rm.midway = self._midway\n",
        "            pass\n",
        "test_deploy.py",
    ),
    # --- rollbacks
    _fault(
        "rollback-env after a rollback picks the version the environment holds",
        "rollback_version",
        '            held = str(restored.get("version")) if isinstance(restored, dict) else None\n',
        "            pass\n",
        "test_rollback.py",
    ),
    _fault(
        "a rollback line names the version the rollback before it replaced, not what it restored",
        "holder_before",
        "            holder = restored if isinstance(restored, dict) else None\n",
        "            pass\n",
        "test_rollback.py",
    ),
    _fault(
        "with two deploys held, a decision without --deploy picks one",
        "FailurePolicy.held_deploy",
        "            if len(held) > 1:\n",
        "            if False:\n",
        "test_rollback.py",
    ),
    # --- locks and freezes
    _fault(
        "a deploy stops waiting for the next environment's lock",
        "Deploys._enter",
        "        await self.locks.wait(d, following[0], answers)\n",
        "        pass\n",
        "test_locks.py",
    ),
    _fault(
        "a deploy gives its lock back right after its deploy",
        "Deploys._enter",
        "give_back=[source], take=ahead",
        "give_back=[source, step.env], take=ahead",
        "test_locks.py",
    ),
    _fault(
        "a grant that comes before the answer to its request is dropped",
        "LockClient.grant",
        "        if target_of(lock) in self.asking or ",
        "        if ",
        "test_locks.py",
    ),
    _fault(
        "a standing lock grants a target that another release holds",
        "StandingLockWorkflow.take",
        "        if self.owner is None and not self.waiters:\n",
        "        if True:\n",
        "test_locks.py",
    ),
    _fault(
        "a freeze that begins while a deploy waits to enter is not waited out",
        "Deploys._may_enter",
        "        await self.freeze.wait_out(step)\n",
        "        pass\n",
        "test_freeze.py",
    ),
    # --- people in the loop
    _fault(
        "the 'release is not approved' check removed",
        "Approvals.settle",
        "        if not state.approved:\n",
        "        if False:\n",
        "test_approvals.py",
    ),
    _fault(
        "the validator's 'skipped' rule removed",
        "Approvals._targets",
        "        if _skipped(deploy):\n",
        "        if False:\n",
        "test_approvals.py",
    ),
    _fault(
        "the validator's 'still gathering' rule removed",
        "Approvals._targets",
        "        if not state.deploys:\n",
        "        if False:\n",
        "test_approvals.py",
    ),
    _fault(
        "the approval system's scan overwrites a person's approval",
        "Approvals.ask_approval_system",
        "            d.approved = d.approved or d.deploy_key not in report.unapproved_deploys",
        "            d.approved = d.deploy_key not in report.unapproved_deploys",
        "test_approvals.py",
    ),
    _fault(
        "invalid signals no longer noted in the release's events",
        "update_and_signal",
        '            decided.run.event(f"ignored {what} signal: {err}")\n',
        "            pass\n",
        "test_approvals.py",
        "test_reliability.py",
    ),
    # --- names, text and exit codes
    _fault(
        "the '..' rule of id validation removed",
        "check_name",
        '    if not pattern.fullmatch(value) or ".." in value:',
        "    if not pattern.fullmatch(value):",
        "test_release_management.py",
    ),
    _fault(
        "retry counts dropped from status",
        "_retries",
        "    n = c.attempts - c.steps_done\n",
        "    n = 0\n",
        "test_release_management.py",
        "test_cli.py",
    ),
    _fault(
        "cancel after the release finished exits 0",
        "cancel",
        '    print(f"Release {key} finished before the cancel took effect: SUCCESS")\n    return 1',
        '    print(f"Release {key} finished before the cancel took effect: SUCCESS")\n    return 0',
        "test_cli.py",
    ),
    _fault(
        "'no worker polling' exits 2 instead of 3",
        "start",
        "    if result is None:\n        return 3",
        "    if result is None:\n        return 2",
        "test_cli.py",
        "test_first_minutes.py",
    ),
    # --- the trust boundary (issue 18)
    _fault(
        "a start that carries its own deploys is not refused",
        "ReleaseWorkflow._gather",
        "        if request.model_extra:\n            self._refuse_extra(request)",
        "        if False:\n            self._refuse_extra(request)",
        "test_workflows.py",
        "test_trust.py",
    ),
    _fault(
        "a test line without a verdict counts as a pass",
        "proof_of",
        'passed = entry.get("passed") is True',
        'passed = entry.get("passed", True) is True',
        "test_promotion.py",
        "test_trust.py",
    ),
    _fault(
        "a promotion copies whatever bytes sit upstream",
        "promotable",
        "    if sha256_of(path) != proof.digest:\n        raise changed\n",
        "",
        "test_promotion.py",
        "test_trust.py",
    ),
    _fault(
        "an edited line does not break the chain",
        "Chain._next",
        "        if link != self.head:\n",
        "        if link != self.head and False:\n",
        "test_ledger.py",
        "test_trust.py",
    ),
    _fault(
        "the worker follows symbolic links",
        "Workspace.inside",
        "            if here.is_symlink():\n",
        "            if False:\n",
        "test_trust.py",
    ),
    _fault(
        "a short option's path is not checked",
        "_escapes",
        "        candidates.append(arg[2:])",
        "        pass",
        "test_trust.py",
        "test_step_commands.py",
    ),
    _fault(
        "anyone may act in an environment with approvers",
        "check_actor",
        "if approvers is not None and name not in approvers:",
        "if False:",
        "test_trust.py",
    ),
    _fault(
        "the starter approves their own release's entry",
        "check_entry_approver",
        "if access.prevent_self_approval and name == release.started_by:",
        "if False:",
        "test_trust.py",
    ),
    # --- the dashboard
    _fault(
        "the dashboard acts without its form's token",
        "_act",
        'elif not dash.dashboard.token_ok(viewer, form.get("csrf", "")):',
        "elif False:",
        "test_dashboard.py",
    ),
    _fault(
        "the dashboard trusts the proxy's header from any address",
        "DashboardSettings.viewer",
        "if peer not in self.proxies:",
        "if False:",
        "test_dashboard.py",
        "test_dashboard_views.py",
    ),
    _fault(
        "the dashboard misses a ledger rewritten in place",
        "FileTail.catch_up",
        " or st.st_size == self.stamp[0]",
        "",
        "test_dashboard_views.py",
    ),
    _fault(
        "inventory exits 0 whatever it found",
        "print_inventory",
        "return 0 if inv.trusted() else 1",
        "return 0",
        "test_inventory.py",
        "test_trust.py",
    ),
]


def product_files(root: Path) -> list[Path]:
    packages = [p for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file() and p.name not in NOT_PRODUCT]
    return sorted([*root.glob("*.py"), *(f for package in packages for f in package.rglob("*.py"))])


def locate(where: str, root: Path) -> tuple[Path, int, int]:
    """The file, and the first and last line of the one definition named `where` in the product code."""
    found = []
    for path in product_files(root):
        tree = ast.parse(path.read_text())
        for scope, node in _definitions(tree.body, ""):
            if scope == where:
                found.append((path, node.lineno, node.end_lineno or node.lineno))
    if len(found) != 1:
        raise LookupError(f"{where} is defined {len(found)} times in the product code, not once")
    return found[0]


def _definitions(body: list[ast.stmt], prefix: str) -> list[tuple[str, ast.stmt]]:
    """Every function, class and module-level assignment, by qualified name ("Class.method")."""
    found: list[tuple[str, ast.stmt]] = []
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.append((prefix + node.name, node))
            if isinstance(node, ast.ClassDef):
                found += _definitions(node.body, f"{prefix}{node.name}.")
        elif isinstance(node, ast.Assign) and not prefix:
            found += [(t.id, node) for t in node.targets if isinstance(t, ast.Name)]
    return found


def plant(fault: Fault, root: Path) -> None:
    path, first, last = locate(fault.where, root)
    lines = path.read_text().splitlines(keepends=True)
    inside = "".join(lines[first - 1 : last])
    if inside.count(fault.old) != 1:
        raise LookupError(f"{fault.where} ({path.name}) holds the code to change {inside.count(fault.old)} times")
    path.write_text("".join(lines[: first - 1]) + inside.replace(fault.old, fault.new) + "".join(lines[last:]))


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
    # A test stopped by -x can leave a process that still writes there (a venv being made): cleanup tolerates it.
    with tempfile.TemporaryDirectory(prefix="fault-", ignore_cleanup_errors=True) as tmp:
        root = Path(tmp)
        copy_repo(root)
        try:
            plant(fault, root)
        except LookupError as e:
            return "stale", str(e)
        missing = [t for t in fault.tests if not (root / t).exists()]
        if missing:
            return "stale", f"no test file {', '.join(missing)}"
        tests = ["tests"] if whole_suite else list(fault.tests)
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
