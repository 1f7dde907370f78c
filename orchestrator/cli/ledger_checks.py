"""`run_workflow.py ledger verify` and `ledger seal`: check the ledger's hash chain from its first line, and
accept a break someone has looked at; plain Python, the workspace only.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.ledger import Ledger
from orchestrator.names import one_line
from utils import script_command

REASON_MAX = 200


def verify_ledger(workspace: Path) -> int:
    """Print the chain's state in one line; exit 1 when it is broken."""
    ledger = Ledger(workspace / "ledger.jsonl")
    try:
        chain = ledger.verify()
    except OSError as e:
        raise ValueError(f"cannot read {ledger.path}: {e.strerror or e}") from None
    print(chain.describe(ledger.path.name))
    if chain.broken_at is None:
        return 0
    seal = script_command("run_workflow.py", "ledger", "seal", "--by", "NAME", "--reason", "TEXT")
    print(f"Promotions wait until someone who has looked at line {chain.broken_at} runs: {seal}")
    return 1


def seal_ledger(workspace: Path, by: str, reason: str) -> int:
    """Append a seal line that accepts the chain's first break, naming who and why; ValueError when intact."""
    reason = one_line(reason).strip()
    if not reason:
        raise ValueError("say why the break is accepted: --reason TEXT")
    if len(reason) > REASON_MAX:
        raise ValueError(f"the reason is {len(reason)} characters; at most {REASON_MAX}")
    ledger = Ledger(workspace / "ledger.jsonl")
    if not ledger.path.exists():
        raise ValueError(f"there is no ledger at {ledger.path}: nothing to seal")
    chain = ledger.seal(by, reason)
    print(f"Sealed: {chain.describe(ledger.path.name)}; accepted by {by}: {reason}")
    return 0
