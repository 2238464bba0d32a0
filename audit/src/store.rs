//! Persistence of the audit log in SQLite or PostgreSQL through sqlx's `Any` driver
//! (feature `store`). This is the edge of the crate: it does I/O, but still never
//! reads the clock: every call that records or signs takes `now`.
//!
//! # Tables
//!
//! | table | one row per | columns |
//! |---|---|---|
//! | `audit_log` | entry (leaf) | `seq` (leaf index), `at` (Unix ms), the [`AuditEvent`] fields, `leaf_hash` (hex) |
//! | `audit_nodes` | completed tree node | `level`, `idx`, `hash` (hex): the proofs' O(log n) reads |
//! | `audit_checkpoints` | signed checkpoint | `size`, `at`, `note` (the C2SP signed note) |
//! | `audit_cosignatures` | witness cosignature | `size`, `witness` (name), `at`, `line` (the C2SP cosignature line) |
//! | `audit_head` | - (one row) | `size`, `frontier` (hex hashes), `signed_size`, `unsigned_since` |
//!
//! `audit_log`, `audit_nodes`, `audit_checkpoints` and `audit_cosignatures` carry triggers that refuse
//! `UPDATE` and `DELETE` (and `TRUNCATE` on PostgreSQL): the application cannot rewrite
//! history. Someone with the database owner's rights can drop the triggers; that is
//! what [`AuditStore::verify`] and the signed checkpoints are for.
//!
//! # Concurrency
//!
//! Each append is one transaction that starts by writing the head row, which takes
//! the write lock at once on SQLite and a row lock on PostgreSQL; appends from several
//! tasks or server processes are therefore serialised by the database and sequence
//! numbers stay dense.

/// The sqlx this module is built on, for callers that need the same version (tests
/// that tamper with rows, tools that share a pool).
pub use sqlx;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};

use crate::checkpoint::{Checkpoint, LogPublicKey, LogSigningKey, SignedCheckpoint};
use crate::cosign::{Cosignature, WitnessPublicKey, open_cosigned};
use crate::entry::{AuditEntry, AuditEvent, Outcome, Priority, Timestamp};
use crate::error::{Error, Finding};
use crate::hash::Hash;
use crate::log::CheckpointPolicy;
use crate::package::{PackageReport, PackageWriter};
use crate::proof::{
    ConsistencyProof, InclusionProof, LeafHashSource, NodeMap, consistency_proof,
    consistency_proof_nodes, inclusion_proof, inclusion_proof_nodes,
};
use crate::report::{AccessRecord, access_report};
use crate::tree::{CompactRange, NodeId};
use crate::verify::{LogVerifier, StoredEntry, VerifyReport};

/// Rows read per query when streaming the log (verify, export).
const BATCH: u64 = 2000;

/// Most entries one [`AuditStore::query`] returns.
pub const MAX_QUERY: u64 = 100_000;

/// What [`AuditStore::query`] selects; every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryFilter {
    /// Actor, exactly (`account:12`).
    pub actor: Option<String>,
    /// Action code, exactly.
    pub action: Option<String>,
    /// Target, exactly (`appointment:4`).
    pub target: Option<String>,
    /// Patient, exactly (`account:9`).
    pub patient: Option<String>,
    /// Outcome.
    pub outcome: Option<Outcome>,
    /// Earliest entry time (inclusive).
    pub since: Option<Timestamp>,
    /// Latest entry time (exclusive).
    pub until: Option<Timestamp>,
    /// Smallest sequence number returned.
    pub from: u64,
    /// Most entries returned (clamped to 1..=[`MAX_QUERY`]).
    pub limit: u64,
}

/// Which SQL dialect the pool speaks. The tables are the same; only the
/// append-only triggers differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite 3.24 or later.
    Sqlite,
    /// PostgreSQL 14 or later.
    Postgres,
}

impl Backend {
    /// From a database URL (`sqlite:...`, `postgres://...`).
    pub fn from_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

fn db(e: sqlx::Error) -> Error {
    Error::Source(Box::new(e))
}

fn corrupt(detail: impl Into<String>) -> Error {
    Error::malformed("audit table row", detail)
}

fn to_i64(v: u64) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| Error::IndexOutOfRange {
        index: v,
        size: i64::MAX as u64,
    })
}

fn to_u64(v: i64, what: &str) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| corrupt(format!("negative {what}")))
}

