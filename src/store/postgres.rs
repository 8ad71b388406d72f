//! The PostgreSQL backend (`--features postgres`), for installs that outgrow one SQLite file.
//!
//! Design decision: one multiplexed `tokio_postgres::Client` (it pipelines concurrent queries
//! on a single connection) behind a reconnect-on-next-call slot, and every method a single
//! statement or a short sequence of idempotent ones, so no method needs a client-side
//! transaction on the shared connection. Atomic read-modify-write (refresh-token consumption)
//! is one `UPDATE … FROM (SELECT … FOR UPDATE)` statement. The one exception, patient
//! erasure (rare, admin only), must lock before it reads, which needs several statements in
//! one transaction: it dials a connection of its own for them.
//!
//! TLS: the connection uses `NoTls`. Point it at loopback or a Unix socket; for a remote
//! database, terminate TLS locally (pgbouncer, stunnel, or a socket forwarded over SSH).
//!
//! Text that listings order by is `COLLATE "C"` in the schema, so ordering and keyset cursors
//! are byte order, exactly as in SQLite.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSqlOwned, ToSql};
use tokio_postgres::{Client, Config, GenericClient, NoTls, Row};

use super::columns::*;
use super::crypto::{Keyring, Sealing, SEALED_COLUMNS};
use super::{
    new_id, now_millis, Action, ActionChange, AppliedMigration, AuditEntry, AuditQuery,
    ClaimedDelivery, ClinicCommand, CommandDefinition, CommandProduces, Conversation,
    ConversationStatus, ConversationWithPatient, Delivery, DeliveryAttempt, DeliveryOutcome,
    DeliveryStatus, Document, DocumentKind, Error, Inserted, Message, Millis, NewAction,
    NewAuditEntry, NewConversation, NewDeliveryAttempt, NewMessage, NewPatient, NewUser,
    Organization, Page, Patient, PatientUpdate, Reencrypted, RefreshToken, Result, SenderType,
    Store, User, UserRole, UserSettings, Webhook,
};

/// Embedded migrations, applied in order on connect; the version is the file's number.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("migrations/postgres/0002_webhook_outbox.sql"),
    ),
    (
        3,
        include_str!("migrations/postgres/0003_clinic_commands.sql"),
    ),
    (6, include_str!("migrations/postgres/0006_audit_reads.sql")),
    (
        7,
        include_str!("migrations/postgres/0007_event_payloads.sql"),
    ),
    (
        8,
        include_str!("migrations/postgres/0008_encryption_state.sql"),
    ),
];

/// Used when the URL sets no `connect_timeout`, so an unreachable server fails fast as
/// `Unavailable` instead of hanging a request.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// PostgreSQL-backed [`Store`].
pub struct PostgresStore {
    config: Config,
    /// Quoted schema identifier put first on `search_path`, if any.
    schema: Option<String>,
    /// Unique per store, so its session can be found in `pg_stat_activity`.
    application_name: String,
    /// The live client; replaced on the next call after the connection closed. The async
    /// mutex is held only to clone the `Arc` or while dialing, so concurrent callers after a
    /// drop wait for one reconnect instead of racing several.
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// Seals and opens the free-text columns; shared by every instance on the database.
    keys: Sealing,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .field("application_name", &self.application_name)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and applies pending migrations to
    /// the connection's default schema.
    ///
    /// # Errors
    /// `Unavailable` if the server cannot be reached; `Backend` for a bad URL, failed
    /// authentication, a failed migration, or a schema migrated by a newer Tandem.
    pub async fn connect(url: &str, keys: Arc<Keyring>) -> Result<PostgresStore> {
        Self::open(url, None, keys).await
    }

    /// Like [`connect`](Self::connect), but creates `schema` if needed and keeps all tables
    /// there (`search_path`), so tests and co-hosted installs can share one database.
    ///
    /// # Errors
    /// As for [`connect`](Self::connect).
    pub async fn connect_with_schema(
        url: &str,
        schema: &str,
        keys: Arc<Keyring>,
    ) -> Result<PostgresStore> {
        Self::open(url, Some(schema), keys).await
    }

    async fn open(url: &str, schema: Option<&str>, keys: Arc<Keyring>) -> Result<PostgresStore> {
        let mut config: Config = url
            .parse()
            .map_err(|e| Error::Backend(format!("invalid postgres url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        let application_name = format!("tandem-{}", new_id());
        config.application_name(&application_name);
        let mut store = PostgresStore {
            config,
            schema: schema.map(quote_ident),
            application_name,
            client: tokio::sync::Mutex::new(None),
            // Replaced by the database's marker once migrations have created it.
            keys: Sealing::new(Arc::clone(&keys), false),
        };
        let mut client = store.dial().await?;
        if let Some(schema) = &store.schema {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await?;
        }
        migrate(&mut client).await?;
        let sealed_only: bool = client
            .query_one("SELECT sealed_only FROM encryption_state WHERE id = 1", &[])
            .await?
            .try_get(0)?;
        store.keys = Sealing::new(keys, sealed_only);
        *store.client.lock().await = Some(Arc::new(client));
        Ok(store)
    }

    /// Applies `TANDEM_REQUIRE_SEALED`: `Some` overrides the database's marker, read on
    /// connect, on whether a stored value without an envelope is refused.
    #[must_use]
    pub fn require_sealed(mut self, setting: Option<bool>) -> PostgresStore {
        self.keys.apply_setting(setting);
        self
    }

    /// Whether a stored value without an envelope is refused rather than read as plaintext.
    pub fn requires_sealed(&self) -> bool {
        self.keys.requires_sealed()
    }

    /// A message row with its text opened.
    fn message(&self, r: &Row) -> Result<Message> {
        Ok(self.keys.open_message(message_row(r)?)?)
    }

    /// An action row with its data opened.
    fn action(&self, r: &Row) -> Result<Action> {
        let (action, data) = action_row(r)?;
        self.keys.open_action(action, &data)
    }

    /// A delivery row with its payload opened.
    fn delivery(&self, r: &Row) -> Result<Delivery> {
        let (delivery, payload) = delivery_row(r)?;
        self.keys.open_delivery(delivery, &payload)
    }

    /// A claimed delivery row with its payload opened.
    fn claimed(&self, r: &Row) -> Result<ClaimedDelivery> {
        let mut claim = claimed_row(r)?;
        let payload: String = r.try_get(5)?;
        claim.delivery = self.keys.open_delivery(claim.delivery, &payload)?;
        Ok(claim)
    }

    /// The `application_name` this store's sessions carry, to find them in
    /// `pg_stat_activity`.
    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    async fn dial(&self) -> Result<Client> {
        let (client, connection) = self.config.connect(NoTls).await?;
        let name = self.application_name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(application_name = %name, error = %e, "postgres connection lost");
            }
        });
        if let Some(schema) = &self.schema {
            client
                .batch_execute(&format!("SET search_path TO {schema}"))
                .await?;
        }
        Ok(client)
    }

