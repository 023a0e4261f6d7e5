//! The SQLite view databases: a directory with one file per projection
//! (`<projection>.db`) holding that projection's tables of every version,
//! their checkpoints and the registry that says which version answers
//! queries. A projection's rows, its checkpoint and its registry entries
//! always sit in one file, so one transaction covers them; projections in
//! separate files write (and rebuild) side by side instead of taking turns
//! on one writer.
//!
//! Views can always be rebuilt from the log, so the files run with
//! `synchronous=NORMAL`: a crash may lose the last few view transactions, but
//! each transaction carries its checkpoint with its rows, so what survives is
//! consistent and the lost tail is simply projected again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use referral_domain::eventlog::Position;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::ViewError;

/// How many idle read connections are kept per file.
const READ_POOL: usize = 8;
/// Page cache of a file's writer, in KiB (SQLite's negative `cache_size`):
/// it holds the pages the projection's writes touch. Four files at 8 MB
/// take what one file's writer took at 32 MB; at 32 MB each, rebuilding all
/// four over 250,000 events peaked at 280-310 MB instead of 185-190 MB,
/// with no speed-up beyond the runs' noise.
const WRITER_CACHE_KIB: i64 = -8_192;
/// Page cache of each reading connection, in KiB. Every commit of the writer
/// empties it, so it is kept small (8 MB took some 40 MB more memory while
/// all four projections rebuilt at once, for no speed anyone could measure).
const READER_CACHE_KIB: i64 = -2_048;
/// WAL auto-checkpoint interval of a writer, in pages (SQLite's default is
/// 1,000). Rebuilds change pages all over their tables; with checkpoints ten
/// times further apart, a page that several commits change is copied from
/// the WAL into the database once rather than once per checkpoint (measured:
/// rebuilds 10-30 % faster). The WAL grows to about 40 MB before it is
/// checkpointed.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// Handle on the view databases, one file per projection in one directory.
/// Files are opened (and created) on first use. Cheap to clone.
#[derive(Clone)]
pub struct ViewDb {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    files: Mutex<HashMap<String, ViewFile>>,
}

/// One projection's file. Cheap to clone.
#[derive(Clone)]
pub struct ViewFile {
    inner: Arc<FileInner>,
}

struct FileInner {
    path: PathBuf,
    /// The one connection this process writes the file through, opened on
    /// first use. Write transactions queue on its lock in memory instead of
    /// sleeping in SQLite's busy handler, and they share its page cache: a
    /// connection drops its whole cache when it sees another connection's
    /// commit, so versions writing through connections of their own would
    /// each start every transaction cold.
    writer: Mutex<Option<Connection>>,
    readers: Mutex<Vec<Connection>>,
}

/// A write transaction from [`ViewFile::begin`], holding the file's writer.
pub struct OpenWrite<'a> {
    writer: MutexGuard<'a, Option<Connection>>,
    done: bool,
}

impl OpenWrite<'_> {
    pub fn conn(&self) -> &Connection {
        self.writer.as_ref().expect("a write transaction has its connection")
    }

    pub fn commit(mut self) -> rusqlite::Result<()> {
        self.done = true;
        let result = self.conn().execute_batch("COMMIT");
        if result.is_err() {
            // A failed COMMIT can leave the transaction open.
            let _ = self.conn().execute_batch("ROLLBACK");
        }
        result
    }
}

impl Drop for OpenWrite<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn().execute_batch("ROLLBACK");
        }
    }
}

/// One projection version as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub name: String,
    pub version: u32,
    /// The projection code's schema this version was built with.
    pub schema: u32,
    /// Whether this version answers queries (the other one, if any, is being rebuilt).
    pub active: bool,
    pub checkpoint: Option<Position>,
    pub events_applied: u64,
    /// When the store recorded the last event applied.
    pub last_event_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The failure that stopped this version: the event's position and the error.
    pub failure: Option<(Position, String)>,
}

impl ViewDb {
    /// Opens (or creates) the directory of view databases at `dir`.
    pub fn open(dir: &Path) -> Result<ViewDb, ViewError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ViewError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        Ok(ViewDb { inner: Arc::new(Inner { dir: dir.to_path_buf(), files: Mutex::new(HashMap::new()) }) })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The path of `projection`'s file.
    pub fn path_of(&self, projection: &str) -> PathBuf {
        self.inner.dir.join(format!("{projection}.db"))
    }

