"""Start, follow, approve and cancel releases. Run it from the project root with the project's venv:

    .venv/bin/python run_workflow.py [--release-key KEY] [--now]   # start a release and follow it to its result
    .venv/bin/python run_workflow.py status KEY                     # its progress: deploys x environments
    .venv/bin/python run_workflow.py approve KEY --by NAME [--deploy CONTAINER]
    .venv/bin/python run_workflow.py unfreeze KEY --by NAME        # let a FROZEN release promote now
    .venv/bin/python run_workflow.py retry KEY --by NAME [--deploy CONTAINER]     # a HELD deploy: run its checks again
    .venv/bin/python run_workflow.py rollback KEY --by NAME [--deploy CONTAINER]  # a HELD deploy: roll it back
    .venv/bin/python run_workflow.py rollback-env ENV CONTAINER --by NAME [--to VERSION]  # an earlier version again
    .venv/bin/python run_workflow.py cancel KEY                     # stop between steps; says what was deployed
    .venv/bin/python run_workflow.py list                           # the catalog's releases and their latest runs
    .venv/bin/python run_workflow.py inventory [--json]             # what each environment holds, who put it there
    .venv/bin/python run_workflow.py history ENV [CONTAINER]        # promotions and rollbacks into ENV, newest first
    .venv/bin/python run_workflow.py ledger verify                  # the ledger's hash chain, from its first line
    .venv/bin/python run_workflow.py ledger seal --by NAME --reason TEXT  # accept a break someone has looked at
    .venv/bin/python run_workflow.py ledger export [FILE] | import FILE   # move a ledger between stores

Starting a release that is already running attaches to it and follows it.
KEY defaults to RELEASE-NOV-23-INITIAL; `--list` is an alias of `list`.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    # Ctrl+C while the imports below run ends the script at once, before it has started anything. Raised there,
    # Python may deliver the KeyboardInterrupt inside a callback that only prints it, and the script goes on.
    # (Started with Ctrl+C ignored, as a shell starts a background job, it stays ignored.)
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

import argparse
import asyncio
import getpass
import sys
from typing import TYPE_CHECKING

# What every subcommand needs; the Temporal client's modules are imported by those that use Temporal
# (inventory, history and ledger read the workspace only, and start in a fraction of the time).
try:
    from pydantic import ValidationError

    from orchestrator.cli.ledger_checks import ledger_command
    from orchestrator.errors import ReleaseError
    from orchestrator.inventory import check_environment, print_history, print_inventory
    from orchestrator.ledger import open_ledger
    from orchestrator.names import check_approver, check_release_key, describe_validation_error, printable
    from orchestrator.settings import Settings
    from shared import DEFAULT_RELEASE_KEY, ReleaseRequest, RollbackTarget
    from utils import connect, connect_config, exit_now, load_env_file, script_command
except ModuleNotFoundError as missing:
    from orchestrator.dependencies import explain_missing

    explain_missing(missing, "run_workflow.py")

if TYPE_CHECKING:
    from temporalio.client import Client

SUBCOMMANDS = (
    "start",
    "status",
    "approve",
    "unfreeze",
    "retry",
    "rollback",
    "rollback-env",
    "cancel",
    "list",
    "inventory",
    "history",
    "ledger",
)
# The subcommands that record who decided (--by), and what the name says that person does.
DECIDING = {"approve": "approves", "unfreeze": "unfreezes", "retry": "asks to retry", "rollback": "asks to rollback"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    if argv[:1] == ["--list"]:
        argv = ["list", *argv[1:]]
    elif not argv or argv[0] not in (*SUBCOMMANDS, "-h", "--help"):
        argv = ["start", *argv]
    parser = argparse.ArgumentParser(
        prog="run_workflow.py",
        description="Start, follow, approve and cancel releases.",
        epilog="With no subcommand, start: run_workflow.py [--release-key KEY] [--now] [--by NAME] starts the "
        f"release KEY (default {DEFAULT_RELEASE_KEY}) and follows it; --now does not wait for its release date. "
        "run_workflow.py start --help says more.",
    )
    subcommands = parser.add_subparsers(dest="subcommand", required=True)
    start = subcommands.add_parser("start", help="start a release and follow it (the default command)")
    start.add_argument("--release-key", default=DEFAULT_RELEASE_KEY, help=f"default {DEFAULT_RELEASE_KEY}")
    start.add_argument("--now", action="store_true", help="do not wait for the release date")
    start.add_argument("--by", dest="approver", help="who starts it (default: your login name), recorded")
    subcommands.add_parser("status", help="a release's progress").add_argument("release_key")
    approve = subcommands.add_parser("approve", help="approve a release waiting for approval")
    approve.add_argument("release_key")
    approve.add_argument("--by", required=True, dest="approver", help="who approves")
    approve.add_argument("--deploy", help="approve only this container's deploy")
    approve.add_argument(
        "--env", type=str.upper, help="approve the entry into this environment (its required approvals)"
    )
    unfreeze = subcommands.add_parser("unfreeze", help="override the freeze windows for a FROZEN release")
    unfreeze.add_argument("release_key")
    unfreeze.add_argument("--by", required=True, dest="approver", help="who overrides the freeze")
    for name, does in (
        ("retry", "run the failed checks of a HELD deploy again"),
        ("rollback", "roll back a HELD deploy"),
    ):
        decide = subcommands.add_parser(name, help=does)
        decide.add_argument("release_key")
        decide.add_argument("--by", required=True, dest="approver", help="who decides")
        decide.add_argument("--deploy", help="the held deploy's container, when several are held")
    back = subcommands.add_parser(
        "rollback-env", help="re-promote into ENV the version of CONTAINER that passed its tests there before"
    )
    back.add_argument("env", metavar="ENV", help="DEV, TEST, QC or PROD")
    back.add_argument("container", metavar="CONTAINER")
    back.add_argument("--by", required=True, dest="approver", help="who asks for it")
    back.add_argument("--to", dest="version", help="this version, which must have passed its tests in ENV")
    cancel = subcommands.add_parser("cancel", help="cancel a running release")
    cancel.add_argument("release_key")
    cancel.add_argument("--by", dest="approver", help="who cancels it (default: your login name), recorded")
    subcommands.add_parser("list", help="the catalog's releases with the status of their latest runs")
    inventory = subcommands.add_parser("inventory", help="what each environment holds, who put it there, and drift")
    inventory.add_argument("--json", action="store_true", help="print it as JSON")
    history = subcommands.add_parser("history", help="the promotions and rollbacks into an environment, newest first")
    history.add_argument("env", metavar="ENV", help="DEV, TEST, QC or PROD")
    history.add_argument("container", metavar="CONTAINER", nargs="?", help="only this container")
    _add_ledger(subcommands)
    return parser.parse_args(argv)


def _add_ledger(subcommands: argparse._SubParsersAction) -> None:
    """`ledger verify | seal | export | import`: the ledger itself, no Temporal needed."""
    ledger = subcommands.add_parser("ledger", help="check the ledger's hash chain, or seal a break")
    ledger_actions = ledger.add_subparsers(dest="ledger_action", required=True)
    ledger_actions.add_parser("verify", help="follow the hash chain from line 1; exit 1 where it breaks")
    export = ledger_actions.add_parser("export", help="write every line, as stored, to a file (or stdout)")
    export.add_argument("file", nargs="?", help="where to write (default: stdout)")
    into = ledger_actions.add_parser("import", help="read a ledger file's lines into this ledger, which is empty")
    into.add_argument("file", help="a ledger.jsonl, or what `ledger export` wrote")
    seal = ledger_actions.add_parser("seal", help="accept the chain's break, after looking at it: who and why")
    seal.add_argument("--by", required=True, dest="approver", help="who looked at the break and accepts it")
    seal.add_argument("--reason", required=True, help="what was found at the break")


def prepare(args: argparse.Namespace, settings: Settings) -> tuple[str, ReleaseRequest | list[str] | None]:
    """What a subcommand acts on, checked before anything is sent: the release key, and what starts it (start,
    rollback-env) or the catalog's keys (list). ValueError or ReleaseError says what is wrong, in one line."""
    if args.subcommand in (*DECIDING, "rollback-env", "start", "cancel"):
        does = DECIDING.get(args.subcommand, f"{args.subcommand}s" if args.subcommand != "rollback-env" else "asks")
        args.approver = check_approver(args.approver or login_name(), does)
    if args.subcommand == "rollback-env":
        try:
            target = RollbackTarget(env=check_environment(args.env), container=args.container, version=args.version)
        except ValidationError as e:
            raise ValueError(describe_validation_error(e).split(": ", 1)[-1]) from None
        return target.release_key(), ReleaseRequest(
            release_key=target.release_key(), now=True, by=args.approver, rollback=target
        )
    key = check_release_key(getattr(args, "release_key", DEFAULT_RELEASE_KEY))
    if args.subcommand == "start":
        # The worker's catalog decides what the release is: an unknown key is refused by the worker.
        return key, ReleaseRequest(release_key=key, now=args.now, by=args.approver)
    if args.subcommand == "approve" and args.env is not None:
        check_environment(args.env)
    if args.subcommand == "list":
        from orchestrator.catalog import load_catalog

        return key, load_catalog(settings.catalog, settings.catalog_max_bytes).release_keys()
    return key, None