const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS audit_log (
        seq BIGINT PRIMARY KEY,
        at BIGINT NOT NULL,
        actor TEXT NOT NULL,
        role TEXT,
        action TEXT NOT NULL,
        target TEXT,
        patient TEXT,
        outcome TEXT NOT NULL,
        source TEXT,
        request_id TEXT,
        priority TEXT NOT NULL,
        detail TEXT,
        leaf_hash TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS audit_log_patient ON audit_log (patient, at)",
    "CREATE INDEX IF NOT EXISTS audit_log_target ON audit_log (target, at)",
    "CREATE TABLE IF NOT EXISTS audit_nodes (
        level BIGINT NOT NULL,
        idx BIGINT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (level, idx)
    )",
    "CREATE TABLE IF NOT EXISTS audit_checkpoints (
        size BIGINT PRIMARY KEY,
        at BIGINT NOT NULL,
        note TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS audit_cosignatures (
        size BIGINT NOT NULL,
        witness TEXT NOT NULL,
        at BIGINT NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (size, witness)
    )",
    "CREATE TABLE IF NOT EXISTS audit_head (
        id BIGINT PRIMARY KEY CHECK (id = 1),
        size BIGINT NOT NULL,
        frontier TEXT NOT NULL,
        signed_size BIGINT NOT NULL,
        unsigned_since BIGINT
    )",
    "INSERT INTO audit_head (id, size, frontier, signed_size) VALUES (1, 0, '', 0)
        ON CONFLICT (id) DO NOTHING",
];