    /// `projection`'s file, opened (and created, with an empty registry) on
    /// first use.
    pub fn file(&self, projection: &str) -> rusqlite::Result<ViewFile> {
        let mut files = self.inner.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = files.get(projection) {
            return Ok(file.clone());
        }
        if projection.is_empty() || !projection.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "{projection:?} is not a projection name (letters, digits, '_' and '-' only)"
            )));
        }
        let file = ViewFile::open(self.path_of(projection))?;
        files.insert(projection.to_string(), file.clone());
        Ok(file)
    }

    /// A new connection to `projection`'s file, for reading.
    pub fn connect(&self, projection: &str) -> Result<Connection, ViewError> {
        self.file(projection)?.connect()
    }

    /// Runs `f` in a write transaction on `projection`'s file; see [`ViewFile::write`].
    pub fn write<T, E>(&self, projection: &str, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E>
    where
        E: From<rusqlite::Error>,
    {
        self.file(projection)?.write(f)
    }

    /// Runs `f` in a read transaction on `projection`'s file; see [`ViewFile::read`].
    pub fn read<T>(
        &self,
        projection: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, ViewError>,
    ) -> Result<T, ViewError> {
        self.file(projection)?.read(f)
    }
}

impl ViewFile {
    fn open(path: PathBuf) -> rusqlite::Result<ViewFile> {
        let file =
            ViewFile { inner: Arc::new(FileInner { path, writer: Mutex::new(None), readers: Mutex::new(Vec::new()) }) };
        let conn = file.open_connection(READER_CACHE_KIB)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS projection_versions (
                name TEXT NOT NULL,
                version INTEGER NOT NULL,
                schema INTEGER NOT NULL,
                active INTEGER NOT NULL,
                checkpoint_commit INTEGER,
                checkpoint_prepare INTEGER,
                events_applied INTEGER NOT NULL DEFAULT 0,
                last_event_at INTEGER,
                failed_commit INTEGER,
                failed_prepare INTEGER,
                failure TEXT,
                PRIMARY KEY (name, version)
            );
            CREATE TABLE IF NOT EXISTS projection_abandoned (
                name TEXT PRIMARY KEY,
                version INTEGER NOT NULL
            );",
        )?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A new connection with the view databases' settings, for reading.
    pub fn connect(&self) -> Result<Connection, ViewError> {
        Ok(self.open_connection(READER_CACHE_KIB)?)
    }