    /// The live client, reconnecting first if the previous connection closed.
    async fn client(&self) -> Result<Arc<Client>> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(client));
        }
        if slot.is_some() {
            tracing::info!(application_name = %self.application_name, "reconnecting to postgres");
        }
        *slot = None;
        let client = Arc::new(self.dial().await?);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            let detail = format!("{} ({})", db.message(), code.code());
            return if *code == SqlState::UNIQUE_VIOLATION {
                Error::Conflict(db.constraint().map_or(detail, str::to_owned))
            } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
                Error::NotFound
            } else if matches!(&code.code()[..2], "08" | "40" | "53" | "57") {
                // Connection exception, serialization failure/deadlock, out of resources,
                // operator intervention (shutdown, terminated session): all worth a retry.
                Error::Unavailable(detail)
            } else {
                Error::Backend(detail)
            };
        }
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        if e.is_closed() || io {
            Error::Unavailable(e.to_string())
        } else {
            Error::Backend(e.to_string())
        }
    }
}

/// Double-quotes an identifier, so any schema name is taken literally.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn migrate(client: &mut Client) -> Result<()> {
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    for &(version, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        // Serializes concurrent migrators of the same schema (several replicas starting).
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(hashtext('tandem.migrate.' || COALESCE(current_schema(), '')));
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version BIGINT PRIMARY KEY NOT NULL,
                 applied_at BIGINT NOT NULL
             )",
        )
        .await?;
        let newest: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )
            .await?
            .try_get(0)?;
        if newest > known {
            return Err(Error::Backend(format!(
                "database schema version {newest} is newer than this build knows ({known})"
            )));
        }
        let done: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)",
                &[&version],
            )
            .await?
            .try_get(0)?;
        if !done {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[&version, &now_millis()],
            )
            .await?;
            tracing::info!(version, "applied postgres migration");
        }
        tx.commit().await?;
    }
    Ok(())
}

/// `0` means unbounded, which Postgres spells `LIMIT NULL`.
fn sql_limit(page: &Page) -> Option<i64> {
    (page.limit != 0).then(|| i64::from(page.limit))
}

fn enum_col<T>(r: &Row, idx: usize, parse: fn(&str) -> Option<T>) -> Result<T> {
    let s: String = r.try_get(idx)?;
    parse(&s).ok_or_else(|| Error::Backend(format!("unexpected value {s:?} in column {idx}")))
}

fn json_col(r: &Row, idx: usize) -> Result<Option<serde_json::Value>> {
    let s: Option<String> = r.try_get(idx)?;
    s.map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| Error::Backend(format!("bad JSON in column {idx}: {e}")))
}

fn json_text(v: &serde_json::Value) -> String {
    // Serializing a `Value` to a string cannot fail (no non-string map keys, no I/O).
    v.to_string()
}

fn org_row(r: &Row) -> Result<Organization> {
    Ok(Organization {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        created_at: r.try_get(2)?,
    })
}

fn user_row(r: &Row) -> Result<User> {
    Ok(User {
        id: r.try_get(0)?,
        organization_id: r.try_get(1)?,
        username: r.try_get(2)?,
        password_hash: r.try_get(3)?,
        preferred_language: r.try_get(4)?,
        role: enum_col(r, 5, UserRole::parse)?,
        created_at: r.try_get(6)?,
        updated_at: r.try_get(7)?,
    })
}

fn token_row(r: &Row) -> Result<RefreshToken> {
    Ok(RefreshToken {
        token_hash: r.try_get(0)?,
        user_id: r.try_get(1)?,
        family_id: r.try_get(2)?,
        expires_at: r.try_get(3)?,
        used_at: r.try_get(4)?,
        created_at: r.try_get(5)?,
    })
}

fn patient_at(r: &Row, base: usize) -> Result<Patient> {
    Ok(Patient {
        id: r.try_get(base)?,
        organization_id: r.try_get(base + 1)?,
        first_name: r.try_get(base + 2)?,
        last_name: r.try_get(base + 3)?,
        date_of_birth: r.try_get(base + 4)?,
        preferred_language: r.try_get(base + 5)?,
        created_at: r.try_get(base + 6)?,
        updated_at: r.try_get(base + 7)?,
    })
}

fn patient_row(r: &Row) -> Result<Patient> {
    patient_at(r, 0)
}

fn conversation_row(r: &Row) -> Result<Conversation> {
    Ok(Conversation {
        id: r.try_get(0)?,
        organization_id: r.try_get(1)?,
        user_id: r.try_get(2)?,
        patient_id: r.try_get(3)?,
        clinician_language: r.try_get(4)?,
        patient_language: r.try_get(5)?,
        status: enum_col(r, 6, ConversationStatus::parse)?,
        start_time: r.try_get(7)?,
        end_time: r.try_get(8)?,
        created_at: r.try_get(9)?,
        updated_at: r.try_get(10)?,
    })
}

fn conversation_with_patient_row(r: &Row) -> Result<ConversationWithPatient> {
    Ok(ConversationWithPatient {
        conversation: conversation_row(r)?,
        patient: patient_at(r, CONV_NCOLS)?,
    })
}

fn message_row(r: &Row) -> Result<Message> {
    Ok(Message {
        id: r.try_get(0)?,
        conversation_id: r.try_get(1)?,
        timestamp: r.try_get(2)?,
        sender_type: enum_col(r, 3, SenderType::parse)?,
        original_text: r.try_get(4)?,
        translated_text: r.try_get(5)?,
        language: r.try_get(6)?,
        is_final: r.try_get(7)?,
        original_message_id: r.try_get(8)?,
        stt_item_id: r.try_get(9)?,
        speaker_source: r.try_get(10)?,
        speaker_confidence: r.try_get(11)?,
        timings: json_col(r, 12)?,
    })
}

/// The action with its `data` column still sealed; [`Sealing::open_action`] completes it.
fn action_row(r: &Row) -> Result<(Action, String)> {
    Ok((
        Action {
            id: r.try_get(0)?,
            conversation_id: r.try_get(1)?,
            kind: r.try_get(2)?,
            status: r.try_get(3)?,
            data: serde_json::Value::Null,
            created_at: r.try_get(5)?,
            updated_at: r.try_get(6)?,
        },
        r.try_get(4)?,
    ))
}

/// A BIGINT count or duration that the domain keeps as a smaller unsigned type.
fn small_col<T: TryFrom<i64>>(r: &Row, idx: usize) -> Result<T> {
    let v: i64 = r.try_get(idx)?;
    T::try_from(v).map_err(|_| Error::Backend(format!("value {v} out of range in column {idx}")))
}

fn webhook_row(r: &Row) -> Result<Webhook> {
    Ok(Webhook {
        organization_id: r.try_get(0)?,
        url: r.try_get(1)?,
        secret: r.try_get(2)?,
        created_at: r.try_get(3)?,
        updated_at: r.try_get(4)?,
    })
}

/// The delivery with its `payload` still sealed; [`Sealing::open_delivery`] completes it.
fn delivery_row(r: &Row) -> Result<(Delivery, String)> {
    Ok((
        Delivery {
            id: r.try_get(0)?,
            organization_id: r.try_get(1)?,
            action_id: r.try_get(2)?,
            event: r.try_get(3)?,
            idempotency_key: r.try_get(4)?,
            payload: serde_json::Value::Null,
            status: enum_col(r, 6, DeliveryStatus::parse)?,
            attempts: small_col(r, 7)?,
            next_attempt_at: r.try_get(8)?,
            last_error: r.try_get(9)?,
            created_at: r.try_get(10)?,
            updated_at: r.try_get(11)?,
            delivered_at: r.try_get(12)?,
        },
        r.try_get(5)?,
    ))
}

