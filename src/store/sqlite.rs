//! The SQLite backend: the zero-configuration default (`./tandem.db`).
//!
//! Design decision: one `rusqlite::Connection` behind a `std::sync::Mutex`, and every call runs
//! on tokio's blocking pool (`spawn_blocking`). SQLite serializes writers anyway, so a single
//! connection costs little and makes every method trivially atomic within the process; WAL and
//! `busy_timeout` cover other processes (the CLI) touching the same file.
//!
//! SQL is always written with `?N` placeholders and bound parameters; the only `format!` below
//! splices constant column lists, never values.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::{FromSql, ToSql, Type};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior};

use super::columns::*;
use super::crypto::{self, Keyring, Sealing, SEALED_COLUMNS};
use super::{
    new_id, now_millis, Action, ActionChange, AppliedMigration, AuditEntry, AuditQuery,
    ClaimedDelivery, ClinicCommand, CommandDefinition, CommandProduces, Conversation,
    ConversationStatus, ConversationWithPatient, Delivery, DeliveryAttempt, DeliveryOutcome,
    DeliveryStatus, Document, DocumentKind, Error, Inserted, Message, Millis, NewAction,
    NewAuditEntry, NewConversation, NewDeliveryAttempt, NewMessage, NewPatient, NewUser,
    Organization, Page, Patient, PatientUpdate, Reencrypted, RefreshToken, Result, SenderType,
    Store, User, UserRole, UserSettings, Webhook,
};

/// Embedded migrations, applied in order on open; the version is the file's number.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/sqlite/0001_init.sql")),
    (2, include_str!("migrations/sqlite/0002_webhook_outbox.sql")),
    (
        3,
        include_str!("migrations/sqlite/0003_clinic_commands.sql"),
    ),
    (6, include_str!("migrations/sqlite/0006_audit_reads.sql")),
    (7, include_str!("migrations/sqlite/0007_event_payloads.sql")),
    (
        8,
        include_str!("migrations/sqlite/0008_encryption_state.sql"),
    ),
];

/// How long a statement waits for another process's lock before giving up as `Unavailable`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite-backed [`Store`]. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Seals and opens the free-text columns.
    keys: Arc<Sealing>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, sets WAL, `synchronous=NORMAL`,
    /// `foreign_keys=ON` and the busy timeout, and applies pending migrations. The data keys
    /// come from the key file next to it ([`crypto::key_file_for`]), created on first use:
    /// the zero-configuration default.
    ///
    /// Synchronous on purpose: it runs once at startup, before the server accepts requests.
    ///
    /// # Errors
    /// `Backend` if the file cannot be opened, WAL cannot be enabled, a migration fails, or the
    /// database was migrated by a newer Tandem (unknown versions); `Unavailable` if another
    /// process holds the lock longer than the busy timeout; `Crypto` if the key file cannot be
    /// read or created.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        SqliteStore::open_with_busy_timeout(path, BUSY_TIMEOUT)
    }

    /// [`SqliteStore::open`] with another busy timeout: how long a statement waits for a lock
    /// held by another connection before it fails as `Unavailable` (short in fault tests).
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub fn open_with_busy_timeout(path: &Path, busy_timeout: Duration) -> Result<SqliteStore> {
        let key_file = crypto::key_file_for(path);
        let (keys, created) = Keyring::load_or_create(&key_file)?;
        if created {
            tracing::warn!(
                key_file = %key_file.display(),
                "no data keys configured (TANDEM_DATA_KEYS): generated the key that encrypts \
                 stored transcripts and saved it next to the database; back this file up, apart \
                 from database backups: without it the stored text cannot be read"
            );
        }
        SqliteStore::open_with_keys(path, busy_timeout, Arc::new(keys))
    }

    /// [`SqliteStore::open_with_busy_timeout`] with configured data keys instead of the key
    /// file.
    ///
    /// # Errors
    /// As [`SqliteStore::open`], without the key file's.
    pub fn open_with_keys(
        path: &Path,
        busy_timeout: Duration,
        keys: Arc<Keyring>,
    ) -> Result<SqliteStore> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(busy_timeout)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Backend(format!(
                "{}: cannot enable WAL (journal_mode = {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        let sealed_only: bool = conn.query_row(
            "SELECT sealed_only FROM encryption_state WHERE id = 1",
            [],
            |r| r.get(0),
        )?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            keys: Arc::new(Sealing::new(keys, sealed_only)),
        })
    }

    /// Applies `TANDEM_REQUIRE_SEALED`: `Some` overrides the database's marker, read on open,
    /// on whether a stored value without an envelope is refused.
    #[must_use]
    pub fn require_sealed(mut self, setting: Option<bool>) -> SqliteStore {
        Arc::make_mut(&mut self.keys).apply_setting(setting);
        self
    }

    /// Whether a stored value without an envelope is refused rather than read as plaintext.
    pub fn requires_sealed(&self) -> bool {
        self.keys.requires_sealed()
    }

    /// Runs `f` on the connection on the blocking pool, so SQLite I/O never stalls a runtime
    /// worker.
    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock unwound through any open `Transaction`, which
            // rolled back on drop, so the connection itself is still consistent.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| Error::Backend(format!("sqlite task failed: {e}")))?
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::QueryReturnedNoRows => Error::NotFound,
            rusqlite::Error::SqliteFailure(f, _) => match f.code {
                ErrorCode::ConstraintViolation => match f.extended_code {
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY => Error::Conflict(e.to_string()),
                    rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Error::NotFound,
                    _ => Error::Backend(e.to_string()),
                },
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    Error::Unavailable(e.to_string())
                }
                _ => Error::Backend(e.to_string()),
            },
            _ => Error::Backend(e.to_string()),
        }
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY NOT NULL,
             applied_at INTEGER NOT NULL
         )",
    )?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    for &(version, sql) in MIGRATIONS {
        // IMMEDIATE takes the write lock up front, so two processes opening a fresh file at
        // once apply each migration exactly once.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let newest: i64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?;
        if newest > known {
            return Err(Error::Backend(format!(
                "database schema version {newest} is newer than this build knows ({known})"
            )));
        }
        let done: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)",
            [version],
            |r| r.get(0),
        )?;
        if !done {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, now_millis()],
            )?;
            tracing::info!(version, "applied sqlite migration");
        }
        tx.commit()?;
    }
    Ok(())
}