    fn open_connection(&self, cache_kib: i64) -> rusqlite::Result<Connection> {
        let conn = Connection::open(&self.inner.path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", cache_kib)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        Ok(conn)
    }

    /// Runs `f` in a write transaction (`BEGIN IMMEDIATE`), committing when
    /// it returns `Ok`. Blocking; call from a blocking thread.
    pub fn write<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E>
    where
        E: From<rusqlite::Error>,
    {
        let open = self.begin()?;
        let value = f(open.conn())?;
        open.commit()?;
        Ok(value)
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE`) that stays open until it
    /// is committed or dropped (which rolls it back). This process's other
    /// writers of the file wait for it, so hold it only while there is work
    /// to do.
    pub fn begin(&self) -> rusqlite::Result<OpenWrite<'_>> {
        let mut writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        if writer.is_none() {
            let conn = self.open_connection(WRITER_CACHE_KIB)?;
            // Building a rebuilt version's indexes sorts every row of its
            // tables: in temporary files, not in memory, so that the memory a
            // rebuild takes does not grow with the log.
            conn.pragma_update(None, "temp_store", "FILE")?;
            conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
            *writer = Some(conn);
        }
        let conn = writer.as_ref().expect("opened above");
        conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(OpenWrite { writer, done: false })
    }

    /// Runs `f` in a read transaction on a pooled connection: everything `f`
    /// reads comes from one snapshot. Blocking; call from a blocking thread.
    pub fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T, ViewError>) -> Result<T, ViewError> {
        let pooled = self.inner.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let result = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let value = f(&tx)?;
            tx.finish()?;
            Ok(value)
        })();
        let mut readers = self.inner.readers.lock().unwrap_or_else(|p| p.into_inner());
        if readers.len() < READ_POOL {
            readers.push(conn);
        }
        result
    }
}

fn position(commit: Option<i64>, prepare: Option<i64>) -> Option<Position> {
    match (commit, prepare) {
        (Some(commit), Some(prepare)) => Some(Position { commit: commit as u64, prepare: prepare as u64 }),
        _ => None,
    }
}

const VERSION_COLUMNS: &str = "name, version, schema, active, checkpoint_commit, checkpoint_prepare, events_applied, \
                               failed_commit, failed_prepare, failure, last_event_at";

fn version_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRecord> {
    let failure_at = position(row.get(7)?, row.get(8)?);
    let failure: Option<String> = row.get(9)?;
    Ok(VersionRecord {
        name: row.get(0)?,
        version: row.get(1)?,
        schema: row.get(2)?,
        active: row.get(3)?,
        checkpoint: position(row.get(4)?, row.get(5)?),
        events_applied: row.get::<_, i64>(6)? as u64,
        last_event_at: row.get::<_, Option<i64>>(10)?.map(crate::projection::from_micros),
        failure: failure_at.zip(failure),
    })
}

/// Every version of `name` the registry knows, active first.
pub fn versions(conn: &Connection, name: &str) -> rusqlite::Result<Vec<VersionRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM projection_versions WHERE name = ?1 ORDER BY active DESC, version"
    ))?;
    let rows = stmt.query_map([name], version_record)?;
    rows.collect()
}

/// One version's record.
pub fn version(conn: &Connection, name: &str, version: u32) -> rusqlite::Result<Option<VersionRecord>> {
    conn.prepare_cached(&format!("SELECT {VERSION_COLUMNS} FROM projection_versions WHERE name = ?1 AND version = ?2"))?
        .query_row(params![name, version], version_record)
        .optional()
}

/// The version of `name` that answers queries.
pub fn active_version(conn: &Connection, name: &str) -> rusqlite::Result<Option<u32>> {
    conn.prepare_cached("SELECT version FROM projection_versions WHERE name = ?1 AND active = 1")?
        .query_row([name], |row| row.get(0))
        .optional()
}

/// The number a new version of `name` gets: above every version in the
/// registry and every version ever abandoned, so that a number never names
/// two versions (the worker of an abandoned one may still be winding down).
pub fn next_version(conn: &Connection, name: &str) -> rusqlite::Result<u32> {
    conn.query_row(
        "SELECT MAX(COALESCE((SELECT MAX(version) FROM projection_versions WHERE name = ?1), 0),
                    COALESCE((SELECT version FROM projection_abandoned WHERE name = ?1), 0)) + 1",
        [name],
        |row| row.get(0),
    )
}

/// Removes `version` of `name` from the registry for good: its number is
/// not used again.
pub fn abandon_version(conn: &Connection, name: &str, version: u32) -> rusqlite::Result<()> {
    delete_version(conn, name, version)?;
    conn.execute(
        "INSERT INTO projection_abandoned (name, version) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET version = MAX(version, excluded.version)",
        params![name, version],
    )?;
    Ok(())
}

pub fn insert_version(conn: &Connection, name: &str, version: u32, schema: u32, active: bool) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO projection_versions (name, version, schema, active) VALUES (?1, ?2, ?3, ?4)",
        params![name, version, schema, active],
    )?;
    Ok(())
}

pub fn save_checkpoint(
    conn: &Connection,
    name: &str,
    version: u32,
    checkpoint: Position,
    applied: u64,
    last_event_at: chrono::DateTime<chrono::Utc>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE projection_versions SET checkpoint_commit = ?3, checkpoint_prepare = ?4,
         events_applied = events_applied + ?5, last_event_at = ?6 WHERE name = ?1 AND version = ?2",
    )?
    .execute(params![
        name,
        version,
        checkpoint.commit as i64,
        checkpoint.prepare as i64,
        applied as i64,
        crate::projection::micros(last_event_at)
    ])?;
    Ok(())
}

pub fn save_failure(
    conn: &Connection,
    name: &str,
    version: u32,
    failure: Option<(Position, &str)>,
) -> rusqlite::Result<()> {
    let (commit, prepare, text) = match failure {
        Some((at, text)) => (Some(at.commit as i64), Some(at.prepare as i64), Some(text)),
        None => (None, None, None),
    };
    conn.execute(
        "UPDATE projection_versions SET failed_commit = ?3, failed_prepare = ?4, failure = ?5
         WHERE name = ?1 AND version = ?2",
        params![name, version, commit, prepare, text],
    )?;
    Ok(())
}

pub fn activate(conn: &Connection, name: &str, version: u32) -> rusqlite::Result<()> {
    conn.execute("UPDATE projection_versions SET active = (version = ?2) WHERE name = ?1", params![name, version])?;
    Ok(())
}

pub fn delete_version(conn: &Connection, name: &str, version: u32) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM projection_versions WHERE name = ?1 AND version = ?2", params![name, version])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    /// What the bundled SQLite was compiled with (`.cargo/config.toml`): a
    /// build without the workspace's flags would have every connection of
    /// the process share one page cache behind one mutex again.
    #[test]
    fn sqlite_gives_each_connection_its_own_page_cache_and_counts_no_memory() {
        let conn = Connection::open_in_memory().expect("an in-memory database");
        let options = conn
            .prepare("PRAGMA compile_options")
            .and_then(|mut stmt| stmt.query_map([], |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>())
            .expect("compile options");
        assert!(options.iter().any(|o| o == "THREADSAFE=1"), "SQLite is thread-safe: {options:?}");
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "SQLITE_ENABLE_MEMORY_MANAGEMENT makes all connections share one page cache: {options:?}"
        );
        assert!(options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"), "memory statistics are off: {options:?}");
    }
}