fn claimed_row(r: &Row) -> Result<ClaimedDelivery> {
    Ok(ClaimedDelivery {
        delivery: delivery_row(r)?.0,
        lease_token: r.try_get(DELIVERY_NCOLS)?,
        url: r.try_get(DELIVERY_NCOLS + 1)?,
        secret: r.try_get(DELIVERY_NCOLS + 2)?,
    })
}

fn attempt_row(r: &Row) -> Result<DeliveryAttempt> {
    let status_code: Option<i64> = r.try_get(5)?;
    Ok(DeliveryAttempt {
        id: r.try_get(0)?,
        delivery_id: r.try_get(1)?,
        attempt: small_col(r, 2)?,
        started_at: r.try_get(3)?,
        duration_ms: small_col(r, 4)?,
        status_code: status_code
            .map(|c| {
                u16::try_from(c)
                    .map_err(|_| Error::Backend(format!("status code {c} out of range")))
            })
            .transpose()?,
        error: r.try_get(6)?,
    })
}
fn command_row(r: &Row) -> Result<ClinicCommand> {
    let examples: String = r.try_get(4)?;
    let examples = serde_json::from_str(&examples)
        .map_err(|e| Error::Backend(format!("bad JSON in clinic_commands.examples: {e}")))?;
    let kind: String = r.try_get(6)?;
    let produces = CommandProduces::from_columns(&kind, r.try_get(7)?)
        .ok_or_else(|| Error::Backend(format!("unexpected produces_kind {kind:?}")))?;
    Ok(ClinicCommand {
        id: r.try_get(0)?,
        organization_id: r.try_get(1)?,
        definition: CommandDefinition {
            name: r.try_get(2)?,
            description: r.try_get(3)?,
            examples,
            parameters: json_col(r, 5)?.unwrap_or(serde_json::Value::Null),
            produces,
        },
        created_at: r.try_get(8)?,
        updated_at: r.try_get(9)?,
    })
}

fn document_row(r: &Row) -> Result<Document> {
    Ok(Document {
        id: r.try_get(0)?,
        conversation_id: r.try_get(1)?,
        content: r.try_get(2)?,
        created_at: r.try_get(3)?,
        updated_at: r.try_get(4)?,
    })
}

fn audit_row(r: &Row) -> Result<AuditEntry> {
    let record_ids: String = r.try_get(6)?;
    Ok(AuditEntry {
        id: r.try_get(0)?,
        organization_id: r.try_get(1)?,
        user_id: r.try_get(2)?,
        action: r.try_get(3)?,
        entity_type: r.try_get(4)?,
        entity_id: r.try_get(5)?,
        record_ids: serde_json::from_str(&record_ids)
            .map_err(|e| Error::Backend(format!("bad JSON in audit_log.record_ids: {e}")))?,
        remote_addr: r.try_get(7)?,
        at: r.try_get(8)?,
    })
}

fn document_kind(kind: DocumentKind) -> &'static str {
    match kind {
        DocumentKind::Summary => "summary",
        DocumentKind::MedicalHistory => "medical_history",
    }
}

/// The sort key of the row a keyset cursor names, as one bind parameter per key column: all
/// `None` on the first page, so a listing filters with `$n IS NULL OR (…) > ($n, …)`.
trait CursorKey: Default {
    fn read(r: &Row) -> Result<Self>;
}

impl<A: FromSqlOwned, B: FromSqlOwned> CursorKey for (Option<A>, Option<B>) {
    fn read(r: &Row) -> Result<Self> {
        Ok((Some(r.try_get(0)?), Some(r.try_get(1)?)))
    }
}

impl<A: FromSqlOwned, B: FromSqlOwned, C: FromSqlOwned> CursorKey
    for (Option<A>, Option<B>, Option<C>)
{
    fn read(r: &Row) -> Result<Self> {
        Ok((
            Some(r.try_get(0)?),
            Some(r.try_get(1)?),
            Some(r.try_get(2)?),
        ))
    }
}

/// Resolves a page cursor (the id of the last row of the previous page) to that row's sort
/// key. `sql` selects the key columns of the row whose id is `$1`, limited by `scope` (`$2`
/// on) to what the caller may list: an unknown id, or one outside that scope, is `NotFound`
/// rather than a page that silently starts somewhere else.
async fn cursor_key<K: CursorKey>(
    c: &Client,
    sql: &str,
    id: Option<&str>,
    scope: &[&(dyn ToSql + Sync)],
) -> Result<K> {
    let Some(id) = id else {
        return Ok(K::default());
    };
    let params: Vec<&(dyn ToSql + Sync)> = std::iter::once(&id as &(dyn ToSql + Sync))
        .chain(scope.iter().copied())
        .collect();
    let row = c.query_opt(sql, &params).await?.ok_or(Error::NotFound)?;
    K::read(&row)
}

