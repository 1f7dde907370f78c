"""Mutation testing (`make mutation`): mutmut over the product modules, then the score per file and the survivors.

    .venv/bin/python resources/mutation.py                  # every mutant of the four files ([tool.mutmut])
    .venv/bin/python resources/mutation.py 'shared.*'       # only these mutants (mutmut's name patterns)
    .venv/bin/python resources/mutation.py --report         # print the last results again, run nothing
    .venv/bin/python resources/mutation.py --max-children 2 # mutants at once (default 1: the machine is shared)

mutmut keeps its results in mutants/: a second run tests only the functions that changed since.
`rm -rf mutants` starts from scratch. This script runs mutmut in its own process so that it can:

- leave out test files of the selection that do not exist (yet);
- give every pytest run a plugin that makes the suite fit mutmut's fork server:
  tests/conftest.py ends each pytest run with os._exit (temporalio issue #300), which would end
  the fork server and the stats run before they report; the plugin turns that exit into a no-op
  (mutmut's processes leave with os._exit themselves, so the abort at teardown cannot happen);
  mutmut's trampolines pass through the workflow sandbox (else the sandbox imports a second
  mutmut, whose coverage records and mutant switch the run never sees); a test of a mutant gets
  a time limit of its own (a workflow task that fails again and again makes a test wait, not fail);
  and a mutant's process stopped for a timeout first kills the test servers it started.

It always exits 0: the figures are for reading, not a gate.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# mutmut's status for a timed-out mutant (stats.status_by_exit_code).
TIMEOUT_EXIT = 36
# A test of a mutant may take this many times its clean time (setup included in the slack, in seconds).
PER_TEST_FACTOR, PER_TEST_SLACK = 3, 20
KILLED = {"killed", "timeout", "caught by type check"}
# Which of the selected test files a mutant of each module runs, of those mutmut found calling it.
# Nearly every workflow test calls release_management and shared through the activities; with
# those too, a surviving mutant there would cost minutes, and the whole run days. So a mutant of
# the system being orchestrated answers to its own tests, one of the workflows to the workflow tests.
UNIT = (
    "tests/test_release_management.py",
    "tests/test_ledger.py",
    "tests/test_mutation_gaps.py",
    "tests/test_promotion.py",
    "tests/test_gates.py",
    "tests/test_catalog.py",
    "tests/test_deploy.py",
)
WORKFLOW = (
    "tests/test_release_run.py",
    "tests/test_workflows.py",
    "tests/test_approvals.py",
    "tests/test_reliability.py",
)
# By the mutant's module (its name's dotted prefix); the longest prefix that matches wins.
TESTS_BY_MODULE = {
    "release_management": {*UNIT, "tests/test_idempotency.py"},
    "shared": {*UNIT, "tests/test_idempotency.py"},
    "orchestrator": {*UNIT, "tests/test_idempotency.py"},
    "activities": {*UNIT, "tests/test_idempotency.py", *WORKFLOW},
    "orchestrator.flow": {*WORKFLOW, "tests/test_replay.py", "tests/test_freeze.py", "tests/test_trust.py"},
    "orchestrator.freeze": {*UNIT, "tests/test_freeze.py"},
    # The trust boundary's rules: their own tests, and the adversary's.
    "orchestrator.names": {*UNIT, "tests/test_trust.py"},
    "orchestrator.access": {*WORKFLOW, "tests/test_trust.py"},
    "orchestrator.ledger_chain": {*UNIT, "tests/test_trust.py"},
}


def tests_for(mutant: str) -> set[str] | None:
    """The test files a mutant answers to (None: all that mutmut found calling it)."""
    module = mutant.rsplit(".", 1)[0]
    matches = [prefix for prefix in TESTS_BY_MODULE if module == prefix or module.startswith(prefix + ".")]
    return TESTS_BY_MODULE[max(matches, key=len)] if matches else None


def _testing_a_mutant() -> bool:
    return os.environ.get("MUTANT_UNDER_TEST") not in (None, "", "stats", "fail", "mutant_generation", "list_all_tests")


def _kill_children_and_exit(signum: int, frame: Any) -> None:
    """A timeout (SIGXCPU from mutmut, SIGALRM per test) or SIGTERM: no test server outlives this mutant's process."""
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(OSError):
            for pid in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
    os._exit(TIMEOUT_EXIT)


