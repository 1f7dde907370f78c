"""The ledger in PostgreSQL (LEDGER_URL): the lines, links, claims and proofs of ledger.jsonl, in one database
that workers on several machines share.

Plain Python, no temporalio. The same lines as the file, byte for byte (their links are over those bytes), one
row each; what the file's SQLite index answers is answered here by tables kept in the same transaction as the
row: a claim is a unique key (exactly one applied line per step, by the constraint, not by a read-then-write),
a proof a row per (container, version, place), the chain's state one row. Appends are ordered by a lock on
that row. A trigger refuses updates and deletes of lines: an edit needs the database owner, on purpose.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
from psycopg import sql

from orchestrator.errors import LedgerBroken, LedgerUnavailable
from orchestrator.ledger_chain import LINK, SEAL, Chain, parse_line
from orchestrator.ledger_format import Proof, identity_of, is_claim, now_iso, parse_lines, proof_of

SEAL_HINT = "run_workflow.py ledger seal --by NAME --reason TEXT"
CONNECT_SECONDS = 5

# Numbered migrations: each runs once, in order, in one transaction with its number (ledger_schema).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE ledger_lines (
        number bigint PRIMARY KEY,
        line text NOT NULL,
        claim text UNIQUE,
        step text, env text, container text, version text, run_id text, deploy_key text,
        applied boolean NOT NULL, readable boolean NOT NULL
    );
    CREATE INDEX ledger_lines_target ON ledger_lines (env, container, number)
        WHERE step IN ('deploy', 'rollback', 'test');
    CREATE INDEX ledger_lines_moves ON ledger_lines (env, number) WHERE step IN ('deploy', 'rollback');
    CREATE INDEX ledger_lines_runs ON ledger_lines (env, container, run_id, version)
        WHERE step IN ('deploy', 'test');
    CREATE INDEX ledger_lines_approvals ON ledger_lines (run_id, deploy_key) WHERE step IN ('approve', 'hold');
    CREATE INDEX ledger_lines_unreadable ON ledger_lines (number) WHERE NOT readable;
    -- What each environment holds: the number of the last applied deploy or rollback line of each target.
    CREATE TABLE ledger_placements (env text, container text, number bigint NOT NULL, PRIMARY KEY (env, container));
    CREATE TABLE ledger_proofs (proof text PRIMARY KEY, passed boolean NOT NULL, sha256 text);
    CREATE TABLE ledger_chain (
        id int PRIMARY KEY CHECK (id = 1),
        lines bigint NOT NULL, size bigint NOT NULL, head text NOT NULL, linked boolean NOT NULL,
        broken_at bigint, why text NOT NULL, seals int NOT NULL
    );
    INSERT INTO ledger_chain VALUES (1, 0, 0, '', false, NULL, '', 0);
    CREATE FUNCTION ledger_lines_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'the ledger is append-only: % of a line refused', TG_OP; END $$;
    CREATE TRIGGER ledger_lines_append_only BEFORE UPDATE OR DELETE ON ledger_lines
        FOR EACH ROW EXECUTE FUNCTION ledger_lines_append_only();
    """,
    # 1.2: a release page reads its run's lines (the dashboard).
    "CREATE INDEX ledger_lines_run ON ledger_lines (run_id, number)",
]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaMismatch(ValueError):
    """The database's schema is newer than this code knows: a worker of a newer version migrated it."""


