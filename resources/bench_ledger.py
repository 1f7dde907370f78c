"""What a ledger call costs at 10 lines and at 100,000: the figures behind "the ledger appends in O(1)".

    .venv/bin/python resources/bench_ledger.py             # 50 calls of each kind per size
    .venv/bin/python resources/bench_ledger.py --samples 200

Both ledgers are written in a temporary folder, with lines like those ReleaseManagement._record
writes (a UUID run id, ISO timestamps: about 340 bytes each). Each call appends a line and fsyncs
it, so the figures depend on the disk; the ratios (100k / 10) are what should stay near 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.ledger import Ledger  # noqa: E402 (the repository root is on the path only from here)

SMALL, LARGE = 10, 100_000
CONTAINERS = {"frontend": "1.0", "sbstore": "1.7", "backendforfrontend": "1.7"}
ENVS = ["DEV", "TEST", "QC", "PROD"]
# The steps of one release run, in order: a build per container, then a deploy and a test per environment.
STEPS = [("build", c, "DEV") for c in CONTAINERS] + [
    (verb, c, env) for env in ENVS for c in CONTAINERS for verb in ("deploy", "test")
]


def generate(seed: int = 1) -> Iterator[dict[str, object]]:
    """Ledger lines as a workspace accumulates them, without end: run after run, each step applied once, a few
    retried."""
    rng = random.Random(seed)
    at = datetime(2024, 1, 1, tzinfo=UTC)
    while True:
        run_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        release = rng.choice(["RELEASE-NOV-23-INITIAL", "RELEASE-NOV-23-HOTFIX-STAGE", "RELEASE-JAN-24-ALPHA-DEV"])
        for verb, container, env in STEPS:
            for attempt in range(1, 3 if rng.random() < 0.05 else 2):
                started = at
                at += timedelta(milliseconds=rng.randint(5, 900))
                yield {
                    "release_key": release,
                    "run_id": run_id,
                    "deploy_key": f"{release}:{container}",
                    "container": container,
                    "version": CONTAINERS[container],
                    "step": verb,
                    "env": env,
                    "attempt": attempt,
                    "started_at": started.isoformat(timespec="milliseconds"),
                    "at": at.isoformat(timespec="milliseconds"),
                    "applied": attempt == 1,
                }


def lines(n: int, seed: int = 1) -> list[dict[str, object]]:
    """The first n lines of generate(seed)."""
    return list(itertools.islice(generate(seed), n))


def write(path: Path, entries: list[dict[str, object]]) -> None:
    # Written whole and fsynced, as the ledger's appends would have left it (without 100,000 fsyncs).
    with open(path, "wb") as f:
        f.write(b"".join((json.dumps(e, sort_keys=True) + "\n").encode() for e in entries))
        f.flush()
        os.fsync(f.fileno())


def drop_index(ledger: Ledger) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger.index.path}{suffix}").unlink(missing_ok=True)


def timed(call: Callable[..., object], *args: object) -> tuple[float, object]:
    """Seconds that call(*args) took, and what it returned."""
    start = time.perf_counter()
    result = call(*args)
    return time.perf_counter() - start, result


def found_done(entries: list[dict[str, object]], samples: int) -> list[dict[str, object]]:
    """Executions that find their step done, its applied line anywhere in the ledger: a retry, a second run."""
    applied = [e for e in entries if e["applied"] is True]
    picked = (applied[(i * 7919) % len(applied)] for i in range(samples))
    return [{**{k: v for k, v in e.items() if k != "applied"}, "attempt": 9} for e in picked]


def ledger_figures(samples: int = 50) -> dict[str, float]:
    """Median seconds per call of record and record_unless_claimed at 10 and 100,000 lines, and their ratios.

    Calls at the two sizes take turns, so a machine busy with something else slows both alike.
    Also: the time to build the index from scratch at 100,000 lines (the first check after the
    index was deleted: build and append), and the time of a whole read of that ledger (what each
    check cost before the index, for comparison).
    """
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        ledgers, picks = {}, {}
        for n in (SMALL, LARGE):
            entries = lines(n)
            ledgers[n] = Ledger(Path(tmp) / f"ledger-{n}.jsonl")
            write(ledgers[n].path, entries)
            picks[n] = found_done(entries, samples)
        size = ledgers[LARGE].path.stat().st_size
        builds = []
        for _ in range(max(1, min(3, samples))):
            drop_index(ledgers[LARGE])
            builds.append(timed(ledgers[LARGE].record_unless_claimed, picks[LARGE][0])[0])
        full_read = statistics.median(timed(ledgers[LARGE].read)[0] for _ in range(max(1, min(3, samples))))
        ledgers[SMALL].record_unless_claimed(picks[SMALL][0])  # its index too, before the timed calls
        fresh = lines(samples, seed=2)
        record: dict[int, list[float]] = {SMALL: [], LARGE: []}
        check: dict[int, list[float]] = {SMALL: [], LARGE: []}
        for i in range(samples):
            for n in (SMALL, LARGE):
                record[n].append(timed(ledgers[n].record, fresh[i])[0])
                seconds, applied = timed(ledgers[n].record_unless_claimed, picks[n][i])
                assert applied is False, "a step found done was claimed a second time"
                check[n].append(seconds)
    med = {name: {n: statistics.median(times[n]) for n in times} for name, times in (("r", record), ("c", check))}
    return {
        "bytes_per_line_100k": size / LARGE,
        "record_10_s": med["r"][SMALL],
        "record_100k_s": med["r"][LARGE],
        "record_ratio": med["r"][LARGE] / med["r"][SMALL],
        "record_unless_claimed_10_s": med["c"][SMALL],
        "record_unless_claimed_100k_s": med["c"][LARGE],
        "record_unless_claimed_ratio": med["c"][LARGE] / med["c"][SMALL],
        "index_build_100k_s": statistics.median(builds),
        "full_read_100k_s": full_read,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50, help="calls of each kind per size (default 50)")
    figures = ledger_figures(parser.parse_args().samples)
    for name, value in figures.items():
        shown = f"{value * 1000:.3f} ms" if name.endswith("_s") else f"{value:.2f}"
        print(f"{name:30} {shown}")


if __name__ == "__main__":
    main()