/// Appends one audit entry, on the shared client or inside a transaction that must commit
/// it together with the change it records.
async fn insert_audit(c: &impl GenericClient, entry: &NewAuditEntry) -> Result<()> {
    let sql =
        format!("INSERT INTO audit_log ({AUDIT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
    c.execute(
        &sql,
        &[
            &new_id(),
            &entry.organization_id,
            &entry.user_id,
            &entry.action,
            &entry.entity_type,
            &entry.entity_id,
            &json_text(&serde_json::json!(entry.record_ids)),
            &entry.remote_addr,
            &now_millis(),
        ],
    )
    .await?;
    Ok(())
}

fn rows<T>(rows: &[Row], f: fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

/// `Some(row)` mapped, or `NotFound`.
fn one<T>(row: Option<Row>, f: fn(&Row) -> Result<T>) -> Result<T> {
    row.as_ref().map_or(Err(Error::NotFound), f)
}

#[async_trait]
impl Store for PostgresStore {
    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT version, applied_at FROM schema_migrations ORDER BY version",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AppliedMigration {
                    version: r.try_get(0)?,
                    applied_at: r.try_get(1)?,
                })
            })
            .collect()
    }

    async fn ping(&self) -> Result<()> {
        self.client().await?.batch_execute("SELECT 1").await?;
        Ok(())
    }

    async fn create_organization(&self, name: &str) -> Result<Organization> {
        let org = Organization {
            id: new_id(),
            name: name.to_owned(),
            created_at: now_millis(),
        };
        self.client()
            .await?
            .execute(
                "INSERT INTO organizations (id, name, is_default, created_at) \
                 VALUES ($1, $2, FALSE, $3)",
                &[&org.id, &org.name, &org.created_at],
            )
            .await?;
        Ok(org)
    }

    async fn default_organization(&self) -> Result<Organization> {
        let c = self.client().await?;
        let select = format!("SELECT {ORG_COLS} FROM organizations WHERE is_default");
        if let Some(row) = c.query_opt(&select, &[]).await? {
            return org_row(&row);
        }
        c.execute(
            "INSERT INTO organizations (id, name, is_default, created_at) \
             VALUES ($1, 'Default', TRUE, $2) ON CONFLICT DO NOTHING",
            &[&new_id(), &now_millis()],
        )
        .await?;
        org_row(&c.query_one(&select, &[]).await?)
    }

    async fn get_organization(&self, id: &str) -> Result<Organization> {
        let sql = format!("SELECT {ORG_COLS} FROM organizations WHERE id = $1");
        one(self.client().await?.query_opt(&sql, &[&id]).await?, org_row)
    }

    async fn organization_by_name(&self, name: &str) -> Result<Organization> {
        let sql = format!(
            "SELECT {ORG_COLS} FROM organizations WHERE name = $1 ORDER BY created_at, id LIMIT 1"
        );
        one(
            self.client().await?.query_opt(&sql, &[&name]).await?,
            org_row,
        )
    }

    async fn create_user(&self, user: NewUser) -> Result<User> {
        let user = user.into_row();
        let sql =
            format!("INSERT INTO users ({USER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
        self.client()
            .await?
            .execute(
                &sql,
                &[
                    &user.id,
                    &user.organization_id,
                    &user.username,
                    &user.password_hash,
                    &user.preferred_language,
                    &user.role.as_str(),
                    &user.created_at,
                    &user.updated_at,
                ],
            )
            .await?;
        Ok(user)
    }

    async fn user_by_id(&self, id: &str) -> Result<User> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        one(
            self.client().await?.query_opt(&sql, &[&id]).await?,
            user_row,
        )
    }

    async fn user_by_username(&self, username: &str) -> Result<User> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE username = $1");
        one(
            self.client().await?.query_opt(&sql, &[&username]).await?,
            user_row,
        )
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        let sql = format!("SELECT {USER_COLS} FROM users ORDER BY username, id");
        rows(&self.client().await?.query(&sql, &[]).await?, user_row)
    }

    async fn count_users(&self) -> Result<u64> {
        let n: i64 = self
            .client()
            .await?
            .query_one("SELECT COUNT(*) FROM users", &[])
            .await?
            .try_get(0)?;
        u64::try_from(n).map_err(|e| Error::Backend(e.to_string()))
    }

    async fn set_password_hash(&self, user_id: &str, password_hash: &str) -> Result<()> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1",
                &[&user_id, &password_hash, &now_millis()],
            )
            .await?;
        if n == 0 {
            return Err(Error::NotFound);
        }
        Ok(())
    }

    async fn insert_refresh_token(&self, token: RefreshToken) -> Result<()> {
        let sql =
            format!("INSERT INTO refresh_tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6)");
        self.client()
            .await?
            .execute(
                &sql,
                &[
                    &token.token_hash,
                    &token.user_id,
                    &token.family_id,
                    &token.expires_at,
                    &token.used_at,
                    &token.created_at,
                ],
            )
            .await?;
        Ok(())
    }

    async fn consume_refresh_token(&self, token_hash: &str) -> Result<RefreshToken> {
        // One statement: the row lock makes a concurrent consumer wait and then see this
        // one's `used_at`, so exactly one caller gets the unused token.
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE refresh_tokens t SET used_at = COALESCE(t.used_at, $2) \
                 FROM (SELECT token_hash, used_at FROM refresh_tokens \
                       WHERE token_hash = $1 FOR UPDATE) old \
                 WHERE t.token_hash = old.token_hash \
                 RETURNING t.token_hash, t.user_id, t.family_id, t.expires_at, old.used_at, \
                           t.created_at",
                &[&token_hash, &now_millis()],
            )
            .await?;
        one(row, token_row)
    }

    async fn revoke_refresh_family(&self, family_id: &str) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE refresh_tokens SET used_at = COALESCE(used_at, $2), \
                 expires_at = LEAST(expires_at, $2) WHERE family_id = $1",
                &[&family_id, &now_millis()],
            )
            .await?;
        Ok(())
    }

    async fn find_or_create_patient(&self, patient: NewPatient) -> Result<(Patient, bool)> {
        let c = self.client().await?;
        let created = c
            .execute(
                "INSERT INTO patients (id, organization_id, first_name, last_name, \
                 date_of_birth, preferred_language, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT DO NOTHING",
                &[
                    &new_id(),
                    &patient.organization_id,
                    &patient.first_name,
                    &patient.last_name,
                    &patient.date_of_birth,
                    &patient.preferred_language,
                    &now_millis(),
                ],
            )
            .await?
            == 1;
        let sql = format!(
            "SELECT {PATIENT_COLS} FROM patients WHERE organization_id = $1 \
             AND last_name = $2 AND first_name = $3 AND date_of_birth = $4"
        );
        let row = c
            .query_one(
                &sql,
                &[
                    &patient.organization_id,
                    &patient.last_name,
                    &patient.first_name,
                    &patient.date_of_birth,
                ],
            )
            .await?;
        Ok((patient_row(&row)?, created))
    }

    async fn get_patient(&self, organization_id: &str, id: &str) -> Result<Patient> {
        let sql =
            format!("SELECT {PATIENT_COLS} FROM patients WHERE organization_id = $1 AND id = $2");
        one(
            self.client()
                .await?
                .query_opt(&sql, &[&organization_id, &id])
                .await?,
            patient_row,
        )
    }

    async fn list_patients(
        &self,
        organization_id: &str,
        query: Option<&str>,
        page: &Page,
    ) -> Result<Vec<Patient>> {
        let c = self.client().await?;
        let (last, first, cid): (Option<String>, Option<String>, Option<String>) = cursor_key(
            &c,
            "SELECT last_name, first_name, id FROM patients WHERE id = $1 AND organization_id = $2",
            page.after.as_deref(),
            &[&organization_id],
        )
        .await?;
        let sql = format!(
            "SELECT {PATIENT_COLS} FROM patients WHERE organization_id = $1 \
             AND ($2::TEXT IS NULL OR strpos(lower(first_name), lower($2 COLLATE \"C\")) > 0 \
                  OR strpos(lower(last_name), lower($2 COLLATE \"C\")) > 0) \
             AND ($3::TEXT IS NULL OR (last_name, first_name, id) > ($3, $4, $5)) \
             ORDER BY last_name, first_name, id LIMIT $6"
        );
        let found = c
            .query(
                &sql,
                &[
                    &organization_id,
                    &query,
                    &last,
                    &first,
                    &cid,
                    &sql_limit(page),
                ],
            )
            .await?;
        rows(&found, patient_row)
    }

    async fn update_patient(
        &self,
        organization_id: &str,
        id: &str,
        update: PatientUpdate,
    ) -> Result<Patient> {
        let sql = format!(
            "UPDATE patients SET \
             first_name = COALESCE($3, first_name), last_name = COALESCE($4, last_name), \
             date_of_birth = COALESCE($5, date_of_birth), \
             preferred_language = COALESCE($6, preferred_language), updated_at = $7 \
             WHERE organization_id = $1 AND id = $2 RETURNING {PATIENT_COLS}"
        );
        let row = self
            .client()
            .await?
            .query_opt(
                &sql,
                &[
                    &organization_id,
                    &id,
                    &update.first_name,
                    &update.last_name,
                    &update.date_of_birth,
                    &update.preferred_language,
                    &now_millis(),
                ],
            )
            .await?;
        one(row, patient_row)
    }

    async fn create_conversation(&self, conversation: NewConversation) -> Result<Conversation> {
        let conv = conversation.into_row();
        // The user and the patient must both belong to the conversation's organization.
        let n = self
            .client()
            .await?
            .execute(
                "INSERT INTO conversations (id, organization_id, user_id, patient_id, \
                 clinician_language, patient_language, status, start_time, end_time, \
                 created_at, updated_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, NULL, $8, $8 \
                 WHERE EXISTS (SELECT 1 FROM users WHERE id = $3 AND organization_id = $2) \
                   AND EXISTS (SELECT 1 FROM patients WHERE id = $4 AND organization_id = $2)",
                &[
                    &conv.id,
                    &conv.organization_id,
                    &conv.user_id,
                    &conv.patient_id,
                    &conv.clinician_language,
                    &conv.patient_language,
                    &conv.status.as_str(),
                    &conv.start_time,
                ],
            )
            .await?;
        if n == 0 {
            return Err(Error::NotFound);
        }
        Ok(conv)
    }

    async fn get_conversation(
        &self,
        organization_id: &str,
        id: &str,
    ) -> Result<ConversationWithPatient> {
        let sql = format!(
            "SELECT {C_CONV_COLS}, {P_PATIENT_COLS} FROM conversations c \
             JOIN patients p ON p.id = c.patient_id \
             WHERE c.organization_id = $1 AND c.id = $2"
        );
        one(
            self.client()
                .await?
                .query_opt(&sql, &[&organization_id, &id])
                .await?,
            conversation_with_patient_row,
        )
    }

    async fn list_conversations(
        &self,
        organization_id: &str,
        page: &Page,
    ) -> Result<Vec<ConversationWithPatient>> {
        let c = self.client().await?;
        let (start, cid): (Option<Millis>, Option<String>) = cursor_key(
            &c,
            "SELECT start_time, id FROM conversations WHERE id = $1 AND organization_id = $2",
            page.after.as_deref(),
            &[&organization_id],
        )
        .await?;
        let sql = format!(
            "SELECT {C_CONV_COLS}, {P_PATIENT_COLS} FROM conversations c \
             JOIN patients p ON p.id = c.patient_id \
             WHERE c.organization_id = $1 \
             AND ($2::BIGINT IS NULL OR (c.start_time, c.id) < ($2, $3)) \
             ORDER BY c.start_time DESC, c.id DESC LIMIT $4"
        );
        let found = c
            .query(&sql, &[&organization_id, &start, &cid, &sql_limit(page)])
            .await?;
        rows(&found, conversation_with_patient_row)
    }

    async fn list_unsummarized_conversations(
        &self,
        ended_since: Millis,
        limit: u32,
    ) -> Result<Vec<Conversation>> {
        let sql = format!(
            "SELECT {CONV_COLS} FROM conversations WHERE status = $1 AND end_time >= $2 \
             ORDER BY end_time, id LIMIT $3"
        );
        let found = self
            .client()
            .await?
            .query(
                &sql,
                &[
                    &ConversationStatus::Ended.as_str(),
                    &ended_since,
                    &i64::from(limit),
                ],
            )
            .await?;
        rows(&found, conversation_row)
    }

    async fn set_conversation_status(
        &self,
        organization_id: &str,
        id: &str,
        status: ConversationStatus,
        end_time: Option<Millis>,
    ) -> Result<Conversation> {
        let sql = format!(
            "UPDATE conversations SET status = $3, end_time = COALESCE($4, end_time), \
             updated_at = $5 WHERE organization_id = $1 AND id = $2 RETURNING {CONV_COLS}"
        );
        let row = self
            .client()
            .await?
            .query_opt(
                &sql,
                &[
                    &organization_id,
                    &id,
                    &status.as_str(),
                    &end_time,
                    &now_millis(),
                ],
            )
            .await?;
        one(row, conversation_row)
    }

    async fn set_patient_language(
        &self,
        organization_id: &str,
        id: &str,
        language: &str,
    ) -> Result<Conversation> {
        let sql = format!(
            "UPDATE conversations SET patient_language = $3, updated_at = $4 \
             WHERE organization_id = $1 AND id = $2 RETURNING {CONV_COLS}"
        );
        let row = self
            .client()
            .await?
            .query_opt(&sql, &[&organization_id, &id, &language, &now_millis()])
            .await?;
        one(row, conversation_row)
    }

    async fn insert_message(&self, message: NewMessage) -> Result<Inserted<Message>> {
        let msg = message.into_row();
        let (original_text, translated_text) = self.keys.seal_message(&msg);
        let c = self.client().await?;
        // DO NOTHING fires only on the (conversation, item, kind) index: the id is fresh.
        let sql = format!(
            "INSERT INTO messages ({MSG_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT DO NOTHING"
        );
        let n = c
            .execute(
                &sql,
                &[
                    &msg.id,
                    &msg.conversation_id,
                    &msg.timestamp,
                    &msg.sender_type.as_str(),
                    &original_text,
                    &translated_text,
                    &msg.language,
                    &msg.is_final,
                    &msg.original_message_id,
                    &msg.stt_item_id,
                    &msg.speaker_source,
                    &msg.speaker_confidence,
                    &msg.timings.as_ref().map(json_text),
                ],
            )
            .await?;
        if n == 1 {
            return Ok(Inserted::New(msg));
        }
        let sql = format!(
            "SELECT {MSG_COLS} FROM messages WHERE conversation_id = $1 \
             AND stt_item_id = $2 AND (sender_type = 'translation') = $3"
        );
        let row = c
            .query_opt(
                &sql,
                &[
                    &msg.conversation_id,
                    &msg.stt_item_id,
                    &(msg.sender_type == SenderType::Translation),
                ],
            )
            .await?;
        let row = row.ok_or(Error::NotFound)?;
        Ok(Inserted::Existing(self.message(&row)?))
    }

    async fn list_messages(&self, conversation_id: &str, page: &Page) -> Result<Vec<Message>> {
        let c = self.client().await?;
        let (ts, cid): (Option<Millis>, Option<String>) = cursor_key(
            &c,
            "SELECT timestamp, id FROM messages WHERE id = $1 AND conversation_id = $2",
            page.after.as_deref(),
            &[&conversation_id],
        )
        .await?;
        let sql = format!(
            "SELECT {MSG_COLS} FROM messages WHERE conversation_id = $1 \
             AND ($2::BIGINT IS NULL OR (timestamp, id) > ($2, $3)) \
             ORDER BY timestamp, id LIMIT $4"
        );
        let found = c
            .query(&sql, &[&conversation_id, &ts, &cid, &sql_limit(page)])
            .await?;
        found.iter().map(|r| self.message(r)).collect()
    }

    async fn set_message_timings(&self, id: &str, timings: &serde_json::Value) -> Result<()> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE messages SET timings = $2 WHERE id = $1",
                &[&id, &json_text(timings)],
            )
            .await?;
        if n == 0 {
            return Err(Error::NotFound);
        }
        Ok(())
    }

    async fn insert_action(&self, action: NewAction) -> Result<Action> {
        let action = action.into_row();
        let sql =
            format!("INSERT INTO actions ({ACTION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)");
        self.client()
            .await?
            .execute(
                &sql,
                &[
                    &action.id,
                    &action.conversation_id,
                    &action.kind,
                    &action.status,
                    &self.keys.seal_action_data(&action.id, &action.data),
                    &action.created_at,
                    &action.updated_at,
                ],
            )
            .await?;
        Ok(action)
    }

    async fn list_actions(&self, conversation_id: &str) -> Result<Vec<Action>> {
        let sql = format!(
            "SELECT {ACTION_COLS} FROM actions WHERE conversation_id = $1 \
             ORDER BY created_at DESC, id DESC"
        );
        self.client()
            .await?
            .query(&sql, &[&conversation_id])
            .await?
            .iter()
            .map(|r| self.action(r))
            .collect()
    }

    async fn get_action(&self, organization_id: &str, id: &str) -> Result<Action> {
        let sql = format!(
            "SELECT {A_ACTION_COLS} FROM actions a JOIN conversations c ON c.id = a.conversation_id \
             WHERE c.organization_id = $1 AND a.id = $2"
        );
        let row = self
            .client()
            .await?
            .query_opt(&sql, &[&organization_id, &id])
            .await?
            .ok_or(Error::NotFound)?;
        self.action(&row)
    }

    async fn update_action(
        &self,
        organization_id: &str,
        id: &str,
        change: ActionChange,
    ) -> Result<(Action, Option<Delivery>)> {
        // One statement, so the status change and the outbox row commit together.
        let sql = format!(
            "WITH upd AS ( \
                 UPDATE actions a SET status = $3, data = $4, updated_at = $5 \
                 FROM conversations c \
                 WHERE a.id = $2 AND c.id = a.conversation_id AND c.organization_id = $1 \
                   AND a.updated_at = $6 \
                 RETURNING {A_ACTION_COLS}), \
             ins AS ( \
                 INSERT INTO webhook_outbox ({DELIVERY_COLS}) \
                 SELECT $7::text, $1::text, upd.id, $8::text, $9::text, $10::text, 'pending', 0, \
                        $11::bigint, NULL, $11::bigint, $11::bigint, NULL \
                 FROM upd \
                 WHERE $12::boolean AND EXISTS (SELECT 1 FROM webhooks WHERE organization_id = $1) \
                 RETURNING id) \
             SELECT upd.*, (SELECT id FROM ins) FROM upd"
        );
        let delivery = change.delivery.map(|d| d.into_row(organization_id, id));
        let d = delivery.as_ref();
        let c = self.client().await?;
        let row = c
            .query_opt(
                &sql,
                &[
                    &organization_id,
                    &id,
                    &change.status,
                    &self.keys.seal_action_data(id, &change.data),
                    &change.updated_at,
                    &change.expected_updated_at,
                    &d.map(|d| d.id.as_str()),
                    &d.map(|d| d.event.as_str()),
                    &d.map(|d| d.idempotency_key.as_str()),
                    &d.map(|d| self.keys.seal_delivery_payload(&d.id, &d.payload)),
                    &d.map(|d| d.created_at),
                    &d.is_some(),
                ],
            )
            .await?;
        let Some(row) = row else {
            // Nothing updated: either not this organization's action, or it changed.
            self.get_action(organization_id, id).await?;
            return Err(Error::Conflict(format!(
                "action {id} changed since it was read"
            )));
        };
        let action = self.action(&row)?;
        let queued: Option<String> = row.try_get(7)?;
        Ok((action, delivery.filter(|_| queued.is_some())))
    }

    async fn put_webhook(&self, organization_id: &str, url: &str, secret: &str) -> Result<Webhook> {
        let sql = format!(
            "INSERT INTO webhooks ({WEBHOOK_COLS}) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (organization_id) DO UPDATE \
             SET url = excluded.url, secret = excluded.secret, updated_at = excluded.updated_at \
             RETURNING {WEBHOOK_COLS}"
        );
        let row = self
            .client()
            .await?
            .query_one(&sql, &[&organization_id, &url, &secret, &now_millis()])
            .await?;
        webhook_row(&row)
    }

    async fn get_webhook(&self, organization_id: &str) -> Result<Webhook> {
        let sql = format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE organization_id = $1");
        one(
            self.client()
                .await?
                .query_opt(&sql, &[&organization_id])
                .await?,
            webhook_row,
        )
    }

    async fn delete_webhook(&self, organization_id: &str) -> Result<()> {
        let row = self
            .client()
            .await?
            .query_one(
                "WITH d AS (DELETE FROM webhooks WHERE organization_id = $1 \
                            RETURNING organization_id), \
                      f AS (UPDATE webhook_outbox SET status = 'failed', \
                            last_error = 'webhook removed', lease_until = NULL, \
                            lease_token = NULL, updated_at = $2 \
                            WHERE organization_id IN (SELECT organization_id FROM d) \
                              AND status = 'pending' RETURNING 1) \
                 SELECT COUNT(*) FROM d",
                &[&organization_id, &now_millis()],
            )
            .await?;
        let n: i64 = row.try_get(0)?;
        if n == 0 {
            return Err(Error::NotFound);
        }
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>> {
        // SKIP LOCKED: concurrent workers (several replicas) split the due rows between them.
        let sql = format!(
            "WITH due AS ( \
                 SELECT o.id FROM webhook_outbox o \
                 WHERE o.status = 'pending' AND o.next_attempt_at <= $1 \
                   AND (o.lease_until IS NULL OR o.lease_until <= $1) \
                   AND EXISTS (SELECT 1 FROM webhooks w WHERE w.organization_id = o.organization_id) \
                 ORDER BY o.next_attempt_at, o.id LIMIT $3 \
                 FOR UPDATE OF o SKIP LOCKED), \
             claimed AS ( \
                 UPDATE webhook_outbox o SET attempts = o.attempts + 1, lease_until = $2, \
                        lease_token = $4, updated_at = $1 \
                 FROM due WHERE o.id = due.id \
                 RETURNING {O_DELIVERY_COLS}, o.lease_token) \
             SELECT claimed.*, w.url, w.secret FROM claimed \
             JOIN webhooks w ON w.organization_id = claimed.organization_id \
             ORDER BY claimed.next_attempt_at, claimed.id"
        );
        let rows = self
            .client()
            .await?
            .query(&sql, &[&now, &lease_until, &i64::from(limit), &new_id()])
            .await?;
        rows.iter().map(|r| self.claimed(r)).collect()
    }

    async fn record_delivery_attempt(&self, attempt: NewDeliveryAttempt) -> Result<()> {
        let log = attempt.log_row();
        let now = now_millis();
        let (attempt_no, duration_ms) = (i64::from(log.attempt), i64::from(log.duration_ms));
        let status_code = log.status_code.map(i64::from);
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &log.id,
            &log.delivery_id,
            &attempt_no,
            &log.started_at,
            &duration_ms,
            &status_code,
            &log.error,
            &now,
        ];
        // The log row and the outbox update are one statement, so they commit together.
        let update = match &attempt.outcome {
            DeliveryOutcome::Delivered => {
                "UPDATE webhook_outbox SET status = 'delivered', delivered_at = $8, \
                 last_error = NULL, lease_until = NULL, lease_token = NULL, updated_at = $8 \
                 WHERE id = $2 AND status <> 'delivered'"
            }
            DeliveryOutcome::Retry { next_attempt_at } => {
                params.push(&attempt.lease_token);
                params.push(next_attempt_at);
                "UPDATE webhook_outbox SET next_attempt_at = $10, last_error = $7, \
                 lease_until = NULL, lease_token = NULL, updated_at = $8 \
                 WHERE id = $2 AND status = 'pending' AND lease_token = $9"
            }
            DeliveryOutcome::GiveUp => {
                params.push(&attempt.lease_token);
                "UPDATE webhook_outbox SET status = 'failed', last_error = $7, \
                 lease_until = NULL, lease_token = NULL, updated_at = $8 \
                 WHERE id = $2 AND status = 'pending' AND lease_token = $9"
            }
        };
        let sql = format!(
            "WITH log AS (INSERT INTO webhook_attempts ({ATTEMPT_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING 1) {update}"
        );
        self.client().await?.execute(&sql, &params).await?;
        Ok(())
    }

    async fn list_deliveries(
        &self,
        organization_id: &str,
        action_id: Option<&str>,
        page: &Page,
    ) -> Result<Vec<Delivery>> {
        let c = self.client().await?;
        let (created, cid): (Option<Millis>, Option<String>) = cursor_key(
            &c,
            "SELECT created_at, id FROM webhook_outbox WHERE id = $1 AND organization_id = $2 \
             AND ($3::text IS NULL OR action_id = $3)",
            page.after.as_deref(),
            &[&organization_id, &action_id],
        )
        .await?;
        let sql = format!(
            "SELECT {DELIVERY_COLS} FROM webhook_outbox WHERE organization_id = $1 \
             AND ($2::text IS NULL OR action_id = $2) \
             AND ($3::bigint IS NULL OR (created_at, id) < ($3, $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        );
        let found = c
            .query(
                &sql,
                &[
                    &organization_id,
                    &action_id,
                    &created,
                    &cid,
                    &sql_limit(page),
                ],
            )
            .await?;
        found.iter().map(|r| self.delivery(r)).collect()
    }

    async fn list_delivery_attempts(
        &self,
        organization_id: &str,
        delivery_ids: &[String],
    ) -> Result<Vec<DeliveryAttempt>> {
        let sql = format!(
            "SELECT {ATTEMPT_COLS} FROM webhook_attempts WHERE delivery_id IN ( \
                 SELECT id FROM webhook_outbox WHERE organization_id = $1 AND id = ANY($2)) \
             ORDER BY delivery_id, started_at, id"
        );
        let ids = delivery_ids.to_vec();
        rows(
            &self
                .client()
                .await?
                .query(&sql, &[&organization_id, &ids])
                .await?,
            attempt_row,
        )
    }

    async fn retry_delivery(
        &self,
        organization_id: &str,
        id: &str,
        now: Millis,
    ) -> Result<Delivery> {
        let sql = format!(
            "UPDATE webhook_outbox SET status = 'pending', attempts = 0, next_attempt_at = $3, \
             lease_until = NULL, lease_token = NULL, updated_at = $3 \
             WHERE organization_id = $1 AND id = $2 AND status = 'failed' \
             RETURNING {DELIVERY_COLS}"
        );
        let c = self.client().await?;
        if let Some(row) = c.query_opt(&sql, &[&organization_id, &id, &now]).await? {
            return self.delivery(&row);
        }
        let sql = format!(
            "SELECT {DELIVERY_COLS} FROM webhook_outbox WHERE organization_id = $1 AND id = $2"
        );
        // Only its status is needed: the payload stays sealed.
        let (existing, _) = one(
            c.query_opt(&sql, &[&organization_id, &id]).await?,
            delivery_row,
        )?;
        Err(Error::Conflict(format!(
            "delivery {id} is {}, not failed",
            existing.status.as_str()
        )))
    }

    async fn upsert_document(
        &self,
        kind: DocumentKind,
        conversation_id: &str,
        content: &str,
    ) -> Result<Document> {
        let kind = document_kind(kind);
        let content = self.keys.seal_document(conversation_id, kind, content);
        let sql = format!(
            "INSERT INTO documents (id, conversation_id, kind, content, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (conversation_id, kind) DO UPDATE \
             SET content = excluded.content, updated_at = excluded.updated_at \
             RETURNING {DOC_COLS}"
        );
        let row = self
            .client()
            .await?
            .query_one(
                &sql,
                &[&new_id(), &conversation_id, &kind, &content, &now_millis()],
            )
            .await?;
        Ok(self.keys.open_document(kind, document_row(&row)?)?)
    }

    async fn get_document(
        &self,
        kind: DocumentKind,
        conversation_id: &str,
    ) -> Result<Option<Document>> {
        let sql =
            format!("SELECT {DOC_COLS} FROM documents WHERE conversation_id = $1 AND kind = $2");
        self.client()
            .await?
            .query_opt(&sql, &[&conversation_id, &document_kind(kind)])
            .await?
            .map(|r| {
                Ok(self
                    .keys
                    .open_document(document_kind(kind), document_row(&r)?)?)
            })
            .transpose()
    }

    async fn first_patient_document(
        &self,
        kind: DocumentKind,
        organization_id: &str,
        patient_id: &str,
    ) -> Result<Option<Document>> {
        let sql = format!(
            "SELECT {D_DOC_COLS} FROM documents d JOIN conversations c ON c.id = d.conversation_id \
             WHERE c.organization_id = $1 AND c.patient_id = $2 AND d.kind = $3 \
             ORDER BY d.created_at, d.id LIMIT 1"
        );
        self.client()
            .await?
            .query_opt(&sql, &[&organization_id, &patient_id, &document_kind(kind)])
            .await?
            .map(|r| {
                Ok(self
                    .keys
                    .open_document(document_kind(kind), document_row(&r)?)?)
            })
            .transpose()
    }
    async fn create_command(
        &self,
        organization_id: &str,
        definition: CommandDefinition,
    ) -> Result<ClinicCommand> {
        let command = definition.into_row(organization_id);
        let d = &command.definition;
        let (kind, action_type) = d.produces.to_columns();
        let sql = format!(
            "INSERT INTO clinic_commands ({COMMAND_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        self.client()
            .await?
            .execute(
                &sql,
                &[
                    &command.id,
                    &command.organization_id,
                    &d.name,
                    &d.description,
                    &json_text(&serde_json::json!(d.examples)),
                    &json_text(&d.parameters),
                    &kind,
                    &action_type,
                    &command.created_at,
                    &command.updated_at,
                ],
            )
            .await?;
        Ok(command)
    }

    async fn list_commands(&self, organization_id: &str) -> Result<Vec<ClinicCommand>> {
        let sql = format!(
            "SELECT {COMMAND_COLS} FROM clinic_commands WHERE organization_id = $1 \
             ORDER BY name, id"
        );
        rows(
            &self
                .client()
                .await?
                .query(&sql, &[&organization_id])
                .await?,
            command_row,
        )
    }

    async fn get_command(&self, organization_id: &str, id: &str) -> Result<ClinicCommand> {
        let sql = format!(
            "SELECT {COMMAND_COLS} FROM clinic_commands WHERE organization_id = $1 AND id = $2"
        );
        one(
            self.client()
                .await?
                .query_opt(&sql, &[&organization_id, &id])
                .await?,
            command_row,
        )
    }

    async fn update_command(
        &self,
        organization_id: &str,
        id: &str,
        definition: CommandDefinition,
    ) -> Result<ClinicCommand> {
        let (kind, action_type) = definition.produces.to_columns();
        let sql = format!(
            "UPDATE clinic_commands SET name = $3, description = $4, examples = $5, \
             parameters = $6, produces_kind = $7, action_type = $8, updated_at = $9 \
             WHERE organization_id = $1 AND id = $2 RETURNING {COMMAND_COLS}"
        );
        one(
            self.client()
                .await?
                .query_opt(
                    &sql,
                    &[
                        &organization_id,
                        &id,
                        &definition.name,
                        &definition.description,
                        &json_text(&serde_json::json!(definition.examples)),
                        &json_text(&definition.parameters),
                        &kind,
                        &action_type,
                        &now_millis(),
                    ],
                )
                .await?,
            command_row,
        )
    }

    async fn delete_command(&self, organization_id: &str, id: &str) -> Result<()> {
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM clinic_commands WHERE organization_id = $1 AND id = $2",
                &[&organization_id, &id],
            )
            .await?;
        if n == 0 {
            return Err(Error::NotFound);
        }
        Ok(())
    }

    async fn user_settings(&self, user_id: &str) -> Result<UserSettings> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT builtin_commands, wake_phrase FROM user_settings WHERE user_id = $1",
                &[&user_id],
            )
            .await?;
        match row {
            Some(r) => Ok(UserSettings {
                builtin_commands: r.try_get(0)?,
                wake_phrase: r.try_get(1)?,
            }),
            None => Ok(UserSettings::default()),
        }
    }

    async fn set_user_settings(&self, user_id: &str, settings: &UserSettings) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO user_settings (user_id, builtin_commands, wake_phrase, updated_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_id) DO UPDATE SET builtin_commands = excluded.builtin_commands, \
                 wake_phrase = excluded.wake_phrase, updated_at = excluded.updated_at",
                &[
                    &user_id,
                    &settings.builtin_commands,
                    &settings.wake_phrase,
                    &now_millis(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn delete_conversations_inactive_since(
        &self,
        cutoff: Millis,
        keep: &[String],
        limit: u32,
    ) -> Result<Vec<String>> {
        // Foreign keys cascade the delete to messages, actions (and their outbox rows and
        // attempts) and documents. SKIP LOCKED: a conversation another transaction is writing
        // to is busy, not expired; the next sweep sees it again.
        let rows = self
            .client()
            .await?
            .query(
                "DELETE FROM conversations WHERE id IN ( \
                     SELECT c.id FROM conversations c \
                     WHERE GREATEST(c.updated_at, COALESCE(c.end_time, 0), COALESCE( \
                           (SELECT MAX(m.timestamp) FROM messages m \
                            WHERE m.conversation_id = c.id), 0)) < $1 \
                       AND NOT (c.id = ANY($2)) \
                     ORDER BY c.id LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING id",
                &[&cutoff, &keep, &i64::from(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(Error::from))
            .collect()
    }

    async fn delete_patient(
        &self,
        organization_id: &str,
        patient_id: &str,
        audit: NewAuditEntry,
    ) -> Result<Vec<String>> {
        // One transaction, on a connection of its own: the shared one is pipelined, so a
        // transaction there would swallow other callers' statements. The patient row is locked
        // by a statement of its own first; under READ COMMITTED every later statement takes a
        // fresh snapshot, so the check below sees each conversation committed while we waited
        // for the lock (its insert held a KEY SHARE lock on the patient row). A conversation
        // inserted after we hold the lock waits for it, then fails its foreign key check
        // (`NotFound`) once the patient is gone. One statement reading conversations in its
        // start snapshot missed the first kind and cascaded a live conversation away unnamed.
        let mut client = self.dial().await?;
        let tx = client.transaction().await?;
        tx.query_opt(
            "SELECT 1 FROM patients WHERE organization_id = $1 AND id = $2 FOR UPDATE",
            &[&organization_id, &patient_id],
        )
        .await?
        .ok_or(Error::NotFound)?;
        let conversations = tx
            .query(
                "SELECT id, status = 'active' FROM conversations WHERE patient_id = $1 \
                 ORDER BY id",
                &[&patient_id],
            )
            .await?;
        let mut ids = Vec::with_capacity(conversations.len());
        for row in &conversations {
            if row.try_get::<_, bool>(1)? {
                return Err(Error::Conflict(format!(
                    "patient {patient_id} has an active conversation"
                )));
            }
            ids.push(row.try_get(0)?);
        }
        // Foreign keys cascade to the conversations and everything keyed by them.
        tx.execute("DELETE FROM patients WHERE id = $1", &[&patient_id])
            .await?;
        insert_audit(&tx, &audit).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn reencrypt_batch(&self, limit: u32) -> Result<Reencrypted> {
        let c = self.client().await?;
        let keys = self.keys.keyring();
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
                 WHERE {column} IS NOT NULL AND NOT starts_with({column}, $1) LIMIT $2"
            );
            let update =
                format!("UPDATE {table} SET {column} = $1 WHERE id = $2 AND {column} = $3");
            let todo = c.query(&select, &[&prefix, &left]).await?;
            left -= i64::try_from(todo.len()).unwrap_or(i64::MAX);
            found |= !todo.is_empty();
            for row in todo {
                let (id, row_key, stored): (String, String, String) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                let Some(sealed) = keys.reseal(&stored, &col.associated_data(&row_key))? else {
                    continue;
                };
                let n = c.execute(&update, &[&sealed, &id, &stored]).await?;
                changed.record(&stored, n);
            }
        }
        if !found {
            // Nothing is left outside the active key, so nothing is plaintext; versions that
            // write plaintext cannot open this schema, so none can be added.
            c.execute(
                "UPDATE encryption_state SET sealed_only = TRUE WHERE id = 1",
                &[],
            )
            .await?;
            changed.done = true;
        }
        Ok(changed)
    }

    async fn record_audit(&self, entry: NewAuditEntry) -> Result<()> {
        insert_audit(&*self.client().await?, &entry).await
    }

    async fn search_audit(
        &self,
        organization_id: &str,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEntry>> {
        let c = self.client().await?;
        let (at, cid): (Option<Millis>, Option<String>) = cursor_key(
            &c,
            "SELECT at, id FROM audit_log WHERE id = $1 AND organization_id = $2",
            query.before.as_deref(),
            &[&organization_id],
        )
        .await?;
        let limit = sql_limit(&Page {
            after: None,
            limit: query.limit,
        });
        let sql = format!(
            "SELECT {AUDIT_COLS} FROM audit_log WHERE organization_id = $1 \
             AND ($2::text IS NULL OR user_id = $2) \
             AND ($3::text IS NULL OR action = $3) \
             AND ($4::text IS NULL OR entity_id = $4 \
                  OR record_ids::jsonb @> jsonb_build_array($4::text)) \
             AND ($5::bigint IS NULL OR (at, id) < ($5, $6)) \
             ORDER BY at DESC, id DESC LIMIT $7"
        );
        let found = c
            .query(
                &sql,
                &[
                    &organization_id,
                    &query.user_id,
                    &query.action,
                    &query.record_id,
                    &at,
                    &cid,
                    &limit,
                ],
            )
            .await?;
        rows(&found, audit_row)
    }
}