const SQLITE_GUARDS: &[&str] = &[
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_nodes_no_update BEFORE UPDATE ON audit_nodes
        BEGIN SELECT RAISE(ABORT, 'audit_nodes is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_nodes_no_delete BEFORE DELETE ON audit_nodes
        BEGIN SELECT RAISE(ABORT, 'audit_nodes is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
        BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
        BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_cosignatures_no_update BEFORE UPDATE ON audit_cosignatures
        BEGIN SELECT RAISE(ABORT, 'audit_cosignatures is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_cosignatures_no_delete BEFORE DELETE ON audit_cosignatures
        BEGIN SELECT RAISE(ABORT, 'audit_cosignatures is append-only'); END",
];

const POSTGRES_GUARDS: &[&str] = &[
    "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$",
    "CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    "CREATE OR REPLACE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
    "CREATE OR REPLACE TRIGGER audit_nodes_append_only BEFORE UPDATE OR DELETE ON audit_nodes
        FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    "CREATE OR REPLACE TRIGGER audit_nodes_no_truncate BEFORE TRUNCATE ON audit_nodes
        FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
    "CREATE OR REPLACE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
        FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    "CREATE OR REPLACE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
        FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
    "CREATE OR REPLACE TRIGGER audit_cosignatures_append_only BEFORE UPDATE OR DELETE ON audit_cosignatures
        FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    "CREATE OR REPLACE TRIGGER audit_cosignatures_no_truncate BEFORE TRUNCATE ON audit_cosignatures
        FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
];

const ENTRY_COLS: &str = "seq, at, actor, role, action, target, patient, outcome, source, \
    request_id, priority, detail, leaf_hash";

fn entry_from(r: &AnyRow) -> Result<StoredEntry, Error> {
    let seq = to_u64(r.try_get::<i64, _>(0).map_err(db)?, "seq")?;
    let at: i64 = r.try_get(1).map_err(db)?;
    let time = Timestamp::from_unix_millis(at).ok_or_else(|| corrupt("time out of range"))?;
    let outcome: String = r.try_get(7).map_err(db)?;
    let priority: String = r.try_get(10).map_err(db)?;
    let leaf: String = r.try_get(12).map_err(db)?;
    // A value that does not parse is itself a change to the row; report it as such so
    // the operator learns which entry, rather than a bare decoding error.
    let altered = || Error::Tampered(Finding::Altered { seq });
    let event = AuditEvent {
        actor: r.try_get(2).map_err(db)?,
        role: r.try_get(3).map_err(db)?,
        action: r.try_get(4).map_err(db)?,
        target: r.try_get(5).map_err(db)?,
        patient: r.try_get(6).map_err(db)?,
        outcome: Outcome::parse(&outcome).ok_or_else(altered)?,
        source: r.try_get(8).map_err(db)?,
        request_id: r.try_get(9).map_err(db)?,
        priority: Priority::parse(&priority).ok_or_else(altered)?,
        detail: r.try_get(11).map_err(db)?,
    };
    Ok(StoredEntry {
        entry: AuditEntry::new(seq, time, event),
        leaf_hash: Some(Hash::from_hex(&leaf).ok_or_else(altered)?),
    })
}

struct Head {
    size: u64,
    frontier: CompactRange,
    signed_size: u64,
    unsigned_since: Option<Timestamp>,
}

fn head_from(r: &AnyRow) -> Result<Head, Error> {
    let size = to_u64(r.try_get::<i64, _>(0).map_err(db)?, "size")?;
    let text: String = r.try_get(1).map_err(db)?;
    if !text.len().is_multiple_of(64) {
        return Err(corrupt("frontier is not a list of hex hashes"));
    }
    let mut nodes = Vec::with_capacity(text.len() / 64);
    for i in (0..text.len()).step_by(64) {
        let part = text
            .get(i..i + 64)
            .ok_or_else(|| corrupt("frontier text"))?;
        nodes.push(Hash::from_hex(part).ok_or_else(|| corrupt("frontier hash"))?);
    }
    let signed_size = to_u64(r.try_get::<i64, _>(2).map_err(db)?, "signed size")?;
    let unsigned_since = r
        .try_get::<Option<i64>, _>(3)
        .map_err(db)?
        .and_then(Timestamp::from_unix_millis);
    Ok(Head {
        size,
        frontier: CompactRange::from_parts(size, nodes)?,
        signed_size,
        unsigned_since,
    })
}

fn frontier_text(cr: &CompactRange) -> String {
    cr.nodes().iter().map(Hash::to_hex).collect()
}

/// Read access to a stored audit log; needs no key.
#[derive(Clone, Debug)]
pub struct AuditStore {
    pool: AnyPool,
    backend: Backend,
}

impl AuditStore {
    /// Creates the audit tables and triggers if they are missing. Safe to call at
    /// every start; the tables do not clash with other migrations.
    pub async fn open(pool: AnyPool, backend: Backend) -> Result<Self, Error> {
        // SQLite: a deferred transaction reads the schema before it writes, and when
        // another opener commits in between, the upgrade to a write lock fails at once
        // with "database is locked" (no busy wait helps a stale snapshot). Taking the
        // write lock up front makes concurrent openers queue on the busy timeout.
        let mut tx = match backend {
            Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => pool.begin().await,
        }
        .map_err(db)?;
        if backend == Backend::Postgres {
            // Two servers starting at once would otherwise race on the catalog
            // (`CREATE OR REPLACE FUNCTION` fails with "tuple concurrently updated").
            // The key is an arbitrary constant private to this module.
            sqlx::query("SELECT pg_advisory_xact_lock(6962001)")
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        let guards = match backend {
            Backend::Sqlite => SQLITE_GUARDS,
            Backend::Postgres => POSTGRES_GUARDS,
        };
        for sql in TABLES.iter().chain(guards) {
            sqlx::query(sql).execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(Self { pool, backend })
    }

    /// Connects to `url` (`sqlite://FILE` or `postgres://...`) and opens the tables:
    /// for tools such as the `confide audit` commands that have no pool of their own.
    /// A SQLite file is created if missing and put in WAL mode.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let backend = Backend::from_url(url)
            .ok_or_else(|| Error::malformed("database URL", "expected sqlite: or postgres:"))?;
        sqlx::any::install_default_drivers();
        let url = if backend == Backend::Sqlite && !url.contains('?') && !url.contains(":memory:") {
            format!("{url}?mode=rwc")
        } else {
            url.to_owned()
        };
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .map_err(db)?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await
                .map_err(db)?;
        }
        Self::open(pool, backend).await
    }

    /// Uses tables that [`AuditStore::open`] already created (for example at server
    /// start), without running any DDL: cheap enough to call per request.
    pub fn attach(pool: AnyPool, backend: Backend) -> Self {
        Self { pool, backend }
    }

    /// Records `event` at `now` and returns its sequence number. Needs no key: the
    /// holder of the log key signs checkpoints separately ([`AuditWriter::tick`]), so
    /// code that only records (signaling) never touches the key.
    pub async fn append(&self, now: Timestamp, event: AuditEvent) -> Result<u64, Error> {
        let (mut tx, mut head) = lock_head(&self.pool).await?;
        let seq = append_in(&mut tx, &mut head, now, event).await?;
        tx.commit().await.map_err(db)?;
        Ok(seq)
    }

    /// Records `events` inside the caller's open transaction on the same database, so
    /// that they commit or roll back with the action they record: an action whose
    /// entries cannot be written does not happen. Returns their sequence numbers.
    ///
    /// The head row is locked until the caller's transaction ends, serialising it
    /// with every other append; keep such transactions short. On SQLite, begin the
    /// transaction with `BEGIN IMMEDIATE` if it reads before its first write, or the
    /// upgrade to a write lock can fail at once with "database is locked".
    pub async fn append_within(
        conn: &mut AnyConnection,
        events: Vec<(Timestamp, AuditEvent)>,
    ) -> Result<Vec<u64>, Error> {
        let mut head = lock_head_in(conn).await?;
        let mut seqs = Vec::with_capacity(events.len());
        for (now, event) in events {
            seqs.push(append_in(conn, &mut head, now, event).await?);
        }
        Ok(seqs)
    }

    /// Entries matching `filter`, in sequence order: the one read path for listing the
    /// log (the admin API and CLI read the log itself, which [`AuditStore::verify`]
    /// covers, not a copy).
    pub async fn query(&self, filter: &EntryFilter) -> Result<Vec<StoredEntry>, Error> {
        // Every filter is bound; NULL means "any".
        let q = format!(
            "SELECT {ENTRY_COLS} FROM audit_log \
             WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR action = $2) \
               AND ($3 IS NULL OR target = $3) AND ($4 IS NULL OR patient = $4) \
               AND ($5 IS NULL OR outcome = $5) AND seq >= $6 \
               AND ($8 IS NULL OR at >= $8) AND ($9 IS NULL OR at < $9) \
             ORDER BY seq LIMIT $7"
        );
        let rows = sqlx::query(&q)
            .bind(filter.actor.as_deref())
            .bind(filter.action.as_deref())
            .bind(filter.target.as_deref())
            .bind(filter.patient.as_deref())
            .bind(filter.outcome.map(|o| o.as_str()))
            .bind(to_i64(filter.from)?)
            .bind(to_i64(filter.limit.clamp(1, MAX_QUERY))?)
            .bind(filter.since.map(|t| t.unix_millis()))
            .bind(filter.until.map(|t| t.unix_millis()))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(entry_from).collect()
    }

    /// The frontier at `size`, read from the node table: what an operator keeps when
    /// archiving the entries below `size` (docs/operations.md), and what
    /// [`AuditStore::verify`] starts from afterwards.
    pub async fn frontier_at(&self, size: u64) -> Result<CompactRange, Error> {
        let ids = CompactRange::frontier_ids(size);
        let mut map = NodeMap::new(size);
        self.fetch_nodes(&ids, &mut map).await?;
        let mut nodes = Vec::with_capacity(ids.len());
        for id in &ids {
            nodes.push(
                map.subtree_hash(id.start(), id.end())
                    .map_err(|_| corrupt("a frontier node is missing"))?,
            );
        }
        CompactRange::from_parts(size, nodes)
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The dialect.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Number of entries, as the head row records it.
    pub async fn size(&self) -> Result<u64, Error> {
        let r = sqlx::query("SELECT size FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        to_u64(r.try_get::<i64, _>(0).map_err(db)?, "size")
    }

    /// The entries recorded in `[since, until)` as one run of sequence numbers
    /// `[first, end)`: from the first entry at or after `since` to the last before
    /// `until`. An entry's time is when its action happened, so a few entries near the
    /// edges can lie just outside the period; a package must be a contiguous run to
    /// be provable. `None` when no entry falls in the period.
    pub async fn seq_range_between(
        &self,
        since: Timestamp,
        until: Timestamp,
    ) -> Result<Option<(u64, u64)>, Error> {
        let r = sqlx::query("SELECT MIN(seq), MAX(seq) FROM audit_log WHERE at >= $1 AND at < $2")
            .bind(since.unix_millis())
            .bind(until.unix_millis())
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        let first: Option<i64> = r.try_get(0).map_err(db)?;
        let last: Option<i64> = r.try_get(1).map_err(db)?;
        match (first, last) {
            (Some(f), Some(l)) => Ok(Some((to_u64(f, "seq")?, to_u64(l, "seq")? + 1))),
            _ => Ok(None),
        }
    }

    /// Every stored checkpoint, smallest first, each parsed and its signature checked.
    pub async fn checkpoints(&self, key: &LogPublicKey) -> Result<Vec<SignedCheckpoint>, Error> {
        let rows = sqlx::query("SELECT size, note FROM audit_checkpoints ORDER BY size")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let size = to_u64(r.try_get::<i64, _>(0).map_err(db)?, "checkpoint size")?;
            let note: String = r.try_get(1).map_err(db)?;
            // A note that no longer parses was edited in the table: name its size.
            let cp = SignedCheckpoint::from_note(&note, key).map_err(|e| match e {
                Error::Malformed { .. } => {
                    Error::Tampered(Finding::BadCheckpointSignature { size })
                }
                e => e,
            })?;
            if cp.checkpoint.size != size {
                return Err(Error::Tampered(Finding::BadCheckpointSignature { size }));
            }
            out.push(cp);
        }
        Ok(out)
    }

    /// The latest stored checkpoint.
    pub async fn latest_checkpoint(
        &self,
        key: &LogPublicKey,
    ) -> Result<Option<SignedCheckpoint>, Error> {
        let row = sqlx::query("SELECT note FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        checkpoint_of(row, key)
    }

    /// The stored note of the checkpoint at `size`, checked under `key`.
    pub async fn checkpoint_at(
        &self,
        key: &LogPublicKey,
        size: u64,
    ) -> Result<Option<SignedCheckpoint>, Error> {
        let row = sqlx::query("SELECT note FROM audit_checkpoints WHERE size = $1")
            .bind(to_i64(size)?)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        checkpoint_of(row, key)
    }

    /// Stores witness cosignatures of the checkpoint at `size`. The caller has
    /// verified each under a witness key it trusts (see [`crate::open_cosigned`]); a
    /// witness's second cosignature of the same checkpoint is ignored.
    pub async fn add_cosignatures(
        &self,
        size: u64,
        cosigs: &[Cosignature],
        now: Timestamp,
    ) -> Result<(), Error> {
        for c in cosigs {
            sqlx::query(
                "INSERT INTO audit_cosignatures (size, witness, at, line) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (size, witness) DO NOTHING",
            )
            .bind(to_i64(size)?)
            .bind(c.name.as_str())
            .bind(now.unix_millis())
            .bind(c.to_line())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        }
        Ok(())
    }

    /// The checkpoint note at `size` (default: the latest) followed by every stored
    /// cosignature line of it: what `GET /api/audit/checkpoint` serves. Lines are
    /// unverified here; readers check the ones they trust ([`crate::open_cosigned`]).
    pub async fn cosigned_note(
        &self,
        key: &LogPublicKey,
        size: Option<u64>,
    ) -> Result<Option<String>, Error> {
        let cp = match size {
            Some(n) => self.checkpoint_at(key, n).await?,
            None => self.latest_checkpoint(key).await?,
        };
        let Some(cp) = cp else { return Ok(None) };
        let mut note = cp.to_note(key);
        let rows =
            sqlx::query("SELECT line FROM audit_cosignatures WHERE size = $1 ORDER BY witness")
                .bind(to_i64(cp.checkpoint.size)?)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        for r in rows {
            let line: String = r.try_get(0).map_err(db)?;
            // Only well-formed lines: a row edited into something else must not make
            // the whole note unparseable for everyone.
            if matches!(Cosignature::parse_line(&line), Ok(Some(_))) {
                note.push_str(line.trim_end());
                note.push('\n');
            }
        }
        Ok(Some(note))
    }

    /// The latest stored checkpoint that carries a valid cosignature by every one of
    /// `witnesses`, with those cosignatures.
    pub async fn latest_witnessed(
        &self,
        key: &LogPublicKey,
        witnesses: &[WitnessPublicKey],
    ) -> Result<Option<(SignedCheckpoint, Vec<Cosignature>)>, Error> {
        let rows = sqlx::query("SELECT DISTINCT size FROM audit_cosignatures ORDER BY size DESC")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        for r in rows {
            let size = to_u64(r.try_get::<i64, _>(0).map_err(db)?, "cosigned size")?;
            let Some(note) = self.cosigned_note(key, Some(size)).await? else {
                continue;
            };
            match open_cosigned(&note, key, witnesses) {
                Ok(found) => return Ok(Some(found)),
                Err(Error::Unwitnessed { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Up to `limit` entries with `seq >= from`, in sequence order.
    pub async fn entries(&self, from: u64, limit: u64) -> Result<Vec<StoredEntry>, Error> {
        let q = format!("SELECT {ENTRY_COLS} FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2");
        let rows = sqlx::query(&q)
            .bind(to_i64(from)?)
            .bind(to_i64(limit)?)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(entry_from).collect()
    }

    async fn fetch_nodes(&self, ids: &[NodeId], map: &mut NodeMap) -> Result<(), Error> {
        let mut by_level: BTreeMap<u8, BTreeSet<u64>> = BTreeMap::new();
        for id in ids {
            if !map.contains(id) {
                by_level.entry(id.level).or_default().insert(id.index);
            }
        }
        for (level, idxs) in by_level {
            // Wanted indices cluster (neighbours of consecutive leaves) with a few far
            // ones (the ragged right edge); one range query per cluster keeps both
            // cheap.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for i in idxs {
                match runs.last_mut() {
                    Some((_, hi)) if i <= *hi + 64 => *hi = i,
                    _ => runs.push((i, i)),
                }
            }
            for (lo, hi) in runs {
                let rows = sqlx::query(
                    "SELECT idx, hash FROM audit_nodes WHERE level = $1 AND idx >= $2 AND idx <= $3",
                )
                .bind(i64::from(level))
                .bind(to_i64(lo)?)
                .bind(to_i64(hi)?)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
                for r in rows {
                    let index = to_u64(r.try_get::<i64, _>(0).map_err(db)?, "node index")?;
                    let hash: String = r.try_get(1).map_err(db)?;
                    let hash = Hash::from_hex(&hash).ok_or_else(|| corrupt("node hash"))?;
                    map.insert(NodeId { level, index }, hash);
                }
            }
        }
        Ok(())
    }

    /// Inclusion proof for entry `seq` in the tree of `size` entries.
    pub async fn inclusion_proof(&self, seq: u64, size: u64) -> Result<InclusionProof, Error> {
        let stored = self.size().await?;
        if size > stored {
            return Err(Error::IndexOutOfRange {
                index: size,
                size: stored,
            });
        }
        let mut map = NodeMap::new(size);
        self.fetch_nodes(&inclusion_proof_nodes(seq, size)?, &mut map)
            .await?;
        inclusion_proof(&map, seq, size).map_err(missing_node)
    }

    /// Consistency proof between the trees of `old_size` and `new_size` entries.
    pub async fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, Error> {
        let stored = self.size().await?;
        if new_size > stored {
            return Err(Error::IndexOutOfRange {
                index: new_size,
                size: stored,
            });
        }
        let mut map = NodeMap::new(new_size);
        self.fetch_nodes(&consistency_proof_nodes(old_size, new_size)?, &mut map)
            .await?;
        consistency_proof(&map, old_size, new_size).map_err(missing_node)
    }

    /// Recomputes the whole log and checks it against every stored checkpoint plus
    /// `extra` ones (for example the latest checkpoint an auditor holds, which a
    /// database owner cannot delete). Names the first entry that no longer matches.
    ///
    /// `archived` is the frontier kept when entries below its size were archived
    /// (docs/operations.md); verification then starts there.
    pub async fn verify(
        &self,
        key: &LogPublicKey,
        origin: &str,
        archived: Option<&CompactRange>,
        extra: &[SignedCheckpoint],
    ) -> Result<VerifyReport, Error> {
        let mut cps = self.checkpoints(key).await?;
        cps.extend_from_slice(extra);
        let mut v = LogVerifier::new(&cps, key, origin, archived)?;
        loop {
            let batch = self.entries(v.expected(), BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for row in &batch {
                v.push(row)?;
            }
        }
        // Rows missing after the last checkpoint are caught by the head row, which
        // counts every append; rows beyond it were inserted outside the log. The head
        // is read after the rows, so an append racing this check only adds to it.
        let head_size = self.size().await?;
        let report = v.finish()?;
        if report.size > head_size {
            return Err(Error::Tampered(Finding::BeyondHead {
                seq: head_size,
                rows: report.size,
            }));
        }
        if head_size > report.size {
            return Err(Error::Tampered(Finding::HeadAhead {
                seq: report.size,
                head_size,
            }));
        }
        Ok(report)
    }

    /// Writes an auditor package for entries `[from, to)` (see [`crate::check_package`]):
    /// the latest checkpoint at or before `from`, the first at or after `to`, the
    /// consistency proof between them and an inclusion proof per entry. Fails if no
    /// checkpoint covers `to` yet: sign one first ([`AuditWriter::checkpoint_now`]).
    pub async fn export<W: Write>(
        &self,
        out: &mut W,
        key: &LogPublicKey,
        from: u64,
        to: u64,
    ) -> Result<PackageReport, Error> {
        self.export_with(out, key, from, to, |_: &mut W| std::future::ready(Ok(())))
            .await
    }

    /// [`AuditStore::export`] that hands the output to `flush` after the header and
    /// after every batch of entries, so that a caller writing into a buffer can send
    /// the package on while it is being made (an HTTP download) instead of holding all
    /// of it: `flush` takes what it wants out of the buffer at once and returns a
    /// future that delivers it, which the export awaits before it goes on.
    pub async fn export_with<W, F, Fut>(
        &self,
        out: &mut W,
        key: &LogPublicKey,
        from: u64,
        to: u64,
        mut flush: F,
    ) -> Result<PackageReport, Error>
    where
        W: Write,
        F: FnMut(&mut W) -> Fut,
        Fut: std::future::Future<Output = Result<(), Error>>,
    {
        let cps = self.checkpoints(key).await?;
        let start = cps.iter().rev().find(|c| c.checkpoint.size <= from);
        let end = cps
            .iter()
            .find(|c| c.checkpoint.size >= to)
            .ok_or_else(|| Error::IndexOutOfRange {
                index: to,
                size: cps.last().map_or(0, |c| c.checkpoint.size),
            })?;
        let end_size = end.checkpoint.size;
        let proof = match start {
            Some(s) => {
                self.consistency_proof(s.checkpoint.size, end_size)
                    .await?
                    .path
            }
            None => Vec::new(),
        };
        let mut w = PackageWriter::start(out, key, from, to, start, end, proof)?;
        flush(w.sink_mut()).await?;
        let mut map = NodeMap::new(end_size);
        while w.expected() < to {
            let want = (to - w.expected()).min(BATCH);
            let batch = self.entries(w.expected(), want).await?;
            let Some(first) = batch.first() else {
                break;
            };
            if first.entry.seq() != w.expected() {
                return Err(Error::Tampered(Finding::Missing { seq: w.expected() }));
            }
            // Upper nodes repeat across batches; keep the map small by starting afresh.
            if map.len() > 200_000 {
                map = NodeMap::new(end_size);
            }
            let mut ids = Vec::new();
            for row in &batch {
                ids.extend(inclusion_proof_nodes(row.entry.seq(), end_size)?);
            }
            self.fetch_nodes(&ids, &mut map).await?;
            for row in batch {
                let seq = row.entry.seq();
                if seq >= to {
                    break;
                }
                let path = inclusion_proof(&map, seq, end_size)
                    .map_err(|_| Error::Tampered(Finding::Altered { seq }))?
                    .path;
                w.write_entry(row.entry, path)?;
            }
            flush(w.sink_mut()).await?;
        }
        w.finish()
    }

    /// Every account that touched `patient`'s appointments or consultations between
    /// `from` and `to`: entries with that patient id, plus entries whose target is one
    /// of `targets` (the patient's `appointment:N` / `consultation:N` ids, listed by
    /// the caller from its own tables).
    pub async fn access_report(
        &self,
        patient: &str,
        targets: &BTreeSet<String>,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<AccessRecord>, Error> {
        let q = format!(
            "SELECT {ENTRY_COLS} FROM audit_log WHERE patient = $1 AND at >= $2 AND at < $3 ORDER BY seq"
        );
        let rows = sqlx::query(&q)
            .bind(patient)
            .bind(from.unix_millis())
            .bind(to.unix_millis())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut entries: Vec<AuditEntry> = rows
            .iter()
            .map(|r| entry_from(r).map(|s| s.entry))
            .collect::<Result<_, _>>()?;
        let q = format!(
            "SELECT {ENTRY_COLS} FROM audit_log WHERE target = $1 AND at >= $2 AND at < $3 ORDER BY seq"
        );
        for t in targets {
            let rows = sqlx::query(&q)
                .bind(t.as_str())
                .bind(from.unix_millis())
                .bind(to.unix_millis())
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
            for r in &rows {
                entries.push(entry_from(r)?.entry);
            }
        }
        entries.sort_by_key(AuditEntry::seq);
        entries.dedup_by_key(|e| e.seq());
        Ok(access_report(
            &entries,
            patient,
            targets,
            from,
            to,
            crate::report::PATIENT_RECORD_KINDS,
        ))
    }
}

fn missing_node(e: Error) -> Error {
    match e {
        Error::Unreachable(_) => corrupt("a node hash needed for the proof is missing"),
        e => e,
    }
}

async fn lock_head(pool: &AnyPool) -> Result<(Transaction<'static, Any>, Head), Error> {
    let mut tx = pool.begin().await.map_err(db)?;
    let head = lock_head_in(&mut tx).await?;
    Ok((tx, head))
}

async fn lock_head_in(conn: &mut AnyConnection) -> Result<Head, Error> {
    // Writing first takes the lock before anything is read, so two appenders can
    // never both read the same head (SQLite would otherwise fail one with BUSY on
    // upgrade; PostgreSQL would number two entries alike).
    sqlx::query("UPDATE audit_head SET size = size WHERE id = 1")
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    let r = sqlx::query(
        "SELECT size, frontier, signed_size, unsigned_since FROM audit_head WHERE id = 1",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    head_from(&r)
}

async fn append_in(
    tx: &mut AnyConnection,
    head: &mut Head,
    now: Timestamp,
    event: AuditEvent,
) -> Result<u64, Error> {
    let seq = head.size;
    let entry = AuditEntry::new(seq, now, event);
    let leaf = entry.leaf_hash();
    let mut nodes = Vec::with_capacity(2);
    head.frontier.push_with(leaf, |id, h| nodes.push((id, *h)));
    let q = format!(
        "INSERT INTO audit_log ({ENTRY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    );
    sqlx::query(&q)
        .bind(to_i64(seq)?)
        .bind(entry.time().unix_millis())
        .bind(entry.actor())
        .bind(entry.role())
        .bind(entry.action())
        .bind(entry.target())
        .bind(entry.patient())
        .bind(entry.outcome().as_str())
        .bind(entry.source())
        .bind(entry.request_id())
        .bind(entry.priority().as_str())
        .bind(entry.detail())
        .bind(leaf.to_hex())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    for (id, h) in &nodes {
        sqlx::query("INSERT INTO audit_nodes (level, idx, hash) VALUES ($1, $2, $3)")
            .bind(i64::from(id.level))
            .bind(to_i64(id.index)?)
            .bind(h.to_hex())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
    }
    head.size += 1;
    let since = head.unsigned_since.unwrap_or(now);
    head.unsigned_since = Some(since);
    sqlx::query("UPDATE audit_head SET size = $1, frontier = $2, unsigned_since = $3 WHERE id = 1")
        .bind(to_i64(head.size)?)
        .bind(frontier_text(&head.frontier))
        .bind(since.unix_millis())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    Ok(seq)
}

/// What [`AuditWriter::append`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct AppendOutcome {
    /// Sequence number given to the entry.
    pub seq: u64,
    /// The checkpoint signed in the same transaction, if the policy called for one.
    pub checkpoint: Option<SignedCheckpoint>,
}

/// The writing side: appends entries and signs checkpoints with the log key.
pub struct AuditWriter {
    store: AuditStore,
    origin: String,
    key: LogSigningKey,
    policy: CheckpointPolicy,
}

impl AuditWriter {
    /// A writer for the log named `origin` (the checkpoints' origin line and key name).
    pub fn new(
        store: AuditStore,
        origin: &str,
        key: LogSigningKey,
        policy: CheckpointPolicy,
    ) -> Result<Self, Error> {
        key.public_key().to_vkey(origin)?;
        Ok(Self {
            store,
            origin: origin.to_owned(),
            key,
            policy,
        })
    }

    /// The read side.
    pub fn store(&self) -> &AuditStore {
        &self.store
    }

    /// The log key's public half.
    pub fn public_key(&self) -> LogPublicKey {
        self.key.public_key()
    }

    /// The log's name.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    async fn sign_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        head: &Head,
        now: Timestamp,
    ) -> Result<SignedCheckpoint, Error> {
        // Checkpoint times never go backwards, whatever the clock did.
        let last: Option<i64> =
            sqlx::query("SELECT at FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
                .fetch_optional(&mut **tx)
                .await
                .map_err(db)?
                .map(|r| r.try_get(0))
                .transpose()
                .map_err(db)?;
        let time = last
            .and_then(Timestamp::from_unix_millis)
            .map_or(now, |t| t.max(now));
        let signed = self.key.sign(Checkpoint {
            origin: self.origin.clone(),
            size: head.size,
            root: head.frontier.root(),
            time,
        });
        let public = self.key.public_key();
        sqlx::query("INSERT INTO audit_checkpoints (size, at, note) VALUES ($1, $2, $3)")
            .bind(to_i64(head.size)?)
            .bind(time.unix_millis())
            .bind(signed.to_note(&public))
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        sqlx::query("UPDATE audit_head SET signed_size = $1, unsigned_since = NULL WHERE id = 1")
            .bind(to_i64(head.size)?)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        Ok(signed)
    }

    /// Records `event` at `now`, and signs a checkpoint in the same transaction when
    /// the policy says one is due.
    pub async fn append(&self, now: Timestamp, event: AuditEvent) -> Result<AppendOutcome, Error> {
        let (mut tx, mut head) = lock_head(&self.store.pool).await?;
        let seq = append_in(&mut tx, &mut head, now, event).await?;
        let checkpoint =
            if self
                .policy
                .is_due(head.size - head.signed_size, head.unsigned_since, now)
            {
                Some(self.sign_in(&mut tx, &head, now).await?)
            } else {
                None
            };
        tx.commit().await.map_err(db)?;
        Ok(AppendOutcome { seq, checkpoint })
    }

    /// Signs a checkpoint if the policy calls for one (N unsigned entries, or the
    /// oldest unsigned entry older than T). The server calls it periodically and at
    /// [`AuditWriter::next_deadline`]; entries recorded with the keyless
    /// [`AuditStore::append`] are signed here.
    pub async fn tick(&self, now: Timestamp) -> Result<Option<SignedCheckpoint>, Error> {
        self.sign_if(now, false).await
    }

    /// Signs a checkpoint now if any entry is unsigned (before an export, at shutdown).
    pub async fn checkpoint_now(&self, now: Timestamp) -> Result<Option<SignedCheckpoint>, Error> {
        self.sign_if(now, true).await
    }

    async fn sign_if(
        &self,
        now: Timestamp,
        force: bool,
    ) -> Result<Option<SignedCheckpoint>, Error> {
        let (mut tx, head) = lock_head(&self.store.pool).await?;
        let unsigned = head.size.saturating_sub(head.signed_size);
        let due = if force {
            unsigned > 0
        } else {
            self.policy.is_due(unsigned, head.unsigned_since, now)
        };
        let out = if due {
            Some(self.sign_in(&mut tx, &head, now).await?)
        } else {
            None
        };
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    /// When [`AuditWriter::tick`] should next run; `None` when everything is signed.
    pub async fn next_deadline(&self) -> Result<Option<Timestamp>, Error> {
        let r = sqlx::query("SELECT unsigned_since FROM audit_head WHERE id = 1")
            .fetch_one(&self.store.pool)
            .await
            .map_err(db)?;
        Ok(r.try_get::<Option<i64>, _>(0)
            .map_err(db)?
            .and_then(Timestamp::from_unix_millis)
            .map(|t| t.saturating_add_millis(self.policy.max_delay_ms)))
    }
}

/// A stored checkpoint note (first column of `row`), checked under `key`.
fn checkpoint_of(
    row: Option<sqlx::any::AnyRow>,
    key: &LogPublicKey,
) -> Result<Option<SignedCheckpoint>, Error> {
    row.map(|r| {
        let note: String = r.try_get(0).map_err(db)?;
        SignedCheckpoint::from_note(&note, key)
    })
    .transpose()
}
