"""`run_workflow.py ledger verify | seal | export | import`: check the ledger's hash chain from its first line,
accept a break someone has looked at, and move a ledger between the file and PostgreSQL; no Temporal needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from orchestrator.names import check_approver, one_line
from utils import script_command

REASON_MAX = 200


def ledger_command(args: argparse.Namespace, ledger: Any) -> int:
    """Run `ledger ACTION` on ledger (a Ledger or a PostgresLedger); ValueError or OSError say what is wrong."""
    try:
        if args.ledger_action == "verify":
            return verify_ledger(ledger)
        if args.ledger_action == "seal":
            return seal_ledger(ledger, check_approver(args.approver, "seals"), args.reason)
        if args.ledger_action == "export":
            return export_ledger(ledger, args.file)
        return import_ledger(ledger, Path(args.file))
    except OSError as e:
        raise ValueError(f"{ledger.name}: {e.strerror or e}") from None


def verify_ledger(ledger: Any) -> int:
    """Print the chain's state in one line; exit 1 when it is broken."""
    chain = ledger.verify()
    print(chain.describe(ledger.name))
    if chain.broken_at is None:
        return 0
    seal = script_command("run_workflow.py", "ledger", "seal", "--by", "NAME", "--reason", "TEXT")
    print(f"Promotions wait until someone who has looked at line {chain.broken_at} runs: {seal}")
    return 1


def seal_ledger(ledger: Any, by: str, reason: str) -> int:
    """Append a seal line that accepts the chain's first break, naming who and why; ValueError when intact."""
    reason = one_line(reason).strip()
    if not reason:
        raise ValueError("say why the break is accepted: --reason TEXT")
    if len(reason) > REASON_MAX:
        raise ValueError(f"the reason is {len(reason)} characters; at most {REASON_MAX}")
    if not ledger.chain().lines:
        raise ValueError(f"{ledger.name} holds no line: nothing to seal")
    chain = ledger.seal(by, reason)
    print(f"Sealed: {chain.describe(ledger.name)}; accepted by {by}: {reason}")
    return 0


def export_ledger(ledger: Any, file: str | None) -> int:
    """Every line as stored, links included, to file or stdout; a line on stderr says how many."""
    lines = list(ledger.lines())
    text = "".join(f"{line}\n" for line in lines)
    if file is None:
        sys.stdout.write(text)
    else:
        Path(file).write_text(text)
    print(f"Exported {len(lines)} lines of {ledger.name}", file=sys.stderr)
    return 0


def import_ledger(ledger: Any, file: Path) -> int:
    """The lines of file into ledger, which must be empty; the chain is checked as they go in."""
    with open(file, encoding="utf-8", errors="replace") as f:
        # Whole lines only: a torn last line (no newline) was never a record.
        chain = ledger.import_lines(line.rstrip("\n") for line in f if line.endswith("\n") and line.strip())
    print(f"Imported {chain.lines} lines into {ledger.name}: {chain.describe(ledger.name)}")
    return 0 if chain.broken_at is None else 1