def _plugin() -> object:
    """A pytest plugin for every pytest run mutmut makes (see the module's docstring)."""
    import pytest

    class ForkServerFit:
        def pytest_configure(self, config: pytest.Config) -> None:
            from temporalio.worker.workflow_sandbox import SandboxRestrictions

            # SandboxRestrictions.default shares this set; a mutated module imports mutmut's trampolines.
            SandboxRestrictions.passthrough_modules_default.add("mutmut")
            if _testing_a_mutant():
                for signum in (signal.SIGXCPU, signal.SIGTERM, signal.SIGALRM):
                    signal.signal(signum, _kill_children_and_exit)

        def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
            if not _testing_a_mutant():
                return
            keep = tests_for(os.environ["MUTANT_UNDER_TEST"])
            if keep is None:
                return
            selected = [item for item in items if item.nodeid.split("::", 1)[0] in keep]
            if selected and len(selected) < len(items):
                config.hook.pytest_deselected(items=[item for item in items if item not in selected])
                items[:] = selected

        @pytest.hookimpl(wrapper=True)
        def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
            """A mutant that makes a test hang (a workflow task failing again and again) is a timeout within
            PER_TEST_FACTOR x the test's clean time + PER_TEST_SLACK, not after mutmut's limit for all its tests."""
            if _testing_a_mutant():
                from mutmut.state import state

                clean = state().duration_by_test.get(item.nodeid, 0.0)
                signal.alarm(math.ceil(PER_TEST_FACTOR * clean + PER_TEST_SLACK))
            try:
                return (yield)
            finally:
                signal.alarm(0)

        @pytest.hookimpl(wrapper=True, tryfirst=True)
        def pytest_unconfigure(self, config: pytest.Config) -> Any:
            """Around tests/conftest.py's pytest_unconfigure: its os._exit returns instead of ending the process."""
            real_exit = os._exit
            os._exit = lambda status: None  # type: ignore[assignment]
            try:
                return (yield)
            finally:
                os._exit = real_exit

    return ForkServerFit()


def configure_mutmut() -> None:
    """mutmut's configuration from pyproject.toml, less missing test files; the plugin in every pytest run."""
    from mutmut.configuration import config
    from mutmut.runners.harness import PytestRunner

    cfg = config()
    selection = cfg.pytest_add_cli_args_test_selection
    cfg.pytest_add_cli_args_test_selection = [
        arg for arg in selection if arg.startswith("-") or (Path(arg.split("::")[0])).exists()
    ]
    left_out = sorted(set(selection) - set(cfg.pytest_add_cli_args_test_selection))
    if left_out:
        print(f"Not in this run (no such file): {', '.join(left_out)}")

    execute_pytest = PytestRunner.execute_pytest

    def with_plugin(self: PytestRunner, params: list[str], **kwargs: Any) -> int:
        kwargs["plugins"] = [*kwargs.get("plugins", []), _plugin()]
        return execute_pytest(self, params, **kwargs)

    PytestRunner.execute_pytest = with_plugin  # type: ignore[method-assign]


def retest_survivors() -> None:
    """Forget the verdicts that a new test can change: mutmut would keep a survivor of the last run as it is."""
    from mutmut.__main__ import walk_mutatable_files
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code

    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        again = [k for k, code in data.exit_code_by_key.items() if status_by_exit_code[code] not in KILLED]
        if again:
            data.exit_code_by_key.update(dict.fromkeys(again))
            data.save()


def run_mutmut(names: list[str], max_children: int) -> None:
    from mutmut.__main__ import _run

    try:
        _run(names, max_children)
    except SystemExit as stop:
        if stop.code:
            from mutmut.configuration import config

            selection = " ".join(config().pytest_add_cli_args_test_selection)
            print(f"mutmut stopped (exit {stop.code}); the results so far follow.")
            print("If it failed to collect stats or run the clean tests, a test fails on the unmutated code,")
            print(f"in mutants/ (the output is not shown): cd mutants && ../.venv/bin/python -m pytest -x {selection}")