def login_name() -> str:
    """Who runs this command, as the system knows them: the default of --by where it is optional."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        load_env_file()
        settings = Settings.from_env()
        # These read the workspace only: no Temporal settings, catalog or server needed.
        if args.subcommand == "inventory":
            return print_inventory(settings.workspace, args.json, settings.ledger_url)
        if args.subcommand == "history":
            return print_history(settings.workspace, args.env, args.container, settings.ledger_url)
        if args.subcommand == "ledger":
            return ledger_command(args, open_ledger(settings.workspace, settings.ledger_url))
        _with_temporal()
        target = connect_config()
        key, asked = prepare(args, settings)
    except (ValueError, ReleaseError) as e:
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return 2
    from temporalio.service import RPCError

    from orchestrator.cli.diagnostics import UserError

    try:
        # The starter reports outages itself, in one line, instead of the SDK's retry warnings.
        client = await connect(target, quiet=True)
    except RuntimeError:
        print(
            f"error: cannot reach Temporal at {target['target_host']} (namespace {target['namespace']}). "
            "Start a local server and a worker with `make worker` (`make server` alone starts no worker), "
            "or set TEMPORAL_ADDRESS (see .env.example).",
            file=sys.stderr,
        )
        return 3
    try:
        return await dispatch(client, args, settings, target, key, asked)
    except UserError as e:
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return e.code
    except RPCError as e:
        print(f"error: Temporal at {target['target_host']} refused the request: {e.message}", file=sys.stderr)
        return 3


def _with_temporal() -> None:
    """The Temporal client's modules, for the subcommands that use Temporal; one line if they are missing."""
    try:
        import temporalio.client  # noqa: F401

        import orchestrator.cli.diagnostics  # noqa: F401
    except ModuleNotFoundError as missing:
        from orchestrator.dependencies import explain_missing

        explain_missing(missing, "run_workflow.py")


