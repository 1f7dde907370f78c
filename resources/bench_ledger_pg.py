"""What the PostgreSQL ledger's calls cost at 10 lines and at 1,000,000: a claim, an upstream check and a full
inventory, each expected to stay within 2x (their queries are indexed, whatever the ledger's length).

    .venv/bin/python resources/bench_ledger_pg.py                  # 1,000,000 lines, 30 calls of each kind
    .venv/bin/python resources/bench_ledger_pg.py --lines 100000 --samples 10

It starts its own PostgreSQL (tests/postgres.py: the machine's initdb and pg_ctl, as the postgres account
where it runs as root), imports the lines with `ledger import`'s COPY, and times the calls against both.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ledger import generate  # noqa: E402 (resources/ is this script's folder)

from orchestrator.inventory import inventory  # noqa: E402 (the repository root is on the path only from here)
from orchestrator.ledger_pg import PostgresLedger  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

SMALL, LARGE = 10, 1_000_000


def lines(n: int, seed: int = 1) -> Iterator[str]:
    """n linked ledger lines as runs accumulate them (bench_ledger.generate's, tests passed with a digest)."""
    prev = ""
    for entry in itertools.islice(generate(seed), n):
        proof = {"passed": True, "sha256": "0" * 64} if entry["step"] == "test" else {}
        line = json.dumps({**entry, **proof, "prev": prev}, sort_keys=True)
        yield line
        prev = hashlib.sha256(line.encode()).hexdigest()


def timed(call: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def postgres_figures(samples: int = 30, large: int = LARGE) -> dict[str, float]:
    """Median seconds per call at SMALL and `large` lines, and their ratios; the import's rate too."""
    server = PostgresServer.start()
    try:
        ledgers: dict[int, PostgresLedger] = {}
        imported = 0.0
        for n in (SMALL, large):
            ledgers[n] = PostgresLedger(server.new_database())
            seconds = timed(ledgers[n].import_lines, lines(n))
            imported = seconds if n == large else imported
        done = [json.loads(line) for line in lines(min(large, 2000))]
        with tempfile.TemporaryDirectory(prefix="bench-pg-") as workspace:
            calls: dict[str, dict[int, list[float]]] = {"claim": {}, "upstream": {}, "inventory": {}}
            for name in calls:
                calls[name] = {SMALL: [], large: []}
            for i in range(samples):
                for n, ledger in ledgers.items():
                    picked = {**done[(i * 7919) % min(n, len(done))], "attempt": 9}
                    calls["claim"][n].append(timed(ledger.record_unless_claimed, picked))
                    calls["upstream"][n].append(timed(ledger.verified, "sbstore", "1.7", "QC"))
                    calls["inventory"][n].append(timed(inventory, Path(workspace), ledger.url))
    finally:
        server.remove()
    figures: dict[str, float] = {"import_lines_per_second": large / imported}
    for name, times in calls.items():
        small_s, large_s = statistics.median(times[SMALL]), statistics.median(times[large])
        figures[f"{name}_10_s"] = small_s
        figures[f"{name}_{large // 1000}k_s"] = large_s
        figures[f"{name}_ratio"] = large_s / small_s
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=LARGE)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    for key, value in postgres_figures(args.samples, args.lines).items():
        print(f"{key:32} {value:.2f}x" if "ratio" in key else f"{key:32} {value:.6g}")


if __name__ == "__main__":
    main()