def one_line_diff(name: str, path: Path) -> str:
    """The mutant as `-old  =>  +new`, from mutmut's unified diff of the function."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    try:
        diff = get_diff_for_mutant(name, path=path)
    except Exception as error:  # a diff is a courtesy; the name is enough to find the mutant
        return f"(no diff: {error})"
    lines = diff.splitlines()
    old = [line[1:].strip() for line in lines if line.startswith("-") and not line.startswith("---")]
    new = [line[1:].strip() for line in lines if line.startswith("+") and not line.startswith("+++")]
    return f"-{' / '.join(old)}  =>  +{' / '.join(new)}"


def report() -> None:
    from mutmut.__main__ import walk_mutatable_files
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code

    rows, survivors = [], []
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        statuses = {name: status_by_exit_code[code] for name, code in data.exit_code_by_key.items()}
        count = Counter(statuses.values())
        total = len(statuses)
        killed = sum(count[s] for s in KILLED)
        rows.append((str(path), killed, total, count))
        survivors += [
            (path, name, status) for name, status in sorted(statuses.items()) if status not in KILLED | {"not checked"}
        ]

    if not any(total for _, _, total, _ in rows):
        print("No mutation results yet: `make mutation` runs mutmut (MUTANTS='shared.*' for some).")
        return
    print()
    print(f"{'file':<24} {'killed':>7} {'total':>6} {'score':>7}   survived  no tests  timeout  not run  other")
    for path, killed, total, count in rows:
        tested = total - count["not checked"]
        score = f"{100 * killed / tested:.1f}%" if tested else "-"
        other = total - killed - count["survived"] - count["no tests"] - count["not checked"]
        print(
            f"{path:<24} {killed:>7} {total:>6} {score:>7}   {count['survived']:>8} {count['no tests']:>9}"
            f" {count['timeout']:>8} {count['not checked']:>8} {other:>6}"
        )
    killed, total = sum(r[1] for r in rows), sum(r[2] for r in rows)
    tested = total - sum(r[3]["not checked"] for r in rows)
    if tested:
        print(f"{'all':<24} {killed:>7} {total:>6} {f'{100 * killed / tested:.1f}%':>7}")
    print("score: killed (timeouts included) / mutants tested; not run: not tested yet (a partial run)")
    print(f"\nSurvivors ({len(survivors)}); `.venv/bin/mutmut show NAME` shows one in full:")
    current = None
    for path, name, status in survivors:
        if path != current:
            print(f"\n{path}")
            current = path
        tag = "" if status == "survived" else f" [{status}]"
        print(f"  {name}{tag}\n      {one_line_diff(name, path)}")


def interrupted() -> bool:
    """Whether a run stopped while mutmut wrote mutants/: a mutated file left empty or without its
    .meta, which mutmut would take as up to date (it compares modification times) and never redo."""
    from mutmut.configuration import config

    folder = REPO / "mutants"
    for source in config().source_paths:
        copy = folder / source
        if copy.exists() and (copy.stat().st_size == 0 or not copy.with_name(copy.name + ".meta").exists()):
            print(f"mutants/{source} is incomplete (an interrupted run): starting afresh")
            return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutant names or patterns, such as 'shared.*' (default: all)")
    parser.add_argument("--max-children", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--fresh", action="store_true", help="forget every result of earlier runs (rm -rf mutants)")
    parser.add_argument("--keep-survivors", action="store_true", help="do not test again the survivors of the last run")
    parser.add_argument("--report", action="store_true", help="only print the results of the last run")
    args = parser.parse_args()

    os.chdir(REPO)
    started = time.monotonic()
    if not args.report:
        configure_mutmut()
        if args.fresh or interrupted():
            shutil.rmtree(REPO / "mutants", ignore_errors=True)
        elif not args.keep_survivors:
            retest_survivors()
        run_mutmut(args.names, args.max_children)
        print(f"\nmutmut ran for {time.monotonic() - started:.0f} s")
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
