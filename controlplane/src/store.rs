//! Storage: SQLite (rusqlite, bundled) or PostgreSQL (the synchronous `postgres` client),
//! both behind one small synchronous transaction trait [`Tx`], so every operation in
//! [`crate::ops`] is written once and runs in `spawn_blocking` against either backend.
//!
//! Objects are stored as JSON documents, one table per kind (`name`, `doc`, `created_at`,
//! `updated_at`), key hashes in `key_hashes`, the change feed in `changes`. Migrations are
//! versioned in `schema_migrations` and applied at start. On PostgreSQL every write
//! transaction first takes one advisory lock, so writes of several control-plane replicas are
//! serialised and change-feed sequence numbers become visible in order.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::ApiError;
use crate::model::Kind;

/// One stored object.
#[derive(Debug, Clone)]
pub struct StoredDoc {
    /// Its id or name.
    pub name: String,
    /// The JSON document.
    pub doc: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// One change-feed entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its sequence number.
    pub seq: i64,
    /// `key`, `tenant`, `team` or `budget`.
    pub kind: String,
    /// The key hash, or the tenant/team/budget name.
    pub name: String,
}

/// What one transaction can do; implemented by both backends.
pub trait Tx {
    /// One object.
    fn get(&mut self, kind: Kind, name: &str) -> Result<Option<StoredDoc>, ApiError>;
    /// Every object of a kind, by name.
    fn list(&mut self, kind: Kind) -> Result<Vec<StoredDoc>, ApiError>;
    /// Inserts a new object (the caller checked it does not exist).
    fn insert(&mut self, kind: Kind, name: &str, doc: &str, now: i64) -> Result<(), ApiError>;
    /// Replaces an object's document.
    fn update(&mut self, kind: Kind, name: &str, doc: &str, now: i64) -> Result<(), ApiError>;
    /// Deletes an object.
    fn delete(&mut self, kind: Kind, name: &str) -> Result<(), ApiError>;
    /// The key a hash resolves to, and until when (unix seconds; `None`: no limit).
    fn hash_get(&mut self, hash: &str) -> Result<Option<(String, Option<i64>)>, ApiError>;
    /// Sets what a hash resolves to.
    fn hash_put(
        &mut self,
        hash: &str,
        key_id: &str,
        valid_until: Option<i64>,
    ) -> Result<(), ApiError>;
    /// Removes a hash.
    fn hash_delete(&mut self, hash: &str) -> Result<(), ApiError>;
    /// Appends a change-feed entry; its sequence number.
    fn append_change(&mut self, kind: &str, name: &str, now: i64) -> Result<i64, ApiError>;
    /// The newest sequence number (0 when the feed is empty).
    fn latest_seq(&mut self) -> Result<i64, ApiError>;
    /// The oldest sequence number kept.
    fn oldest_seq(&mut self) -> Result<Option<i64>, ApiError>;
    /// Entries after `seq`, oldest first, at most `limit`.
    fn changes_after(&mut self, seq: i64, limit: i64) -> Result<Vec<Change>, ApiError>;
    /// Drops entries older than the newest `keep`.
    fn prune_changes(&mut self, keep: i64) -> Result<(), ApiError>;
}