class PostgresLedger:
    """The ledger's interface (orchestrator/ledger.py) over PostgreSQL: record, claims, proofs, chain, seal."""

    def __init__(self, url: str) -> None:
        self.url = url
        info = psycopg.conninfo.conninfo_to_dict(url)
        self.name = f"the ledger in PostgreSQL ({info.get('host', 'localhost')}/{info.get('dbname', '')})"
        self._local = threading.local()
        self._migrated = False

    # --- the ledger's interface ---

    def record(self, entry: Mapping[str, object]) -> None:
        with self._appending() as (cur, chain):
            self._append(cur, chain, entry, claim=_free_claim(cur, entry))

    def record_unless_claimed(self, entry: Mapping[str, object]) -> bool:
        """Append entry with applied true unless a line claims its effect (the unique key says), else false."""
        claim = _key(identity_of(entry))
        with self._appending() as (cur, chain):
            cur.execute("SAVEPOINT claim")
            try:
                self._append(cur, chain, {**entry, "applied": True}, claim=claim)
                return True
            except psycopg.errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT claim")
            self._append(cur, chain, {**entry, "applied": False}, claim=None)
            return False

    def verified(self, container: str, version: str, place: str) -> Proof:
        with self._transaction() as cur:
            chain = _chain_of(cur)
            if chain.broken_at is not None:
                raise LedgerBroken(f"{chain.describe(self.name)}; promotions wait for {SEAL_HINT}")
            cur.execute(
                "SELECT passed, sha256 FROM ledger_proofs WHERE proof = %s", (_key((container, version, place)),)
            )
            row = cur.fetchone()
        return Proof(False, None) if row is None else Proof(bool(row[0]), row[1])

    def chain(self) -> Chain:
        with self._transaction() as cur:
            return _chain_of(cur)

    def verify(self) -> Chain:
        """The chain as every line says, followed from line 1 (what `ledger verify` prints)."""
        return Chain().follow([line.encode() for line in self.lines()])

    def seal(self, by: str, reason: str) -> Chain:
        with self._appending() as (cur, chain):
            before = chain[0]
            if before.broken_at is None:
                raise ValueError(f"{before.describe(self.name)}: nothing to seal")
            entry = {"step": SEAL, "by": by, "reason": reason, "accepts": before.broken_at, "why": before.why}
            self._append(cur, chain, {**entry, "at": now_iso()}, claim=None)
            return before

    def applied_before(self, identity: tuple[object, ...]) -> bool:
        with self._transaction() as cur:
            cur.execute("SELECT 1 FROM ledger_lines WHERE claim = %s", (_key(identity),))
            return cur.fetchone() is not None

    def entries(self) -> list[dict[str, object]]:
        return self.read()[0]

    def read(self) -> tuple[list[dict[str, object]], list[int]]:
        return parse_lines("".join(f"{line}\n" for line in self.lines()).encode())

    # --- what inventory, history and rollback-env read: indexed, whatever the ledger's length ---

    def inventory_view(self) -> tuple[list[dict[str, object]], int, Chain]:
        """The lines inventory's replay needs (each target's last deploy or rollback, the deploy it restored, their
        tests and approvals), the unreadable lines' count, and the chain (kept with every append)."""
        with self._transaction() as cur:
            cur.execute("SELECT l.number, l.line FROM ledger_placements p JOIN ledger_lines l USING (number)")
            rows = dict(cur.fetchall())
            wanted: set[tuple[object, ...]] = set()
            approvals: set[tuple[object, ...]] = set()
            for line in list(rows.values()):
                e = parse_line(line) or {}
                back = e.get("restored")
                restored: dict[str, object] = back if isinstance(back, dict) else {}
                for holder in (e, restored):
                    where = (e.get("env"), e.get("container"), holder.get("run_id"), holder.get("version"))
                    wanted.add(tuple(_text(v) for v in where))
            if wanted:
                cur.execute(
                    "SELECT number, line FROM ledger_lines WHERE step IN ('deploy', 'test') "
                    "AND (env, container, run_id, version) IN "
                    "(SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]))",
                    [list(col) for col in zip(*wanted, strict=True)],
                )
                rows.update(dict(cur.fetchall()))
            for line in list(rows.values()):
                e = parse_line(line) or {}
                if e.get("step") == "deploy":
                    approvals |= {(e.get("run_id"), e.get("deploy_key")), (e.get("run_id"), e.get("release_key"))}
            rows.update(_approvals(cur, approvals, ("approve", "hold")))
            cur.execute("SELECT count(*) FROM ledger_lines WHERE NOT readable")
            (unreadable,) = cur.fetchone() or (0,)
            chain = _chain_of(cur)
        return _in_order(rows), unreadable, chain

    def history_view(self, env: str, container: str | None, newest: int) -> tuple[list[dict[str, object]], int, int]:
        """The newest moves into env (of container) with their approvals, the unreadable lines' count, and how
        many moves there are in all."""
        where = "env = %s AND step IN ('deploy', 'rollback')" + (" AND container = %s" if container else "")
        params = [env, *([container] if container else [])]
        with self._transaction() as cur:
            cur.execute(
                f"SELECT number, line FROM ledger_lines WHERE {where} ORDER BY number DESC LIMIT %s", [*params, newest]
            )
            rows = dict(cur.fetchall())
            runs = {
                (e.get("run_id"), k)
                for e in map(parse_line, rows.values())
                if e
                for k in (e.get("deploy_key"), e.get("release_key"))
            }
            rows.update(_approvals(cur, runs))
            cur.execute(f"SELECT count(*) FROM ledger_lines WHERE {where} AND applied", params)
            (total,) = cur.fetchone() or (0,)
            cur.execute("SELECT count(*) FROM ledger_lines WHERE NOT readable")
            (unreadable,) = cur.fetchone() or (0,)
        return _in_order(rows), unreadable, total

    def run_entries(self, run_id: str, newest: int) -> list[dict[str, object]]:
        """The newest lines of one run, in order (a release page)."""
        with self._transaction() as cur:
            cur.execute(
                "SELECT number, line FROM ledger_lines WHERE run_id = %s ORDER BY number DESC LIMIT %s",
                (run_id, newest),
            )
            return _in_order(dict(cur.fetchall()))

    def target_entries(self, env: str, container: str) -> list[dict[str, object]]:
        """The deploy, rollback and test lines of one target, in order (rollback-env's choice, a rollback's holder)."""
        with self._transaction() as cur:
            cur.execute(
                "SELECT number, line FROM ledger_lines WHERE env = %s AND container = %s "
                "AND step IN ('deploy', 'rollback', 'test') ORDER BY number",
                (env, container),
            )
            return _in_order(dict(cur.fetchall()))

    def lines(self) -> Iterator[str]:
        """Every line, in order, as stored (what `ledger export` writes)."""
        with self._transaction() as cur:
            cur.execute("SELECT line FROM ledger_lines ORDER BY number")
            rows = cur.fetchall()
        return (row[0] for row in rows)

    def import_lines(self, raw_lines: Iterable[str]) -> Chain:
        """Lines from a ledger file, as they are (their links with them), into an empty ledger; ValueError if
        this one holds lines. One COPY: claims, proofs, placements and the chain are derived as the lines go by,
        as each append would have, so a million lines take seconds, not an append each."""
        with self._appending() as (cur, box):
            if box[0].lines:
                raise ValueError(f"{self.name} holds {box[0].lines} lines: import into an empty one")
            chain, claims, proofs, placements = Chain(), set(), {}, {}
            with cur.copy("COPY ledger_lines FROM STDIN") as copy:
                for raw in raw_lines:
                    entry, claim = parse_line(raw), None
                    number = chain.lines + 1
                    row = _row(entry)
                    if entry is not None and is_claim(entry):
                        if (key := _key(identity_of(entry))) not in claims:
                            claims.add(key)
                            claim = key
                        if row[0] in ("deploy", "rollback") and row[1] and row[2]:
                            placements[(row[1], row[2])] = number
                    if entry is not None and (proof := proof_of(entry)) is not None:
                        proofs[_key(proof[0])] = proof[1]
                    copy.write_row((number, raw, claim, *row, entry is not None and is_claim(entry), entry is not None))
                    chain = chain.follow([raw.encode()])
            cur.executemany(
                "INSERT INTO ledger_proofs VALUES (%s, %s, %s)", [(k, v.passed, v.digest) for k, v in proofs.items()]
            )
            cur.executemany(
                "INSERT INTO ledger_placements VALUES (%s, %s, %s)", [(*k, n) for k, n in placements.items()]
            )
            _save_chain(cur, chain)
            cur.execute("ANALYZE ledger_lines")  # the planner's figures, for the indexes to be used at once
            box[0] = chain
            return chain

    # --- the schema ---

    def migrate(self) -> int:
        """Apply the migrations this database lacks; the schema version. SchemaMismatch if it is newer."""
        with _unavailable(self.name, self._drop), self._connection().transaction() as tx, tx.connection.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('ledger_schema'))")
            cur.execute("CREATE TABLE IF NOT EXISTS ledger_schema (version int PRIMARY KEY, at timestamptz)")
            cur.execute("SELECT coalesce(max(version), 0) FROM ledger_schema")
            (found,) = cur.fetchone() or (0,)
            if found > SCHEMA_VERSION:
                raise SchemaMismatch(
                    f"{self.name} is at schema {found}; this code knows schema {SCHEMA_VERSION} at most: "
                    "run a worker of the version that migrated it"
                )
            for number in range(found + 1, SCHEMA_VERSION + 1):
                cur.execute(MIGRATIONS[number - 1])
                cur.execute("INSERT INTO ledger_schema VALUES (%s, now())", (number,))
        self._migrated = True
        return SCHEMA_VERSION

    # --- inside ---

    def _append(
        self, cur: psycopg.Cursor[Any], chain: list[Chain], entry: Mapping[str, object], claim: str | None
    ) -> None:
        line = json.dumps({**entry, LINK: chain[0].head}, sort_keys=True)
        chain[0] = self._insert(cur, chain[0], line, claim)

    @staticmethod
    def _insert(cur: psycopg.Cursor[Any], chain: Chain, line: str, claim: str | None) -> Chain:
        """The line as the next row, with its claim (None: none), its proof and the chain after it."""
        entry = parse_line(line)
        columns = _row(entry)
        applied = entry is not None and is_claim(entry)
        number = chain.lines + 1
        cur.execute(
            "INSERT INTO ledger_lines VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (number, line, claim, *columns, applied, entry is not None),
        )
        if applied and columns[0] in ("deploy", "rollback") and columns[1] and columns[2]:
            cur.execute(
                "INSERT INTO ledger_placements VALUES (%s, %s, %s) "
                "ON CONFLICT (env, container) DO UPDATE SET number = excluded.number",
                (columns[1], columns[2], number),
            )
        if entry is not None and (proof := proof_of(entry)) is not None:
            cur.execute(
                "INSERT INTO ledger_proofs VALUES (%s, %s, %s) "
                "ON CONFLICT (proof) DO UPDATE SET passed = excluded.passed, sha256 = excluded.sha256",
                (_key(proof[0]), proof[1].passed, proof[1].digest),
            )
        after = chain.follow([line.encode()])
        _save_chain(cur, after)
        return after

    @contextmanager
    def _appending(self) -> Iterator[tuple[psycopg.Cursor[Any], list[Chain]]]:
        """A transaction holding the chain's row (so appends are ordered), and the chain, in a box to update."""
        with self._transaction() as cur:
            cur.execute(
                "SELECT lines, size, head, linked, broken_at, why, seals FROM ledger_chain WHERE id = 1 FOR UPDATE"
            )
            row = cur.fetchone()
            assert row is not None
            yield cur, [Chain(*row[:3], bool(row[3]), *row[4:])]

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        """A transaction on this thread's connection. A connection the server dropped while it sat idle (a
        restart) is found dead at BEGIN, before anything was sent, and opened again once."""
        if not self._migrated:
            self.migrate()
        with _unavailable(self.name, self._drop), ExitStack() as stack:
            try:
                conn = self._connection()
                stack.enter_context(conn.transaction())
            except psycopg.OperationalError:
                self._drop()
                conn = self._connection()
                stack.enter_context(conn.transaction())
            yield stack.enter_context(conn.cursor())

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        """This thread's connection (the activities run in threads), opened again after the server went away."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            with _unavailable(self.name, self._drop):
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_SECONDS)
            self._local.conn = conn
        return conn


def _free_claim(cur: psycopg.Cursor[Any], entry: Mapping[str, object]) -> str | None:
    """The claim a line written by record (or imported) makes: its identity, if it claims an effect no line
    claimed before it (as the file's index counts them); None otherwise. Inside the append's lock."""
    if not is_claim(entry):
        return None
    claim = _key(identity_of(entry))
    cur.execute("SELECT 1 FROM ledger_lines WHERE claim = %s", (claim,))
    return None if cur.fetchone() is not None else claim


@contextmanager
def _unavailable(name: str, drop: Callable[[], None]) -> Iterator[None]:
    """psycopg's OperationalError (the server gone, a timeout) as LedgerUnavailable, in one line; the connection
    is dropped, for the next call to open another."""
    try:
        yield
    except psycopg.OperationalError as e:
        drop()
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LedgerUnavailable(f"{name} is unavailable: {first}") from None


def _chain_of(cur: psycopg.Cursor[Any]) -> Chain:
    cur.execute("SELECT lines, size, head, linked, broken_at, why, seals FROM ledger_chain WHERE id = 1")
    row = cur.fetchone()
    assert row is not None
    return Chain(*row[:3], bool(row[3]), *row[4:])


def _approvals(
    cur: psycopg.Cursor[Any], runs: set[tuple[object, ...]], steps: tuple[str, ...] = ("approve",)
) -> dict[int, str]:
    """The approve (or other decision) lines of these (run id, deploy key or release key) pairs, by number."""
    pairs = [(r, k) for r, k in runs if isinstance(r, str) and isinstance(k, str)]
    if not pairs:
        return {}
    cur.execute(
        "SELECT number, line FROM ledger_lines WHERE step = ANY(%s) "
        "AND (run_id, deploy_key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        [list(steps), [r for r, _ in pairs], [k for _, k in pairs]],
    )
    return dict(cur.fetchall())


def _row(entry: dict[str, object] | None) -> tuple[str | None, ...]:
    """The columns a line is found by: step, env, container, version, run id, deploy key."""
    fields = ("step", "env", "container", "version", "run_id", "deploy_key")
    return tuple(_text(entry.get(k)) if entry is not None else None for k in fields)


def _save_chain(cur: psycopg.Cursor[Any], c: Chain) -> None:
    cur.execute(
        "UPDATE ledger_chain SET lines = %s, size = %s, head = %s, linked = %s, broken_at = %s, why = %s, "
        "seals = %s WHERE id = 1",
        (c.lines, c.size, c.head, c.linked, c.broken_at, c.why, c.seals),
    )


def _in_order(rows: dict[int, str]) -> list[dict[str, object]]:
    return [e for _, line in sorted(rows.items()) if (e := parse_line(line)) is not None]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _key(parts: tuple[object, ...]) -> str:
    return json.dumps(list(parts), separators=(",", ":"), default=str)


def create_database(admin_url: str, name: str) -> None:
    """CREATE DATABASE name (for tests and make demo-postgres); nothing if it exists."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