fn applied_migrations(conn: &Connection) -> Result<Vec<AppliedMigration>> {
    let mut stmt =
        conn.prepare_cached("SELECT version, applied_at FROM schema_migrations ORDER BY version")?;
    let rows = stmt.query_map([], |r| {
        Ok(AppliedMigration {
            version: r.get(0)?,
            applied_at: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The sort key of the row a keyset cursor names, as one bind parameter per key column: all
/// `None` on the first page, so a listing filters with `?n IS NULL OR (…) > (?n, …)`.
trait CursorKey: Default {
    fn read(r: &Row) -> rusqlite::Result<Self>;
}

impl<A: FromSql, B: FromSql> CursorKey for (Option<A>, Option<B>) {
    fn read(r: &Row) -> rusqlite::Result<Self> {
        Ok((Some(r.get(0)?), Some(r.get(1)?)))
    }
}

impl<A: FromSql, B: FromSql, C: FromSql> CursorKey for (Option<A>, Option<B>, Option<C>) {
    fn read(r: &Row) -> rusqlite::Result<Self> {
        Ok((Some(r.get(0)?), Some(r.get(1)?), Some(r.get(2)?)))
    }
}

/// Resolves a page cursor (the id of the last row of the previous page) to that row's sort
/// key. `sql` selects the key columns of the row whose id is `?1`, limited by `scope` (`?2`
/// on) to what the caller may list: an unknown id, or one outside that scope, is `NotFound`
/// rather than a page that silently starts somewhere else.
fn cursor_key<K: CursorKey>(
    c: &Connection,
    sql: &str,
    id: Option<&str>,
    scope: &[&dyn ToSql],
) -> Result<K> {
    let Some(id) = id else {
        return Ok(K::default());
    };
    let params: Vec<&dyn ToSql> = std::iter::once(&id as &dyn ToSql)
        .chain(scope.iter().copied())
        .collect();
    Ok(c.prepare_cached(sql)?.query_row(&*params, K::read)?)
}

/// `0` means unbounded, which SQLite spells `LIMIT -1`.
fn sql_limit(page: &Page) -> i64 {
    if page.limit == 0 {
        -1
    } else {
        i64::from(page.limit)
    }
}

/// Reads a text column into one of the domain enums; an unknown value is corruption.
fn enum_col<T>(r: &Row<'_>, idx: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let s: String = r.get(idx)?;
    parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            Type::Text,
            format!("unexpected value {s:?}").into(),
        )
    })
}

fn json_col(r: &Row<'_>, idx: usize) -> rusqlite::Result<Option<serde_json::Value>> {
    let s: Option<String> = r.get(idx)?;
    s.map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

fn json_text(v: &serde_json::Value) -> String {
    // Serializing a `Value` to a string cannot fail (no non-string map keys, no I/O).
    v.to_string()
}

fn org_row(r: &Row<'_>) -> rusqlite::Result<Organization> {
    Ok(Organization {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
    })
}

fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        organization_id: r.get(1)?,
        username: r.get(2)?,
        password_hash: r.get(3)?,
        preferred_language: r.get(4)?,
        role: enum_col(r, 5, UserRole::parse)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

fn token_row(r: &Row<'_>) -> rusqlite::Result<RefreshToken> {
    Ok(RefreshToken {
        token_hash: r.get(0)?,
        user_id: r.get(1)?,
        family_id: r.get(2)?,
        expires_at: r.get(3)?,
        used_at: r.get(4)?,
        created_at: r.get(5)?,
    })
}

fn patient_at(r: &Row<'_>, base: usize) -> rusqlite::Result<Patient> {
    Ok(Patient {
        id: r.get(base)?,
        organization_id: r.get(base + 1)?,
        first_name: r.get(base + 2)?,
        last_name: r.get(base + 3)?,
        date_of_birth: r.get(base + 4)?,
        preferred_language: r.get(base + 5)?,
        created_at: r.get(base + 6)?,
        updated_at: r.get(base + 7)?,
    })
}

fn patient_row(r: &Row<'_>) -> rusqlite::Result<Patient> {
    patient_at(r, 0)
}

fn conversation_row(r: &Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: r.get(0)?,
        organization_id: r.get(1)?,
        user_id: r.get(2)?,
        patient_id: r.get(3)?,
        clinician_language: r.get(4)?,
        patient_language: r.get(5)?,
        status: enum_col(r, 6, ConversationStatus::parse)?,
        start_time: r.get(7)?,
        end_time: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

fn conversation_with_patient_row(r: &Row<'_>) -> rusqlite::Result<ConversationWithPatient> {
    Ok(ConversationWithPatient {
        conversation: conversation_row(r)?,
        patient: patient_at(r, CONV_NCOLS)?,
    })
}

fn message_row(r: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: r.get(0)?,
        conversation_id: r.get(1)?,
        timestamp: r.get(2)?,
        sender_type: enum_col(r, 3, SenderType::parse)?,
        original_text: r.get(4)?,
        translated_text: r.get(5)?,
        language: r.get(6)?,
        is_final: r.get(7)?,
        original_message_id: r.get(8)?,
        stt_item_id: r.get(9)?,
        speaker_source: r.get(10)?,
        speaker_confidence: r.get(11)?,
        timings: json_col(r, 12)?,
    })
}

/// The action with its `data` column still sealed; [`Sealing::open_action`] completes it.
fn action_row(r: &Row<'_>) -> rusqlite::Result<(Action, String)> {
    Ok((
        Action {
            id: r.get(0)?,
            conversation_id: r.get(1)?,
            kind: r.get(2)?,
            status: r.get(3)?,
            data: serde_json::Value::Null,
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
        },
        r.get(4)?,
    ))
}

fn webhook_row(r: &Row<'_>) -> rusqlite::Result<Webhook> {
    Ok(Webhook {
        organization_id: r.get(0)?,
        url: r.get(1)?,
        secret: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

/// The delivery with its `payload` still sealed; [`Sealing::open_delivery`] completes it.
fn delivery_row(r: &Row<'_>) -> rusqlite::Result<(Delivery, String)> {
    Ok((
        Delivery {
            id: r.get(0)?,
            organization_id: r.get(1)?,
            action_id: r.get(2)?,
            event: r.get(3)?,
            idempotency_key: r.get(4)?,
            payload: serde_json::Value::Null,
            status: enum_col(r, 6, DeliveryStatus::parse)?,
            attempts: r.get(7)?,
            next_attempt_at: r.get(8)?,
            last_error: r.get(9)?,
            created_at: r.get(10)?,
            updated_at: r.get(11)?,
            delivered_at: r.get(12)?,
        },
        r.get(5)?,
    ))
}

/// As [`delivery_row`], with the lease and the webhook.
fn claimed_row(r: &Row<'_>) -> rusqlite::Result<(ClaimedDelivery, String)> {
    let (delivery, payload) = delivery_row(r)?;
    Ok((
        ClaimedDelivery {
            delivery,
            lease_token: r.get(DELIVERY_NCOLS)?,
            url: r.get(DELIVERY_NCOLS + 1)?,
            secret: r.get(DELIVERY_NCOLS + 2)?,
        },
        payload,
    ))
}

fn attempt_row(r: &Row<'_>) -> rusqlite::Result<DeliveryAttempt> {
    Ok(DeliveryAttempt {
        id: r.get(0)?,
        delivery_id: r.get(1)?,
        attempt: r.get(2)?,
        started_at: r.get(3)?,
        duration_ms: r.get(4)?,
        status_code: r.get(5)?,
        error: r.get(6)?,
    })
}

fn get_action(
    conn: &Connection,
    keys: &Sealing,
    organization_id: &str,
    id: &str,
) -> Result<Action> {
    let sql = format!(
        "SELECT {A_ACTION_COLS} FROM actions a JOIN conversations c ON c.id = a.conversation_id \
         WHERE c.organization_id = ?1 AND a.id = ?2"
    );
    let (action, data) = conn
        .prepare_cached(&sql)?
        .query_row(params![organization_id, id], action_row)?;
    keys.open_action(action, &data)
}

/// The delivery with its payload still sealed (callers here only need its status).
fn get_delivery(conn: &Connection, organization_id: &str, id: &str) -> Result<Delivery> {
    let sql = format!(
        "SELECT {DELIVERY_COLS} FROM webhook_outbox WHERE organization_id = ?1 AND id = ?2"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![organization_id, id], delivery_row)?
        .0)
}

fn command_row(r: &Row<'_>) -> rusqlite::Result<ClinicCommand> {
    let examples: String = r.get(4)?;
    let examples = serde_json::from_str(&examples)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(4, Type::Text, Box::new(e)))?;
    let kind: String = r.get(6)?;
    let produces = CommandProduces::from_columns(&kind, r.get(7)?).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            6,
            Type::Text,
            format!("unexpected produces_kind {kind:?}").into(),
        )
    })?;
    Ok(ClinicCommand {
        id: r.get(0)?,
        organization_id: r.get(1)?,
        definition: CommandDefinition {
            name: r.get(2)?,
            description: r.get(3)?,
            examples,
            parameters: json_col(r, 5)?.unwrap_or(serde_json::Value::Null),
            produces,
        },
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

fn document_row(r: &Row<'_>) -> rusqlite::Result<Document> {
    Ok(Document {
        id: r.get(0)?,
        conversation_id: r.get(1)?,
        content: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    let record_ids: String = r.get(6)?;
    Ok(AuditEntry {
        id: r.get(0)?,
        organization_id: r.get(1)?,
        user_id: r.get(2)?,
        action: r.get(3)?,
        entity_type: r.get(4)?,
        entity_id: r.get(5)?,
        record_ids: serde_json::from_str(&record_ids).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, e.into())
        })?,
        remote_addr: r.get(7)?,
        at: r.get(8)?,
    })
}

fn document_kind(kind: DocumentKind) -> &'static str {
    match kind {
        DocumentKind::Summary => "summary",
        DocumentKind::MedicalHistory => "medical_history",
    }
}

fn insert_audit(conn: &Connection, entry: &NewAuditEntry) -> Result<()> {
    let sql =
        format!("INSERT INTO audit_log ({AUDIT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)");
    let record_ids = serde_json::Value::from(entry.record_ids.clone()).to_string();
    conn.prepare_cached(&sql)?.execute(params![
        new_id(),
        entry.organization_id,
        entry.user_id,
        entry.action,
        entry.entity_type,
        entry.entity_id,
        record_ids,
        entry.remote_addr,
        now_millis()
    ])?;
    Ok(())
}

fn get_conversation(
    conn: &Connection,
    organization_id: &str,
    id: &str,
) -> Result<ConversationWithPatient> {
    let sql = format!(
        "SELECT {C_CONV_COLS}, {P_PATIENT_COLS} FROM conversations c \
         JOIN patients p ON p.id = c.patient_id \
         WHERE c.organization_id = ?1 AND c.id = ?2"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![organization_id, id], conversation_with_patient_row)?)
}