/// The versioned migrations: (version, SQLite, PostgreSQL).
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "CREATE TABLE keys (name TEXT PRIMARY KEY, doc TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
     CREATE TABLE tenants (name TEXT PRIMARY KEY, doc TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
     CREATE TABLE teams (name TEXT PRIMARY KEY, doc TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
     CREATE TABLE budgets (name TEXT PRIMARY KEY, doc TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
     CREATE TABLE key_hashes (hash TEXT PRIMARY KEY, key_id TEXT NOT NULL, valid_until INTEGER);
     CREATE INDEX key_hashes_key_id ON key_hashes (key_id);
     CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, name TEXT NOT NULL, at INTEGER NOT NULL);",
    "CREATE TABLE keys (name TEXT PRIMARY KEY, doc TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
     CREATE TABLE tenants (name TEXT PRIMARY KEY, doc TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
     CREATE TABLE teams (name TEXT PRIMARY KEY, doc TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
     CREATE TABLE budgets (name TEXT PRIMARY KEY, doc TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
     CREATE TABLE key_hashes (hash TEXT PRIMARY KEY, key_id TEXT NOT NULL, valid_until BIGINT);
     CREATE INDEX key_hashes_key_id ON key_hashes (key_id);
     CREATE TABLE changes (seq BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, at BIGINT NOT NULL);",
)];

/// The newest schema version this build knows.
pub fn schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// The advisory lock every PostgreSQL write transaction takes first.
const PG_WRITE_LOCK: i64 = 0x746f_6c6c_6761_7465;

enum Backend {
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres(PgPool),
}

/// The storage, shared by every handler.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
}

impl Store {
    /// Opens (creating when missing) a SQLite file and applies the migrations.
    pub fn open_sqlite(path: &Path) -> Result<Store, ApiError> {
        let mut conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate_sqlite(&mut conn)?;
        Ok(Store {
            backend: Arc::new(Backend::Sqlite(Mutex::new(conn))),
        })
    }

    /// Connects to PostgreSQL and applies the migrations.
    pub fn open_postgres(url: &str, pool_size: usize) -> Result<Store, ApiError> {
        let pool = PgPool {
            url: url.to_owned(),
            conns: (0..pool_size).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        };
        pool.with(migrate_postgres)?;
        Ok(Store {
            backend: Arc::new(Backend::Postgres(pool)),
        })
    }

    /// Runs `f` in a write transaction (committed when it returns `Ok`).
    pub async fn write<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, ApiError> + Send + 'static,
    {
        self.run(true, f).await
    }

    /// Runs `f` in a read-only transaction (one consistent snapshot).
    pub async fn read<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, ApiError> + Send + 'static,
    {
        self.run(false, f).await
    }

    async fn run<T, F>(&self, write: bool, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> Result<T, ApiError> + Send + 'static,
    {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || match &*backend {
            Backend::Sqlite(conn) => {
                let mut conn = match conn.lock() {
                    Ok(c) => c,
                    Err(poisoned) => poisoned.into_inner(),
                };
                let behavior = if write {
                    rusqlite::TransactionBehavior::Immediate
                } else {
                    rusqlite::TransactionBehavior::Deferred
                };
                let tx = conn.transaction_with_behavior(behavior)?;
                let mut t = SqliteTx(tx);
                let out = f(&mut t)?;
                t.0.commit()?;
                Ok(out)
            }
            Backend::Postgres(pool) => pool.with(move |client| {
                let mut b = client.build_transaction();
                if write {
                    b = b.isolation_level(postgres::IsolationLevel::ReadCommitted);
                } else {
                    b = b
                        .isolation_level(postgres::IsolationLevel::RepeatableRead)
                        .read_only(true);
                }
                let mut tx = b.start()?;
                if write {
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PG_WRITE_LOCK])?;
                }
                let mut t = PgTx(tx);
                let out = f(&mut t)?;
                t.0.commit()?;
                Ok(out)
            }),
        })
        .await
        .map_err(|e| ApiError::Storage(format!("storage task failed: {e}")))?
    }
}

/// A few PostgreSQL connections, reconnected when closed.
struct PgPool {
    url: String,
    conns: Vec<Mutex<Option<postgres::Client>>>,
    next: AtomicUsize,
}

impl PgPool {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let n = self.conns.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        // Take the first idle connection from `start` on, else wait for `start`'s.
        let mut guard = None;
        for i in 0..n {
            if let Some(slot) = self.conns.get((start + i) % n) {
                if let Ok(g) = slot.try_lock() {
                    guard = Some(g);
                    break;
                }
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            None => match self.conns.get(start) {
                Some(slot) => match slot.lock() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                },
                None => return Err(ApiError::Storage("empty connection pool".to_owned())),
            },
        };
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = None;
            let client = postgres::Client::connect(&self.url, postgres::NoTls)?;
            *guard = Some(client);
        }
        let Some(client) = guard.as_mut() else {
            return Err(ApiError::Storage("no connection".to_owned()));
        };
        let out = f(client);
        if client.is_closed() {
            *guard = None;
        }
        out
    }
}

impl Drop for PgPool {
    /// The synchronous client blocks on its own runtime when it closes, which must not happen
    /// on an async worker thread: the connections are closed on a thread of their own.
    fn drop(&mut self) {
        let clients: Vec<postgres::Client> = self
            .conns
            .iter_mut()
            .filter_map(|m| match m.get_mut() {
                Ok(c) => c.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            })
            .collect();
        if !clients.is_empty() {
            let _ = std::thread::Builder::new()
                .name("tollgate-cp-pg-close".to_owned())
                .spawn(move || drop(clients));
        }
    }
}

fn migrate_sqlite(conn: &mut rusqlite::Connection) -> Result<(), ApiError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    check_not_newer(current)?;
    for (version, sql, _) in MIGRATIONS {
        if *version > current {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                rusqlite::params![version, now()],
            )?;
            tracing::info!(version, backend = "sqlite", "Applied migration");
        }
    }
    tx.commit()?;
    Ok(())
}

fn migrate_postgres(client: &mut postgres::Client) -> Result<(), ApiError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PG_WRITE_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
        )?
        .get(0);
    check_not_newer(current)?;
    for (version, _, sql) in MIGRATIONS {
        if *version > current {
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[version, &now()],
            )?;
            tracing::info!(version, backend = "postgres", "Applied migration");
        }
    }
    tx.commit()?;
    Ok(())
}