async def dispatch(
    client: Client,
    args: argparse.Namespace,
    settings: Settings,
    target: dict,
    key: str,
    asked: ReleaseRequest | list[str] | None,
) -> int:
    """Run the subcommand against Temporal; its exit code."""
    from orchestrator.cli.actions import approve, cancel, decide, list_releases, status, unfreeze
    from orchestrator.cli.follower import start

    if isinstance(asked, ReleaseRequest):
        return await start(client, settings, target, asked)
    if args.subcommand == "status":
        return await status(client, settings, target, key)
    if args.subcommand == "approve":
        return await approve(client, settings, key, args.approver, args.deploy, args.env)
    if args.subcommand == "unfreeze":
        return await unfreeze(client, settings, key, args.approver)
    if args.subcommand in ("retry", "rollback"):
        return await decide(client, settings, key, args.subcommand, args.approver, args.deploy)
    if args.subcommand == "cancel":
        return await cancel(client, settings, key, args.approver)
    return await list_releases(client, asked or [])


def stopped_waiting(argv: list[str]) -> None:
    """What Ctrl+C leaves behind: the release goes on without this process."""
    args = parse_args(argv)
    if args.subcommand == "rollback-env":
        args.release_key = f"ROLLBACK-{args.env.upper()}-{args.container}"
    if args.subcommand in ("start", "cancel", "rollback-env"):
        show = script_command("run_workflow.py", "status", args.release_key)
        print(f"\nStopped waiting. The release goes on in Temporal; `{show}` shows it.")


if __name__ == "__main__":
    # From here Ctrl+C stops the waiting: asyncio.run cancels the command, which says what goes on without it.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        code = 130
        try:
            stopped_waiting(sys.argv[1:])
        except BrokenPipeError:
            pass
    except BrokenPipeError:
        # The reader went away (`status KEY | head -1`): end quietly, as a shell tool ends on SIGPIPE.
        code = 141
    exit_now(code)