#[async_trait]
impl Store for SqliteStore {
    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>> {
        self.call(|c| applied_migrations(c)).await
    }

    async fn ping(&self) -> Result<()> {
        self.call(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn create_organization(&self, name: &str) -> Result<Organization> {
        let org = Organization {
            id: new_id(),
            name: name.to_owned(),
            created_at: now_millis(),
        };
        self.call(move |c| {
            c.prepare_cached(
                "INSERT INTO organizations (id, name, is_default, created_at) VALUES (?1, ?2, 0, ?3)",
            )?
            .execute(params![org.id, org.name, org.created_at])?;
            Ok(org)
        })
        .await
    }

    async fn default_organization(&self) -> Result<Organization> {
        self.call(|c| {
            let select = format!("SELECT {ORG_COLS} FROM organizations WHERE is_default = 1");
            if let Some(org) = c
                .prepare_cached(&select)?
                .query_row([], org_row)
                .optional()?
            {
                return Ok(org);
            }
            c.prepare_cached(
                "INSERT INTO organizations (id, name, is_default, created_at) \
                 VALUES (?1, 'Default', 1, ?2) ON CONFLICT DO NOTHING",
            )?
            .execute(params![new_id(), now_millis()])?;
            Ok(c.prepare_cached(&select)?.query_row([], org_row)?)
        })
        .await
    }

    async fn get_organization(&self, id: &str) -> Result<Organization> {
        let id = id.to_owned();
        self.call(move |c| {
            let sql = format!("SELECT {ORG_COLS} FROM organizations WHERE id = ?1");
            Ok(c.prepare_cached(&sql)?.query_row([id], org_row)?)
        })
        .await
    }

    async fn organization_by_name(&self, name: &str) -> Result<Organization> {
        let name = name.to_owned();
        self.call(move |c| {
            let sql = format!(
                "SELECT {ORG_COLS} FROM organizations WHERE name = ?1 ORDER BY created_at, id LIMIT 1"
            );
            Ok(c.prepare_cached(&sql)?.query_row([name], org_row)?)
        })
        .await
    }

    async fn create_user(&self, user: NewUser) -> Result<User> {
        let user = user.into_row();
        self.call(move |c| {
            let sql =
                format!("INSERT INTO users ({USER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
            c.prepare_cached(&sql)?.execute(params![
                user.id,
                user.organization_id,
                user.username,
                user.password_hash,
                user.preferred_language,
                user.role.as_str(),
                user.created_at,
                user.updated_at
            ])?;
            Ok(user)
        })
        .await
    }

    async fn user_by_id(&self, id: &str) -> Result<User> {
        let id = id.to_owned();
        self.call(move |c| {
            let sql = format!("SELECT {USER_COLS} FROM users WHERE id = ?1");
            Ok(c.prepare_cached(&sql)?.query_row([id], user_row)?)
        })
        .await
    }

    async fn user_by_username(&self, username: &str) -> Result<User> {
        let username = username.to_owned();
        self.call(move |c| {
            let sql = format!("SELECT {USER_COLS} FROM users WHERE username = ?1");
            Ok(c.prepare_cached(&sql)?.query_row([username], user_row)?)
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        self.call(|c| {
            let sql = format!("SELECT {USER_COLS} FROM users ORDER BY username, id");
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([], user_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn count_users(&self) -> Result<u64> {
        self.call(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
            u64::try_from(n).map_err(|e| Error::Backend(e.to_string()))
        })
        .await
    }

    async fn set_password_hash(&self, user_id: &str, password_hash: &str) -> Result<()> {
        let (user_id, hash) = (user_id.to_owned(), password_hash.to_owned());
        self.call(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE users SET password_hash = ?2, updated_at = ?3 WHERE id = ?1",
                )?
                .execute(params![user_id, hash, now_millis()])?;
            if n == 0 {
                return Err(Error::NotFound);
            }
            Ok(())
        })
        .await
    }

    async fn insert_refresh_token(&self, token: RefreshToken) -> Result<()> {
        self.call(move |c| {
            let sql = format!(
                "INSERT INTO refresh_tokens ({TOKEN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            );
            c.prepare_cached(&sql)?.execute(params![
                token.token_hash,
                token.user_id,
                token.family_id,
                token.expires_at,
                token.used_at,
                token.created_at
            ])?;
            Ok(())
        })
        .await
    }

    async fn consume_refresh_token(&self, token_hash: &str) -> Result<RefreshToken> {
        let token_hash = token_hash.to_owned();
        self.call(move |c| {
            // IMMEDIATE: read-then-write must not interleave with another process's consume.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let before = {
                let sql = format!("SELECT {TOKEN_COLS} FROM refresh_tokens WHERE token_hash = ?1");
                tx.prepare_cached(&sql)?
                    .query_row([&token_hash], token_row)?
            };
            tx.prepare_cached(
                "UPDATE refresh_tokens SET used_at = COALESCE(used_at, ?2) WHERE token_hash = ?1",
            )?
            .execute(params![token_hash, now_millis()])?;
            tx.commit()?;
            Ok(before)
        })
        .await
    }

    async fn revoke_refresh_family(&self, family_id: &str) -> Result<()> {
        let family_id = family_id.to_owned();
        self.call(move |c| {
            c.prepare_cached(
                "UPDATE refresh_tokens SET used_at = COALESCE(used_at, ?2), \
                 expires_at = MIN(expires_at, ?2) WHERE family_id = ?1",
            )?
            .execute(params![family_id, now_millis()])?;
            Ok(())
        })
        .await
    }

    async fn find_or_create_patient(&self, patient: NewPatient) -> Result<(Patient, bool)> {
        self.call(move |c| {
            let now = now_millis();
            let created =
                c.prepare_cached(
                    "INSERT INTO patients (id, organization_id, first_name, last_name, \
                     date_of_birth, preferred_language, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    new_id(),
                    patient.organization_id,
                    patient.first_name,
                    patient.last_name,
                    patient.date_of_birth,
                    patient.preferred_language,
                    now
                ])? == 1;
            let sql = format!(
                "SELECT {PATIENT_COLS} FROM patients WHERE organization_id = ?1 \
                 AND last_name = ?2 AND first_name = ?3 AND date_of_birth = ?4"
            );
            let found = c.prepare_cached(&sql)?.query_row(
                params![
                    patient.organization_id,
                    patient.last_name,
                    patient.first_name,
                    patient.date_of_birth
                ],
                patient_row,
            )?;
            Ok((found, created))
        })
        .await
    }

    async fn get_patient(&self, organization_id: &str, id: &str) -> Result<Patient> {
        let (org, id) = (organization_id.to_owned(), id.to_owned());
        self.call(move |c| {
            let sql = format!(
                "SELECT {PATIENT_COLS} FROM patients WHERE organization_id = ?1 AND id = ?2"
            );
            Ok(c.prepare_cached(&sql)?
                .query_row(params![org, id], patient_row)?)
        })
        .await
    }

    async fn list_patients(
        &self,
        organization_id: &str,
        query: Option<&str>,
        page: &Page,
    ) -> Result<Vec<Patient>> {
        let org = organization_id.to_owned();
        let query = query.map(str::to_owned);
        let (after, limit) = (page.after.clone(), sql_limit(page));
        self.call(move |c| {
            let (last, first, cid): (Option<String>, Option<String>, Option<String>) = cursor_key(
                c,
                "SELECT last_name, first_name, id FROM patients \
                     WHERE id = ?1 AND organization_id = ?2",
                after.as_deref(),
                &[&org],
            )?;
            let sql = format!(
                "SELECT {PATIENT_COLS} FROM patients WHERE organization_id = ?1 \
                 AND (?2 IS NULL OR instr(lower(first_name), lower(?2)) > 0 \
                      OR instr(lower(last_name), lower(?2)) > 0) \
                 AND (?3 IS NULL OR (last_name, first_name, id) > (?3, ?4, ?5)) \
                 ORDER BY last_name, first_name, id LIMIT ?6"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![org, query, last, first, cid, limit], patient_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn update_patient(
        &self,
        organization_id: &str,
        id: &str,
        update: PatientUpdate,
    ) -> Result<Patient> {
        let (org, id) = (organization_id.to_owned(), id.to_owned());
        self.call(move |c| {
            let sql = format!(
                "UPDATE patients SET \
                 first_name = COALESCE(?3, first_name), last_name = COALESCE(?4, last_name), \
                 date_of_birth = COALESCE(?5, date_of_birth), \
                 preferred_language = COALESCE(?6, preferred_language), updated_at = ?7 \
                 WHERE organization_id = ?1 AND id = ?2 RETURNING {PATIENT_COLS}"
            );
            Ok(c.prepare_cached(&sql)?.query_row(
                params![
                    org,
                    id,
                    update.first_name,
                    update.last_name,
                    update.date_of_birth,
                    update.preferred_language,
                    now_millis()
                ],
                patient_row,
            )?)
        })
        .await
    }

    async fn create_conversation(&self, conversation: NewConversation) -> Result<Conversation> {
        let conv = conversation.into_row();
        self.call(move |c| {
            // The user and the patient must both belong to the conversation's organization.
            let n = c
                .prepare_cached(
                    "INSERT INTO conversations (id, organization_id, user_id, patient_id, \
                     clinician_language, patient_language, status, start_time, end_time, \
                     created_at, updated_at) \
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, ?8, ?8 \
                     WHERE EXISTS (SELECT 1 FROM users WHERE id = ?3 AND organization_id = ?2) \
                       AND EXISTS (SELECT 1 FROM patients WHERE id = ?4 AND organization_id = ?2)",
                )?
                .execute(params![
                    conv.id,
                    conv.organization_id,
                    conv.user_id,
                    conv.patient_id,
                    conv.clinician_language,
                    conv.patient_language,
                    conv.status.as_str(),
                    conv.start_time
                ])?;
            if n == 0 {
                return Err(Error::NotFound);
            }
            Ok(conv)
        })
        .await
    }

    async fn get_conversation(
        &self,
        organization_id: &str,
        id: &str,
    ) -> Result<ConversationWithPatient> {
        let (org, id) = (organization_id.to_owned(), id.to_owned());
        self.call(move |c| get_conversation(c, &org, &id)).await
    }

    async fn list_conversations(
        &self,
        organization_id: &str,
        page: &Page,
    ) -> Result<Vec<ConversationWithPatient>> {
        let org = organization_id.to_owned();
        let (after, limit) = (page.after.clone(), sql_limit(page));
        self.call(move |c| {
            let (start, cid): (Option<Millis>, Option<String>) = cursor_key(
                c,
                "SELECT start_time, id FROM conversations WHERE id = ?1 AND organization_id = ?2",
                after.as_deref(),
                &[&org],
            )?;
            let sql = format!(
                "SELECT {C_CONV_COLS}, {P_PATIENT_COLS} FROM conversations c \
                 JOIN patients p ON p.id = c.patient_id \
                 WHERE c.organization_id = ?1 \
                 AND (?2 IS NULL OR (c.start_time, c.id) < (?2, ?3)) \
                 ORDER BY c.start_time DESC, c.id DESC LIMIT ?4"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![org, start, cid, limit],
                conversation_with_patient_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn list_unsummarized_conversations(
        &self,
        ended_since: Millis,
        limit: u32,
    ) -> Result<Vec<Conversation>> {
        self.call(move |c| {
            let sql = format!(
                "SELECT {CONV_COLS} FROM conversations WHERE status = ?1 AND end_time >= ?2 \
                 ORDER BY end_time, id LIMIT ?3"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![
                    ConversationStatus::Ended.as_str(),
                    ended_since,
                    i64::from(limit)
                ],
                conversation_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn set_conversation_status(
        &self,
        organization_id: &str,
        id: &str,
        status: ConversationStatus,
        end_time: Option<Millis>,
    ) -> Result<Conversation> {
        let (org, id) = (organization_id.to_owned(), id.to_owned());
        self.call(move |c| {
            let sql = format!(
                "UPDATE conversations SET status = ?3, end_time = COALESCE(?4, end_time), \
                 updated_at = ?5 WHERE organization_id = ?1 AND id = ?2 RETURNING {CONV_COLS}"
            );
            Ok(c.prepare_cached(&sql)?.query_row(
                params![org, id, status.as_str(), end_time, now_millis()],
                conversation_row,
            )?)
        })
        .await
    }

    async fn set_patient_language(
        &self,
        organization_id: &str,
        id: &str,
        language: &str,
    ) -> Result<Conversation> {
        let (org, id, lang) = (
            organization_id.to_owned(),
            id.to_owned(),
            language.to_owned(),
        );
        self.call(move |c| {
            let sql = format!(
                "UPDATE conversations SET patient_language = ?3, updated_at = ?4 \
                 WHERE organization_id = ?1 AND id = ?2 RETURNING {CONV_COLS}"
            );
            Ok(c.prepare_cached(&sql)?
                .query_row(params![org, id, lang, now_millis()], conversation_row)?)
        })
        .await
    }

    async fn insert_message(&self, message: NewMessage) -> Result<Inserted<Message>> {
        let msg = message.into_row();
        let keys = Arc::clone(&self.keys);
        self.call(move |c| {
            let (original_text, translated_text) = keys.seal_message(&msg);
            // DO NOTHING fires only on the (conversation, item, kind) index: the id is fresh.
            let sql = format!(
                "INSERT INTO messages ({MSG_COLS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                 ON CONFLICT DO NOTHING"
            );
            let n = c.prepare_cached(&sql)?.execute(params![
                msg.id,
                msg.conversation_id,
                msg.timestamp,
                msg.sender_type.as_str(),
                original_text,
                translated_text,
                msg.language,
                msg.is_final,
                msg.original_message_id,
                msg.stt_item_id,
                msg.speaker_source,
                msg.speaker_confidence,
                msg.timings.as_ref().map(json_text)
            ])?;
            if n == 1 {
                return Ok(Inserted::New(msg));
            }
            let sql = format!(
                "SELECT {MSG_COLS} FROM messages WHERE conversation_id = ?1 \
                 AND stt_item_id = ?2 AND (sender_type = 'translation') = ?3"
            );
            let existing = c.prepare_cached(&sql)?.query_row(
                params![
                    msg.conversation_id,
                    msg.stt_item_id,
                    msg.sender_type == SenderType::Translation
                ],
                message_row,
            )?;
            Ok(Inserted::Existing(keys.open_message(existing)?))
        })
        .await
    }

    async fn list_messages(&self, conversation_id: &str, page: &Page) -> Result<Vec<Message>> {
        let conv = conversation_id.to_owned();
        let (after, limit) = (page.after.clone(), sql_limit(page));
        let keys = Arc::clone(&self.keys);
        self.call(move |c| {
            let (ts, cid): (Option<Millis>, Option<String>) = cursor_key(
                c,
                "SELECT timestamp, id FROM messages WHERE id = ?1 AND conversation_id = ?2",
                after.as_deref(),
                &[&conv],
            )?;
            let sql = format!(
                "SELECT {MSG_COLS} FROM messages WHERE conversation_id = ?1 \
                 AND (?2 IS NULL OR (timestamp, id) > (?2, ?3)) \
                 ORDER BY timestamp, id LIMIT ?4"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![conv, ts, cid, limit], message_row)?;
            rows.map(|m| Ok(keys.open_message(m?)?)).collect()
        })
        .await
    }

    async fn set_message_timings(&self, id: &str, timings: &serde_json::Value) -> Result<()> {
        let (id, timings) = (id.to_owned(), json_text(timings));
        self.call(move |c| {
            let n = c
                .prepare_cached("UPDATE messages SET timings = ?2 WHERE id = ?1")?
                .execute(params![id, timings])?;
            if n == 0 {
                return Err(Error::NotFound);
            }
            Ok(())
        })
        .await
    }

    async fn insert_action(&self, action: NewAction) -> Result<Action> {
        let action = action.into_row();
        let data = self.keys.seal_action_data(&action.id, &action.data);
        self.call(move |c| {
            let sql =
                format!("INSERT INTO actions ({ACTION_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
            c.prepare_cached(&sql)?.execute(params![
                action.id,
                action.conversation_id,
                action.kind,
                action.status,
                data,
                action.created_at,
                action.updated_at
            ])?;
            Ok(action)
        })
        .await
    }

    async fn list_actions(&self, conversation_id: &str) -> Result<Vec<Action>> {
        let conv = conversation_id.to_owned();
        let keys = Arc::clone(&self.keys);
        self.call(move |c| {
            let sql = format!(
                "SELECT {ACTION_COLS} FROM actions WHERE conversation_id = ?1 \
                 ORDER BY created_at DESC, id DESC"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([conv], action_row)?;
            rows.map(|row| {
                let (action, data) = row?;
                keys.open_action(action, &data)
            })
            .collect()
        })
        .await
    }

    async fn get_action(&self, organization_id: &str, id: &str) -> Result<Action> {
        let (org, id) = (organization_id.to_owned(), id.to_owned());
        let keys = Arc::clone(&self.keys);
        self.call(move |c| get_action(c, &keys, &org, &id)).await
    }

    async fn update_action(
        &self,
        organization_id: &str,
        id: &str,
        change: ActionChange,
    ) -> Result<(Action, Option<Delivery>)> {
        let (org, id) = (organization_id.to_owned(), id.to_owned());
        let keys = Arc::clone(&self.keys);
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = get_action(&tx, &keys, &org, &id)?;
            if current.updated_at != change.expected_updated_at {
                return Err(Error::Conflict(format!(
                    "action {id} changed since it was read"
                )));
            }
            let sql = format!(
                "UPDATE actions SET status = ?2, data = ?3, updated_at = ?4 WHERE id = ?1 \
                 RETURNING {ACTION_COLS}"
            );
            let (action, data) = tx.prepare_cached(&sql)?.query_row(
                params![
                    id,
                    change.status,
                    keys.seal_action_data(&id, &change.data),
                    change.updated_at
                ],
                action_row,
            )?;
            let action = keys.open_action(action, &data)?;
            let has_webhook: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM webhooks WHERE organization_id = ?1)",
                [&org],
                |r| r.get(0),
            )?;
            let delivery = match change.delivery {
                Some(new) if has_webhook => {
                    let d = new.into_row(&org, &id);
                    let sql = format!(
                        "INSERT INTO webhook_outbox ({DELIVERY_COLS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                    );
                    tx.prepare_cached(&sql)?.execute(params![
                        d.id,
                        d.organization_id,
                        d.action_id,
                        d.event,
                        d.idempotency_key,
                        keys.seal_delivery_payload(&d.id, &d.payload),
                        d.status.as_str(),
                        d.attempts,
                        d.next_attempt_at,
                        d.last_error,
                        d.created_at,
                        d.updated_at,
                        d.delivered_at
                    ])?;
                    Some(d)
                }
                _ => None,
            };
            tx.commit()?;
            Ok((action, delivery))
        })
        .await
    }

    async fn put_webhook(&self, organization_id: &str, url: &str, secret: &str) -> Result<Webhook> {
        let (org, url, secret) = (
            organization_id.to_owned(),
            url.to_owned(),
            secret.to_owned(),
        );
        self.call(move |c| {
            let sql = format!(
                "INSERT INTO webhooks ({WEBHOOK_COLS}) VALUES (?1, ?2, ?3, ?4, ?4) \
                 ON CONFLICT (organization_id) DO UPDATE \
                 SET url = excluded.url, secret = excluded.secret, updated_at = excluded.updated_at \
                 RETURNING {WEBHOOK_COLS}"
            );
            Ok(c.prepare_cached(&sql)?
                .query_row(params![org, url, secret, now_millis()], webhook_row)?)
        })
        .await
    }

    async fn get_webhook(&self, organization_id: &str) -> Result<Webhook> {
        let org = organization_id.to_owned();
        self.call(move |c| {
            let sql = format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE organization_id = ?1");
            Ok(c.prepare_cached(&sql)?.query_row([org], webhook_row)?)
        })
        .await
    }

    async fn delete_webhook(&self, organization_id: &str) -> Result<()> {
        let org = organization_id.to_owned();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx
                .prepare_cached("DELETE FROM webhooks WHERE organization_id = ?1")?
                .execute([&org])?;
            if n == 0 {
                return Err(Error::NotFound);
            }
            tx.prepare_cached(
                "UPDATE webhook_outbox SET status = 'failed', last_error = 'webhook removed', \
                 lease_until = NULL, lease_token = NULL, updated_at = ?2 \
                 WHERE organization_id = ?1 AND status = 'pending'",
            )?
            .execute(params![org, now_millis()])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>> {
        let token = new_id();
        let keys = Arc::clone(&self.keys);
        self.call(move |c| {
            // The connection mutex plus IMMEDIATE make claim-then-read atomic here; other
            // processes on the same file wait for the write lock.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached(
                "UPDATE webhook_outbox SET attempts = attempts + 1, lease_until = ?2, \
                 lease_token = ?3, updated_at = ?1 \
                 WHERE id IN (SELECT o.id FROM webhook_outbox o \
                     JOIN webhooks w ON w.organization_id = o.organization_id \
                     WHERE o.status = 'pending' AND o.next_attempt_at <= ?1 \
                       AND (o.lease_until IS NULL OR o.lease_until <= ?1) \
                     ORDER BY o.next_attempt_at, o.id LIMIT ?4)",
            )?
            .execute(params![now, lease_until, token, i64::from(limit)])?;
            let sql = format!(
                "SELECT {O_DELIVERY_COLS}, o.lease_token, w.url, w.secret FROM webhook_outbox o \
                 JOIN webhooks w ON w.organization_id = o.organization_id \
                 WHERE o.lease_token = ?1 ORDER BY o.next_attempt_at, o.id"
            );
            let claimed = tx
                .prepare_cached(&sql)?
                .query_map([&token], claimed_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            tx.commit()?;
            claimed
                .into_iter()
                .map(|(mut claim, payload)| {
                    claim.delivery = keys.open_delivery(claim.delivery, &payload)?;
                    Ok(claim)
                })
                .collect()
        })
        .await
    }

    async fn record_delivery_attempt(&self, attempt: NewDeliveryAttempt) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let log = attempt.log_row();
            let sql =
                format!("INSERT INTO webhook_attempts ({ATTEMPT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
            tx.prepare_cached(&sql)?.execute(params![
                log.id,
                log.delivery_id,
                log.attempt,
                log.started_at,
                log.duration_ms,
                log.status_code,
                log.error
            ])?;
            let now = now_millis();
            let id = &attempt.delivery_id;
            let token = &attempt.lease_token;
            match attempt.outcome {
                DeliveryOutcome::Delivered => tx
                    .prepare_cached(
                        "UPDATE webhook_outbox SET status = 'delivered', delivered_at = ?2, \
                         last_error = NULL, lease_until = NULL, lease_token = NULL, updated_at = ?2 \
                         WHERE id = ?1 AND status <> 'delivered'",
                    )?
                    .execute(params![id, now])?,
                DeliveryOutcome::Retry { next_attempt_at } => tx
                    .prepare_cached(
                        "UPDATE webhook_outbox SET next_attempt_at = ?3, last_error = ?4, \
                         lease_until = NULL, lease_token = NULL, updated_at = ?5 \
                         WHERE id = ?1 AND status = 'pending' AND lease_token = ?2",
                    )?
                    .execute(params![id, token, next_attempt_at, attempt.error, now])?,
                DeliveryOutcome::GiveUp => tx
                    .prepare_cached(
                        "UPDATE webhook_outbox SET status = 'failed', last_error = ?3, \
                         lease_until = NULL, lease_token = NULL, updated_at = ?4 \
                         WHERE id = ?1 AND status = 'pending' AND lease_token = ?2",
                    )?
                    .execute(params![id, token, attempt.error, now])?,
            };
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn list_deliveries(
        &self,
        organization_id: &str,
        action_id: Option<&str>,
        page: &Page,
    ) -> Result<Vec<Delivery>> {
        let org = organization_id.to_owned();
        let action = action_id.map(str::to_owned);
        let (after, limit) = (page.after.clone(), sql_limit(page));
        let keys = Arc::clone(&self.keys);
        self.call(move |c| {
            let (created, cid): (Option<Millis>, Option<String>) = cursor_key(
                c,
                "SELECT created_at, id FROM webhook_outbox WHERE id = ?1 AND organization_id = ?2 \
                 AND (?3 IS NULL OR action_id = ?3)",
                after.as_deref(),
                &[&org, &action],
            )?;
            let sql = format!(
                "SELECT {DELIVERY_COLS} FROM webhook_outbox WHERE organization_id = ?1 \
                 AND (?2 IS NULL OR action_id = ?2) \
                 AND (?3 IS NULL OR (created_at, id) < (?3, ?4)) \
                 ORDER BY created_at DESC, id DESC LIMIT ?5"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![org, action, created, cid, limit], delivery_row)?;
            rows.map(|row| {
                let (delivery, payload) = row?;
                keys.open_delivery(delivery, &payload)
            })
            .collect()
        })
        .await
    }

    async fn list_delivery_attempts(
        &self,
        organization_id: &str,
        delivery_ids: &[String],
    ) -> Result<Vec<DeliveryAttempt>> {
        let org = organization_id.to_owned();
        // The id list travels as one JSON array parameter (json_each), never spliced into SQL.
        let ids = serde_json::Value::from(delivery_ids.to_vec()).to_string();
        self.call(move |c| {
            let sql = format!(
                "SELECT {ATTEMPT_COLS} FROM webhook_attempts WHERE delivery_id IN ( \
                     SELECT o.id FROM webhook_outbox o JOIN json_each(?2) j ON j.value = o.id \
                     WHERE o.organization_id = ?1) \
                 ORDER BY delivery_id, started_at, id"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![org, ids], attempt_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn retry_delivery(
        &self,
        organization_id: &str,
        id: &str,
        now: Millis,
    ) -> Result<Delivery> {
        let (org, id) = (organization_id.to_owned(), id.to_owned());
        let keys = Arc::clone(&self.keys);
        self.call(move |c| {
            let sql = format!(
                "UPDATE webhook_outbox SET status = 'pending', attempts = 0, next_attempt_at = ?3, \
                 lease_until = NULL, lease_token = NULL, updated_at = ?3 \
                 WHERE organization_id = ?1 AND id = ?2 AND status = 'failed' \
                 RETURNING {DELIVERY_COLS}"
            );
            match c
                .prepare_cached(&sql)?
                .query_row(params![org, id, now], delivery_row)
                .optional()?
            {
                Some((delivery, payload)) => keys.open_delivery(delivery, &payload),
                None => {
                    let existing = get_delivery(c, &org, &id)?;
                    Err(Error::Conflict(format!(
                        "delivery {id} is {}, not failed",
                        existing.status.as_str()
                    )))
                }
            }
        })
        .await
    }

    async fn upsert_document(
        &self,
        kind: DocumentKind,
        conversation_id: &str,
        content: &str,
    ) -> Result<Document> {
        let kind = document_kind(kind);
        let conv = conversation_id.to_owned();
        let content = self.keys.seal_document(&conv, kind, content);
        let keys = Arc::clone(&self.keys);
        self.call(move |c| {
            let sql = format!(
                "INSERT INTO documents (id, conversation_id, kind, content, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
                 ON CONFLICT (conversation_id, kind) DO UPDATE \
                 SET content = excluded.content, updated_at = excluded.updated_at \
                 RETURNING {DOC_COLS}"
            );
            let doc = c.prepare_cached(&sql)?.query_row(
                params![new_id(), conv, kind, content, now_millis()],
                document_row,
            )?;
            Ok(keys.open_document(kind, doc)?)
        })
        .await
    }

    async fn get_document(
        &self,
        kind: DocumentKind,
        conversation_id: &str,
    ) -> Result<Option<Document>> {
        let (conv, kind) = (conversation_id.to_owned(), document_kind(kind));
        let keys = Arc::clone(&self.keys);
        self.call(move |c| {
            let sql = format!(
                "SELECT {DOC_COLS} FROM documents WHERE conversation_id = ?1 AND kind = ?2"
            );
            c.prepare_cached(&sql)?
                .query_row(params![conv, kind], document_row)
                .optional()?
                .map(|d| Ok(keys.open_document(kind, d)?))
                .transpose()
        })
        .await
    }

    async fn first_patient_document(
        &self,
        kind: DocumentKind,
        organization_id: &str,
        patient_id: &str,
    ) -> Result<Option<Document>> {
        let (org, patient) = (organization_id.to_owned(), patient_id.to_owned());
        let kind = document_kind(kind);
        let keys = Arc::clone(&self.keys);
        self.call(move |c| {
            let sql = format!(
                "SELECT {D_DOC_COLS} FROM documents d JOIN conversations c ON c.id = d.conversation_id \
                 WHERE c.organization_id = ?1 AND c.patient_id = ?2 AND d.kind = ?3 \
                 ORDER BY d.created_at, d.id LIMIT 1"
            );
            c.prepare_cached(&sql)?
                .query_row(params![org, patient, kind], document_row)
                .optional()?
                .map(|d| Ok(keys.open_document(kind, d)?))
                .transpose()
        })
        .await
    }
    async fn create_command(
        &self,
        organization_id: &str,
        definition: CommandDefinition,
    ) -> Result<ClinicCommand> {
        let command = definition.into_row(organization_id);
        self.call(move |c| {
            let d = &command.definition;
            let (kind, action_type) = d.produces.to_columns();
            let sql = format!(
                "INSERT INTO clinic_commands ({COMMAND_COLS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            );
            c.prepare_cached(&sql)?.execute(params![
                command.id,
                command.organization_id,
                d.name,
                d.description,
                json_text(&serde_json::json!(d.examples)),
                json_text(&d.parameters),
                kind,
                action_type,
                command.created_at,
                command.updated_at
            ])?;
            Ok(command)
        })
        .await
    }

    async fn list_commands(&self, organization_id: &str) -> Result<Vec<ClinicCommand>> {
        let org = organization_id.to_owned();
        self.call(move |c| {
            let sql = format!(
                "SELECT {COMMAND_COLS} FROM clinic_commands WHERE organization_id = ?1 \
                 ORDER BY name, id"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([org], command_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn get_command(&self, organization_id: &str, id: &str) -> Result<ClinicCommand> {
        let (org, id) = (organization_id.to_owned(), id.to_owned());
        self.call(move |c| {
            let sql = format!(
                "SELECT {COMMAND_COLS} FROM clinic_commands WHERE organization_id = ?1 AND id = ?2"
            );
            Ok(c.prepare_cached(&sql)?
                .query_row(params![org, id], command_row)?)
        })
        .await
    }

    async fn update_command(
        &self,
        organization_id: &str,
        id: &str,
        definition: CommandDefinition,
    ) -> Result<ClinicCommand> {
        let (org, id) = (organization_id.to_owned(), id.to_owned());
        self.call(move |c| {
            let (kind, action_type) = definition.produces.to_columns();
            let sql = format!(
                "UPDATE clinic_commands SET name = ?3, description = ?4, examples = ?5, \
                 parameters = ?6, produces_kind = ?7, action_type = ?8, updated_at = ?9 \
                 WHERE organization_id = ?1 AND id = ?2 RETURNING {COMMAND_COLS}"
            );
            Ok(c.prepare_cached(&sql)?.query_row(
                params![
                    org,
                    id,
                    definition.name,
                    definition.description,
                    json_text(&serde_json::json!(definition.examples)),
                    json_text(&definition.parameters),
                    kind,
                    action_type,
                    now_millis()
                ],
                command_row,
            )?)
        })
        .await
    }

    async fn delete_command(&self, organization_id: &str, id: &str) -> Result<()> {
        let (org, id) = (organization_id.to_owned(), id.to_owned());
        self.call(move |c| {
            let n = c
                .prepare_cached(
                    "DELETE FROM clinic_commands WHERE organization_id = ?1 AND id = ?2",
                )?
                .execute(params![org, id])?;
            if n == 0 {
                return Err(Error::NotFound);
            }
            Ok(())
        })
        .await
    }

    async fn user_settings(&self, user_id: &str) -> Result<UserSettings> {
        let user = user_id.to_owned();
        self.call(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT builtin_commands, wake_phrase FROM user_settings WHERE user_id = ?1",
                )?
                .query_row([user], |r| {
                    Ok(UserSettings {
                        builtin_commands: r.get(0)?,
                        wake_phrase: r.get(1)?,
                    })
                })
                .optional()?;
            Ok(row.unwrap_or_default())
        })
        .await
    }

    async fn set_user_settings(&self, user_id: &str, settings: &UserSettings) -> Result<()> {
        let (user, settings) = (user_id.to_owned(), settings.clone());
        self.call(move |c| {
            c.prepare_cached(
                "INSERT INTO user_settings (user_id, builtin_commands, wake_phrase, updated_at) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (user_id) DO UPDATE SET builtin_commands = excluded.builtin_commands, \
                 wake_phrase = excluded.wake_phrase, updated_at = excluded.updated_at",
            )?
            .execute(params![
                user,
                settings.builtin_commands,
                settings.wake_phrase,
                now_millis()
            ])?;
            Ok(())
        })
        .await
    }

    async fn reencrypt_batch(&self, limit: u32) -> Result<Reencrypted> {
        let sealing = Arc::clone(&self.keys);
        self.call(move |c| {
            let keys = sealing.keyring();
            let prefix = keys.active_prefix();
            let mut left = i64::from(limit);
            let mut found = false;
            let mut changed = Reencrypted::default();
            for col in SEALED_COLUMNS {
                if left <= 0 {
                    break;
                }
                let (table, column, row_key) = (col.table, col.column, col.row_key_sql);
                let select = format!(
                    "SELECT id, {row_key}, {column} FROM {table} \
                     WHERE {column} IS NOT NULL AND substr({column}, 1, length(?1)) <> ?1 \
                     LIMIT ?2"
                );
                let update =
                    format!("UPDATE {table} SET {column} = ?1 WHERE id = ?2 AND {column} = ?3");
                let todo: Vec<(String, String, String)> = c
                    .prepare_cached(&select)?
                    .query_map(params![prefix, left], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                left -= i64::try_from(todo.len()).unwrap_or(i64::MAX);
                found |= !todo.is_empty();
                for (id, row_key, stored) in todo {
                    let Some(sealed) = keys.reseal(&stored, &col.associated_data(&row_key))? else {
                        continue;
                    };
                    let n = c
                        .prepare_cached(&update)?
                        .execute(params![sealed, id, stored])?;
                    changed.record(&stored, n as u64);
                }
            }
            if !found {
                // Nothing is left outside the active key, so nothing is plaintext; versions
                // that write plaintext cannot open this schema, so none can be added.
                c.execute(
                    "UPDATE encryption_state SET sealed_only = 1 WHERE id = 1",
                    [],
                )?;
                changed.done = true;
            }
            Ok(changed)
        })
        .await
    }

    async fn delete_conversations_inactive_since(
        &self,
        cutoff: Millis,
        keep: &[String],
        limit: u32,
    ) -> Result<Vec<String>> {
        // The keep list travels as one JSON array parameter (json_each), not spliced SQL.
        let keep = serde_json::Value::from(keep.to_vec()).to_string();
        self.call(move |c| {
            // Foreign keys cascade the delete to messages, actions (and their outbox rows and
            // attempts) and documents.
            let mut stmt = c.prepare_cached(
                "DELETE FROM conversations WHERE id IN ( \
                   SELECT c.id FROM conversations c \
                   WHERE MAX(c.updated_at, COALESCE(c.end_time, 0), COALESCE( \
                         (SELECT MAX(m.timestamp) FROM messages m \
                          WHERE m.conversation_id = c.id), 0)) < ?1 \
                     AND c.id NOT IN (SELECT value FROM json_each(?2)) \
                   ORDER BY c.id LIMIT ?3) \
                 RETURNING id",
            )?;
            let rows = stmt.query_map(params![cutoff, keep, i64::from(limit)], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn delete_patient(
        &self,
        organization_id: &str,
        patient_id: &str,
        audit: NewAuditEntry,
    ) -> Result<Vec<String>> {
        let (org, id) = (organization_id.to_owned(), patient_id.to_owned());
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached("SELECT 1 FROM patients WHERE organization_id = ?1 AND id = ?2")?
                .query_row(params![org, id], |_| Ok(()))?;
            let conversations: Vec<(String, String)> = tx
                .prepare_cached("SELECT id, status FROM conversations WHERE patient_id = ?1")?
                .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            if conversations
                .iter()
                .any(|(_, status)| status == ConversationStatus::Active.as_str())
            {
                return Err(Error::Conflict(format!(
                    "patient {id} has an active conversation"
                )));
            }
            // Foreign keys cascade to the conversations and everything keyed by them.
            tx.prepare_cached("DELETE FROM patients WHERE id = ?1")?
                .execute([&id])?;
            insert_audit(&tx, &audit)?;
            tx.commit()?;
            Ok(conversations.into_iter().map(|(id, _)| id).collect())
        })
        .await
    }

    async fn record_audit(&self, entry: NewAuditEntry) -> Result<()> {
        self.call(move |c| insert_audit(c, &entry)).await
    }

    async fn search_audit(
        &self,
        organization_id: &str,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEntry>> {
        let org = organization_id.to_owned();
        let q = query.clone();
        let limit = sql_limit(&Page {
            after: None,
            limit: q.limit,
        });
        self.call(move |c| {
            let (at, cid): (Option<Millis>, Option<String>) = cursor_key(
                c,
                "SELECT at, id FROM audit_log WHERE id = ?1 AND organization_id = ?2",
                q.before.as_deref(),
                &[&org],
            )?;
            let sql = format!(
                "SELECT {AUDIT_COLS} FROM audit_log WHERE organization_id = ?1 \
                 AND (?2 IS NULL OR user_id = ?2) \
                 AND (?3 IS NULL OR action = ?3) \
                 AND (?4 IS NULL OR entity_id = ?4 \
                      OR EXISTS (SELECT 1 FROM json_each(record_ids) WHERE value = ?4)) \
                 AND (?5 IS NULL OR (at, id) < (?5, ?6)) \
                 ORDER BY at DESC, id DESC LIMIT ?7"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![org, q.user_id, q.action, q.record_id, at, cid, limit],
                audit_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
}