fn check_not_newer(current: i64) -> Result<(), ApiError> {
    if current > schema_version() {
        return Err(ApiError::Storage(format!(
            "the database has schema version {current}, newer than this build's {}: upgrade tollgate",
            schema_version()
        )));
    }
    Ok(())
}

/// Unix seconds now.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

struct SqliteTx<'a>(rusqlite::Transaction<'a>);

fn sqlite_doc(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredDoc> {
    Ok(StoredDoc {
        name: r.get(0)?,
        doc: r.get(1)?,
        created_at: r.get(2)?,
        updated_at: r.get(3)?,
    })
}

impl Tx for SqliteTx<'_> {
    fn get(&mut self, kind: Kind, name: &str) -> Result<Option<StoredDoc>, ApiError> {
        let sql = format!(
            "SELECT name, doc, created_at, updated_at FROM {} WHERE name = ?1",
            kind.table()
        );
        let mut st = self.0.prepare_cached(&sql)?;
        let mut rows = st.query_map([name], sqlite_doc)?;
        Ok(rows.next().transpose()?)
    }

    fn list(&mut self, kind: Kind) -> Result<Vec<StoredDoc>, ApiError> {
        let sql = format!(
            "SELECT name, doc, created_at, updated_at FROM {} ORDER BY name",
            kind.table()
        );
        let mut st = self.0.prepare_cached(&sql)?;
        let rows = st.query_map([], sqlite_doc)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn insert(&mut self, kind: Kind, name: &str, doc: &str, now: i64) -> Result<(), ApiError> {
        let sql = format!(
            "INSERT INTO {} (name, doc, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
            kind.table()
        );
        self.0.execute(&sql, rusqlite::params![name, doc, now])?;
        Ok(())
    }

    fn update(&mut self, kind: Kind, name: &str, doc: &str, now: i64) -> Result<(), ApiError> {
        let sql = format!(
            "UPDATE {} SET doc = ?2, updated_at = ?3 WHERE name = ?1",
            kind.table()
        );
        self.0.execute(&sql, rusqlite::params![name, doc, now])?;
        Ok(())
    }

    fn delete(&mut self, kind: Kind, name: &str) -> Result<(), ApiError> {
        let sql = format!("DELETE FROM {} WHERE name = ?1", kind.table());
        self.0.execute(&sql, [name])?;
        Ok(())
    }

    fn hash_get(&mut self, hash: &str) -> Result<Option<(String, Option<i64>)>, ApiError> {
        let mut st = self
            .0
            .prepare_cached("SELECT key_id, valid_until FROM key_hashes WHERE hash = ?1")?;
        let mut rows = st.query_map([hash], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.next().transpose()?)
    }

    fn hash_put(
        &mut self,
        hash: &str,
        key_id: &str,
        valid_until: Option<i64>,
    ) -> Result<(), ApiError> {
        self.0.execute(
            "INSERT INTO key_hashes (hash, key_id, valid_until) VALUES (?1, ?2, ?3)
             ON CONFLICT (hash) DO UPDATE SET key_id = excluded.key_id, valid_until = excluded.valid_until",
            rusqlite::params![hash, key_id, valid_until],
        )?;
        Ok(())
    }

    fn hash_delete(&mut self, hash: &str) -> Result<(), ApiError> {
        self.0
            .execute("DELETE FROM key_hashes WHERE hash = ?1", [hash])?;
        Ok(())
    }

    fn append_change(&mut self, kind: &str, name: &str, now: i64) -> Result<i64, ApiError> {
        self.0.execute(
            "INSERT INTO changes (kind, name, at) VALUES (?1, ?2, ?3)",
            rusqlite::params![kind, name, now],
        )?;
        Ok(self.0.last_insert_rowid())
    }

    fn latest_seq(&mut self) -> Result<i64, ApiError> {
        // `sqlite_sequence` survives pruning; MAX(seq) is the same while rows exist.
        let mut st = self
            .0
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM changes")?;
        Ok(st.query_row([], |r| r.get(0))?)
    }

    fn oldest_seq(&mut self) -> Result<Option<i64>, ApiError> {
        let mut st = self.0.prepare_cached("SELECT MIN(seq) FROM changes")?;
        Ok(st.query_row([], |r| r.get(0))?)
    }

    fn changes_after(&mut self, seq: i64, limit: i64) -> Result<Vec<Change>, ApiError> {
        let mut st = self.0.prepare_cached(
            "SELECT seq, kind, name FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = st.query_map(rusqlite::params![seq, limit], |r| {
            Ok(Change {
                seq: r.get(0)?,
                kind: r.get(1)?,
                name: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn prune_changes(&mut self, keep: i64) -> Result<(), ApiError> {
        self.0.execute(
            "DELETE FROM changes WHERE seq <= (SELECT MAX(seq) FROM changes) - ?1",
            [keep],
        )?;
        Ok(())
    }
}

struct PgTx<'a>(postgres::Transaction<'a>);

fn pg_doc(r: &postgres::Row) -> StoredDoc {
    StoredDoc {
        name: r.get(0),
        doc: r.get(1),
        created_at: r.get(2),
        updated_at: r.get(3),
    }
}

impl Tx for PgTx<'_> {
    fn get(&mut self, kind: Kind, name: &str) -> Result<Option<StoredDoc>, ApiError> {
        let sql = format!(
            "SELECT name, doc, created_at, updated_at FROM {} WHERE name = $1",
            kind.table()
        );
        Ok(self.0.query_opt(&sql, &[&name])?.as_ref().map(pg_doc))
    }

    fn list(&mut self, kind: Kind) -> Result<Vec<StoredDoc>, ApiError> {
        let sql = format!(
            "SELECT name, doc, created_at, updated_at FROM {} ORDER BY name",
            kind.table()
        );
        Ok(self.0.query(&sql, &[])?.iter().map(pg_doc).collect())
    }

    fn insert(&mut self, kind: Kind, name: &str, doc: &str, now: i64) -> Result<(), ApiError> {
        let sql = format!(
            "INSERT INTO {} (name, doc, created_at, updated_at) VALUES ($1, $2, $3, $3)",
            kind.table()
        );
        self.0.execute(&sql, &[&name, &doc, &now])?;
        Ok(())
    }

    fn update(&mut self, kind: Kind, name: &str, doc: &str, now: i64) -> Result<(), ApiError> {
        let sql = format!(
            "UPDATE {} SET doc = $2, updated_at = $3 WHERE name = $1",
            kind.table()
        );
        self.0.execute(&sql, &[&name, &doc, &now])?;
        Ok(())
    }

    fn delete(&mut self, kind: Kind, name: &str) -> Result<(), ApiError> {
        let sql = format!("DELETE FROM {} WHERE name = $1", kind.table());
        self.0.execute(&sql, &[&name])?;
        Ok(())
    }

    fn hash_get(&mut self, hash: &str) -> Result<Option<(String, Option<i64>)>, ApiError> {
        Ok(self
            .0
            .query_opt(
                "SELECT key_id, valid_until FROM key_hashes WHERE hash = $1",
                &[&hash],
            )?
            .map(|r| (r.get(0), r.get(1))))
    }

    fn hash_put(
        &mut self,
        hash: &str,
        key_id: &str,
        valid_until: Option<i64>,
    ) -> Result<(), ApiError> {
        self.0.execute(
            "INSERT INTO key_hashes (hash, key_id, valid_until) VALUES ($1, $2, $3)
             ON CONFLICT (hash) DO UPDATE SET key_id = excluded.key_id, valid_until = excluded.valid_until",
            &[&hash, &key_id, &valid_until],
        )?;
        Ok(())
    }

    fn hash_delete(&mut self, hash: &str) -> Result<(), ApiError> {
        self.0
            .execute("DELETE FROM key_hashes WHERE hash = $1", &[&hash])?;
        Ok(())
    }

    fn append_change(&mut self, kind: &str, name: &str, now: i64) -> Result<i64, ApiError> {
        Ok(self
            .0
            .query_one(
                "INSERT INTO changes (kind, name, at) VALUES ($1, $2, $3) RETURNING seq",
                &[&kind, &name, &now],
            )?
            .get(0))
    }

    fn latest_seq(&mut self) -> Result<i64, ApiError> {
        Ok(self
            .0
            .query_one("SELECT COALESCE(MAX(seq), 0)::BIGINT FROM changes", &[])?
            .get(0))
    }

    fn oldest_seq(&mut self) -> Result<Option<i64>, ApiError> {
        Ok(self
            .0
            .query_one("SELECT MIN(seq) FROM changes", &[])?
            .get(0))
    }

    fn changes_after(&mut self, seq: i64, limit: i64) -> Result<Vec<Change>, ApiError> {
        Ok(self
            .0
            .query(
                "SELECT seq, kind, name FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&seq, &limit],
            )?
            .iter()
            .map(|r| Change {
                seq: r.get(0),
                kind: r.get(1),
                name: r.get(2),
            })
            .collect())
    }

    fn prune_changes(&mut self, keep: i64) -> Result<(), ApiError> {
        self.0.execute(
            "DELETE FROM changes WHERE seq <= (SELECT MAX(seq) FROM changes) - $1",
            &[&keep],
        )?;
        Ok(())
    }
}
