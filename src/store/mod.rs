//! Persistence: one [`Store`] trait, two backends (SQLite always, Postgres behind the
//! `postgres` feature), and the contract suite both must pass.
//!
//! Design decision: every method is scoped by what the caller is allowed to see. Methods that
//! read or change clinical data take the caller's `organization_id`, so a handler cannot forget
//! the tenant check: another organization's row is simply [`Error::NotFound`].
//!
//! Timestamps are UTC milliseconds since the Unix epoch ([`Millis`]) in both dialects; the HTTP
//! layer renders them as ISO-8601 instants with a `Z` suffix.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

mod columns;
pub mod contract;
pub mod crypto;
mod outbox;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;

pub use crypto::Keyring;
pub use outbox::{
    ClaimedDelivery, Delivery, DeliveryAttempt, DeliveryOutcome, DeliveryStatus, NewDelivery,
    NewDeliveryAttempt, Webhook,
};

/// UTC milliseconds since the Unix epoch.
pub type Millis = i64;

/// Now, as [`Millis`].
pub fn now_millis() -> Millis {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// A new opaque row id. UUIDv7 so ids sort by creation time (used as a pagination cursor).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Whether a database setting names a Postgres server rather than a SQLite file.
pub fn is_postgres_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// The database setting as it may be logged: a Postgres URL's password is replaced.
pub fn display_database(database: &str) -> String {
    if !is_postgres_url(database) {
        return database.to_owned();
    }
    match url::Url::parse(database) {
        Ok(mut url) => {
            if url.password().is_some() {
                // Only fails for URLs that cannot have credentials, which this one has.
                let _ = url.set_password(Some("REDACTED"));
            }
            url.to_string()
        }
        Err(_) => "<unparsable postgres URL>".to_owned(),
    }
}

/// Opens the store a database setting names: a `postgres://` URL (with the `postgres` feature)
/// or a SQLite file path. Migrations are applied on open.
///
/// `require_sealed` is `TANDEM_REQUIRE_SEALED`: `None` follows the database's marker
/// ([`Store::reencrypt_batch`]).
///
/// `keys` are the configured data keys. Without them SQLite uses (or creates) the key file
/// next to the database ([`crypto::key_file_for`]); Postgres refuses, because every instance
/// sharing the database must share the keys, and a key generated on one would make the others'
/// rows unreadable.
///
/// # Errors
/// The database cannot be opened or migrated, Postgres is asked for without the feature or
/// without keys, or the SQLite key file cannot be read or created.
pub async fn open(
    database: &str,
    keys: Option<std::sync::Arc<Keyring>>,
    require_sealed: Option<bool>,
) -> Result<std::sync::Arc<dyn Store>> {
    if is_postgres_url(database) {
        let Some(keys) = keys else {
            return Err(Error::Crypto(crypto::Error::InvalidKeys(
                "a postgres:// database needs TANDEM_DATA_KEYS (or TANDEM_DATA_KEYS_FILE): \
                 every instance sharing the database must use the same data keys"
                    .into(),
            )));
        };
        #[cfg(feature = "postgres")]
        return Ok(std::sync::Arc::new(
            postgres::PostgresStore::connect(database, keys)
                .await?
                .require_sealed(require_sealed),
        ));
        #[cfg(not(feature = "postgres"))]
        {
            drop((keys, require_sealed));
            return Err(Error::Unavailable(
                "a postgres:// database needs a build with `--features postgres`".into(),
            ));
        }
    }
    let path = std::path::PathBuf::from(database);
    let store = tokio::task::spawn_blocking(move || match keys {
        Some(keys) => sqlite::SqliteStore::open_with_keys(&path, sqlite::BUSY_TIMEOUT, keys),
        None => sqlite::SqliteStore::open(&path),
    })
    .await
    .map_err(|e| Error::Backend(format!("opening the SQLite store panicked: {e}")))??;
    Ok(std::sync::Arc::new(store.require_sealed(require_sealed)))
}

/// What one [`Store::reencrypt_batch`] call (or a whole rotation) changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reencrypted {
    /// Values re-sealed with the active key, `plaintext` included.
    pub values: u64,
    /// Of those, values that were plaintext from before encryption: while any are found,
    /// unsealed values cannot be refused yet.
    pub plaintext: u64,
    /// No value was left outside the active key, and the database is now marked as fully
    /// sealed. A call may change nothing without being done: its compare-and-set lost to
    /// writers, and values it did not get to remain.
    pub done: bool,
}

impl Reencrypted {
    /// Counts `replaced` values (0 when a writer changed the row first) that were stored as
    /// `was`.
    fn record(&mut self, was: &str, replaced: u64) {
        self.values += replaced;
        if !was.starts_with(crypto::ENVELOPE_PREFIX) {
            self.plaintext += replaced;
        }
    }
}

/// Store failures.
///
/// `NotFound` and `Conflict` are expected outcomes the caller maps to 404/409; `Unavailable`
/// is transient (busy database, lost connection) and worth a retry; `Backend` is a bug or a
/// corrupt database and is logged, never shown to clients.
///
/// A write that references a row that does not exist (a foreign-key violation, e.g. a message
/// for an unknown conversation) is `NotFound`: the thing the caller pointed at is not there.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not found")]
    NotFound,
    /// A uniqueness constraint was violated; the string names the constraint for logs.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Backend(String),
    /// A sealed value cannot be opened (its key is not configured, or it was altered), or the
    /// data keys are unusable. Not transient: an admin must restore the key or the row.
    #[error("encryption at rest: {0}")]
    Crypto(#[from] crypto::Error),
}

impl Error {
    /// Stable snake_case code for HTTP bodies and WebSocket `error` events.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Unavailable(_) => "store_unavailable",
            Error::Backend(_) | Error::Crypto(_) => "internal",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub created_at: Millis,
}

/// What a user may do beyond seeing their organization's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserRole {
    Clinician,
    /// May create users in their organization over REST.
    Admin,
}

impl UserRole {
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Clinician => "clinician",
            UserRole::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "clinician" => Some(UserRole::Clinician),
            "admin" => Some(UserRole::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub organization_id: String,
    pub username: String,
    /// PHC string (argon2id). Never serialized.
    pub password_hash: String,
    /// ISO 639-1 code, e.g. `en`.
    pub preferred_language: String,
    pub role: UserRole,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub organization_id: String,
    pub username: String,
    pub password_hash: String,
    pub preferred_language: String,
    pub role: UserRole,
}

/// A stored refresh token. Only its SHA-256 hash is kept; `family_id` ties rotated tokens
/// together so reuse of an already-rotated token can revoke the whole family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub token_hash: String,
    pub user_id: String,
    pub family_id: String,
    pub expires_at: Millis,
    /// Set when the token was exchanged for a new one (rotation) or revoked.
    pub used_at: Option<Millis>,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Patient {
    pub id: String,
    pub organization_id: String,
    pub first_name: String,
    pub last_name: String,
    /// `YYYY-MM-DD`.
    pub date_of_birth: String,
    pub preferred_language: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone)]
pub struct NewPatient {
    pub organization_id: String,
    pub first_name: String,
    pub last_name: String,
    pub date_of_birth: String,
    pub preferred_language: String,
}

/// Partial update: `None` leaves a field unchanged.
#[derive(Debug, Clone, Default)]
pub struct PatientUpdate {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub date_of_birth: Option<String>,
    pub preferred_language: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationStatus {
    Active,
    Ended,
    Summarized,
    EndedError,
}

impl ConversationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationStatus::Active => "active",
            ConversationStatus::Ended => "ended",
            ConversationStatus::Summarized => "summarized",
            ConversationStatus::EndedError => "ended_error",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(ConversationStatus::Active),
            "ended" => Some(ConversationStatus::Ended),
            "summarized" => Some(ConversationStatus::Summarized),
            "ended_error" => Some(ConversationStatus::EndedError),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub id: String,
    pub organization_id: String,
    /// The clinician who started it.
    pub user_id: String,
    pub patient_id: String,
    pub clinician_language: String,
    pub patient_language: String,
    pub status: ConversationStatus,
    pub start_time: Millis,
    pub end_time: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A conversation joined with its patient, the shape every listing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationWithPatient {
    pub conversation: Conversation,
    pub patient: Patient,
}

#[derive(Debug, Clone)]
pub struct NewConversation {
    pub organization_id: String,
    pub user_id: String,
    pub patient_id: String,
    pub clinician_language: String,
    pub patient_language: String,
}

/// Who produced a message row. Wire names are the original backend's `senderType` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SenderType {
    /// The clinician (the original called them `user`).
    #[serde(rename = "user")]
    Clinician,
    #[serde(rename = "patient")]
    Patient,
    /// A translation of another row; `original_message_id` points at it.
    #[serde(rename = "translation")]
    Translation,
}

impl SenderType {
    pub fn as_str(self) -> &'static str {
        match self {
            SenderType::Clinician => "user",
            SenderType::Patient => "patient",
            SenderType::Translation => "translation",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(SenderType::Clinician),
            "patient" => Some(SenderType::Patient),
            "translation" => Some(SenderType::Translation),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub timestamp: Millis,
    pub sender_type: SenderType,
    /// The text shown: the transcript, or for a translation row the translated text.
    pub original_text: String,
    pub translated_text: Option<String>,
    /// For a translation row, the *target* language (the UI places bubbles by it).
    pub language: String,
    pub is_final: bool,
    pub original_message_id: Option<String>,
    /// Realtime STT `item_id`; unique per (conversation, sender kind) so a replayed
    /// transcript is never stored twice.
    pub stt_item_id: Option<String>,
    /// How the speaker was decided (`language`, `client`, `llm`, `fallback`...).
    pub speaker_source: Option<String>,
    pub speaker_confidence: Option<f64>,
    /// Per-stage timings in milliseconds, as a JSON object (`{"transcript_ms":…}`).
    pub timings: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conversation_id: String,
    pub sender_type: SenderType,
    pub original_text: String,
    pub translated_text: Option<String>,
    pub language: String,
    pub is_final: bool,
    pub original_message_id: Option<String>,
    pub stt_item_id: Option<String>,
    pub speaker_source: Option<String>,
    pub speaker_confidence: Option<f64>,
    pub timings: Option<serde_json::Value>,
}

/// Outcome of [`Store::insert_message`]: a replay of an already-stored STT item returns the
/// existing row instead of a second one.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted<T> {
    New(T),
    Existing(T),
}

impl<T> Inserted<T> {
    pub fn into_inner(self) -> T {
        match self {
            Inserted::New(t) | Inserted::Existing(t) => t,
        }
    }
}

/// Keyset pagination in the listing's own order (each list method documents it).
///
/// Keyset rather than offset so a page boundary never duplicates or skips rows while new rows
/// arrive.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Return rows strictly after this row id (exclusive cursor); `None` starts at the beginning.
    /// A cursor that is not a row of the listing (unknown, or another conversation's or
    /// organization's) is [`Error::NotFound`] rather than an empty page.
    pub after: Option<String>,
    /// At most this many rows; `0` means no limit (so `Page::default()` is "everything").
    /// Callers taking a limit from clients clamp it first.
    pub limit: u32,
}

/// A schema migration recorded in `schema_migrations`, as reported by the CLI's `migrate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedMigration {
    /// Sequence number from the file name (`0001_init.sql` is 1).
    pub version: i64,
    pub applied_at: Millis,
}

/// An action the clinician's voice commands (or later, REST) produce. `kind` is open-ended
/// (`note`, `followup`, `prescription`, `lab_order`, clinic-defined types) and `data` holds the
/// type's fields in the original AggregatedAction `data` shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub id: String,
    pub conversation_id: String,
    pub kind: String,
    pub status: String,
    pub data: serde_json::Value,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone)]
pub struct NewAction {
    pub conversation_id: String,
    pub kind: String,
    pub status: String,
    pub data: serde_json::Value,
}

/// A reviewed change of an action (edit, confirm, cancel), computed by the caller from the row
/// it read.
#[derive(Debug, Clone)]
pub struct ActionChange {
    /// The row's `updated_at` as the caller read it. The change applies only if no other change
    /// landed since (compare-and-set); otherwise the store answers [`Error::Conflict`].
    pub expected_updated_at: Millis,
    pub status: String,
    pub data: serde_json::Value,
    /// Must be greater than `expected_updated_at` (see [`next_updated_at`]), so that every
    /// change moves the compare-and-set token.
    pub updated_at: Millis,
    /// A webhook event queued in the same transaction, if the organization has a webhook
    /// (otherwise nothing is queued and the change still applies).
    pub delivery: Option<NewDelivery>,
}

/// The `updated_at` of a change to a row last changed at `previous`: now, but strictly later
/// than `previous` even when two changes land in the same millisecond.
pub fn next_updated_at(previous: Millis) -> Millis {
    now_millis().max(previous.saturating_add(1))
}

/// A text document attached to a conversation: its summary or its (mock) medical history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub id: String,
    pub conversation_id: String,
    pub content: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    Summary,
    MedicalHistory,
}

/// One audit-log row: who did what to which record, when, and from where. Never holds the
/// record's content: ids and action names only, so the trail itself is not a second copy of
/// the patient data it protects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: String,
    pub organization_id: String,
    pub user_id: Option<String>,
    /// A change's verb (`create`, `update`, `delete`, `confirm`...) or a read of patient data
    /// as `<record>.<what>.read` (`patient.read`, `conversation.messages.read`,
    /// `conversation.export`...; the full list is [`crate::audit::PhiRead`]).
    pub action: String,
    /// `conversation`, `patient`, `action`, `user`, ...
    pub entity_type: String,
    /// The record acted on; `*` for a listing, whose rows are in `record_ids`.
    pub entity_id: String,
    /// The other records whose data the response carried: the patient of a conversation
    /// read, the rows of a listing. A search by record id matches these as well as
    /// `entity_id`, so "who saw this patient" finds conversation reads and listings too.
    pub record_ids: Vec<String>,
    /// The peer address of the request or socket (proxies are not trusted), when known.
    pub remote_addr: Option<String>,
    pub at: Millis,
}

#[derive(Debug, Clone, Default)]
pub struct NewAuditEntry {
    pub organization_id: String,
    pub user_id: Option<String>,
    pub action: String,
    pub entity_type: String,
    pub entity_id: String,
    pub record_ids: Vec<String>,
    pub remote_addr: Option<String>,
}

/// A search of an organization's audit log: every filter that is set must match (exact,
/// case-sensitive), newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub user_id: Option<String>,
    /// Matches `entity_id` or any of `record_ids`.
    pub record_id: Option<String>,
    pub action: Option<String>,
    /// Keyset cursor: only entries older than this entry (by `at`, then id). An id that is not
    /// an entry of the organization is [`Error::NotFound`], as for [`Page::after`].
    pub before: Option<String>,
    /// At most this many rows; `0` means no limit.
    pub limit: u32,
}

/// What executing a clinic-defined voice command produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandProduces {
    /// An action of this (snake_case) type, `pending_review`, whose `data` is the arguments.
    Action { action_type: String },
    /// A call to the organization's webhook. Until the outbox is wired, it is recorded as an
    /// action of type = the command's name, `pending_review` (see docs/api.md).
    Webhook,
}

impl CommandProduces {
    /// The stored `(produces_kind, action_type)` columns.
    pub(crate) fn to_columns(&self) -> (&'static str, Option<&str>) {
        match self {
            CommandProduces::Action { action_type } => ("action", Some(action_type)),
            CommandProduces::Webhook => ("webhook", None),
        }
    }

    /// Reads the stored columns back; `None` for a combination the schema's CHECK forbids.
    pub(crate) fn from_columns(kind: &str, action_type: Option<String>) -> Option<Self> {
        match (kind, action_type) {
            ("action", Some(action_type)) => Some(CommandProduces::Action { action_type }),
            ("webhook", None) => Some(CommandProduces::Webhook),
            _ => None,
        }
    }
}

/// A clinic-defined voice command as its organization's admin wrote it (validated by
/// [`crate::commands::clinic`] before it reaches the store).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandDefinition {
    /// Tool name; unique per organization, case-insensitively.
    pub name: String,
    pub description: String,
    /// Phrases the clinician says for it; added to the tool description for the model.
    pub examples: Vec<String>,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
    pub produces: CommandProduces,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClinicCommand {
    pub id: String,
    pub organization_id: String,
    pub definition: CommandDefinition,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A clinician's voice-command switches; a user without a stored row has the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSettings {
    /// Whether the built-in command tools are offered (clinic commands always are).
    pub builtin_commands: bool,
    /// Normalized (lowercase, single spaces); `None` means every utterance may be a command.
    pub wake_phrase: Option<String>,
}

impl Default for UserSettings {
    fn default() -> Self {
        UserSettings {
            builtin_commands: true,
            wake_phrase: None,
        }
    }
}

/// New rows get their id and timestamps here, once for both backends.
impl NewUser {
    pub(crate) fn into_row(self) -> User {
        let now = now_millis();
        User {
            id: new_id(),
            organization_id: self.organization_id,
            username: self.username,
            password_hash: self.password_hash,
            preferred_language: self.preferred_language,
            role: self.role,
            created_at: now,
            updated_at: now,
        }
    }
}

impl NewConversation {
    /// A conversation starts active, now.
    pub(crate) fn into_row(self) -> Conversation {
        let now = now_millis();
        Conversation {
            id: new_id(),
            organization_id: self.organization_id,
            user_id: self.user_id,
            patient_id: self.patient_id,
            clinician_language: self.clinician_language,
            patient_language: self.patient_language,
            status: ConversationStatus::Active,
            start_time: now,
            end_time: None,
            created_at: now,
            updated_at: now,
        }
    }
}

impl NewMessage {
    /// A final utterance with no STT item or speaker provenance: how the store contract and
    /// integration tests seed a conversation without speaking into it.
    pub fn utterance(
        conversation_id: &str,
        sender_type: SenderType,
        language: &str,
        text: impl Into<String>,
    ) -> NewMessage {
        NewMessage {
            conversation_id: conversation_id.to_owned(),
            sender_type,
            original_text: text.into(),
            translated_text: None,
            language: language.to_owned(),
            is_final: true,
            original_message_id: None,
            stt_item_id: None,
            speaker_source: None,
            speaker_confidence: None,
            timings: None,
        }
    }

    pub(crate) fn into_row(self) -> Message {
        Message {
            id: new_id(),
            conversation_id: self.conversation_id,
            timestamp: now_millis(),
            sender_type: self.sender_type,
            original_text: self.original_text,
            translated_text: self.translated_text,
            language: self.language,
            is_final: self.is_final,
            original_message_id: self.original_message_id,
            stt_item_id: self.stt_item_id,
            speaker_source: self.speaker_source,
            speaker_confidence: self.speaker_confidence,
            timings: self.timings,
        }
    }
}

impl CommandDefinition {
    pub(crate) fn into_row(self, organization_id: &str) -> ClinicCommand {
        let now = now_millis();
        ClinicCommand {
            id: new_id(),
            organization_id: organization_id.to_owned(),
            definition: self,
            created_at: now,
            updated_at: now,
        }
    }
}

impl NewAction {
    pub(crate) fn into_row(self) -> Action {
        let now = now_millis();
        Action {
            id: new_id(),
            conversation_id: self.conversation_id,
            kind: self.kind,
            status: self.status,
            data: self.data,
            created_at: now,
            updated_at: now,
        }
    }
}

/// The persistence seam. Both backends implement it with identical observable behaviour,
/// which [`contract::run`] checks.
///
/// # For implementations
/// - Methods taking `organization_id` must return [`Error::NotFound`] for rows of another
///   organization, never the row.
/// - Unique violations map to [`Error::Conflict`]; transient failures (locked database, lost
///   connection) to [`Error::Unavailable`] after the backend's own short retries.
/// - Lists are ordered as documented per method; ties broken by id.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip to the database, for `/readyz`.
    async fn ping(&self) -> Result<()>;
    /// The schema migrations applied, oldest first (they are applied when the store opens).
    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>>;

    // --- organizations and users ---
    async fn create_organization(&self, name: &str) -> Result<Organization>;
    /// The organization open registration puts new users in, created on first use.
    async fn default_organization(&self) -> Result<Organization>;
    async fn get_organization(&self, id: &str) -> Result<Organization>;
    /// The oldest organization with exactly this name (names are not unique; the CLI uses
    /// this to put accounts into an existing clinic).
    async fn organization_by_name(&self, name: &str) -> Result<Organization>;
    /// `Conflict` if the username is taken (usernames are unique across the install).
    async fn create_user(&self, user: NewUser) -> Result<User>;
    async fn user_by_id(&self, id: &str) -> Result<User>;
    async fn user_by_username(&self, username: &str) -> Result<User>;
    /// All users, by username.
    async fn list_users(&self) -> Result<Vec<User>>;
    async fn count_users(&self) -> Result<u64>;
    async fn set_password_hash(&self, user_id: &str, password_hash: &str) -> Result<()>;

    // --- refresh tokens ---
    async fn insert_refresh_token(&self, token: RefreshToken) -> Result<()>;
    /// Atomically marks the token used and returns it as it was *before* this call, so the
    /// caller sees `used_at: Some(_)` when the token had already been rotated (reuse).
    async fn consume_refresh_token(&self, token_hash: &str) -> Result<RefreshToken>;
    /// Marks every token of the family used and expires it now (reuse detected, or logout).
    /// The expiry is what tells a concurrent refresh that its family was revoked rather than
    /// merely rotated (see `auth::Authenticator::refresh`).
    async fn revoke_refresh_family(&self, family_id: &str) -> Result<()>;

    // --- patients ---
    /// Finds a patient of the organization by exact first name, last name and date of birth,
    /// or creates one. Returns the patient and whether it was created.
    async fn find_or_create_patient(&self, patient: NewPatient) -> Result<(Patient, bool)>;
    async fn get_patient(&self, organization_id: &str, id: &str) -> Result<Patient>;
    /// Ordered by last name, first name, id (byte order, identical in both backends); `query`
    /// filters on a case-insensitive substring of either name. Case folding is ASCII-only in
    /// both backends (SQLite's `lower()`), so `josé` finds `José` but not `JOSÉ`.
    async fn list_patients(
        &self,
        organization_id: &str,
        query: Option<&str>,
        page: &Page,
    ) -> Result<Vec<Patient>>;
    async fn update_patient(
        &self,
        organization_id: &str,
        id: &str,
        update: PatientUpdate,
    ) -> Result<Patient>;

    // --- conversations ---
    async fn create_conversation(&self, conversation: NewConversation) -> Result<Conversation>;
    async fn get_conversation(
        &self,
        organization_id: &str,
        id: &str,
    ) -> Result<ConversationWithPatient>;
    /// Newest `start_time` first.
    async fn list_conversations(
        &self,
        organization_id: &str,
        page: &Page,
    ) -> Result<Vec<ConversationWithPatient>>;
    /// Conversations of every organization still `ended` (their final summary neither
    /// written nor failed: cut off by a shutdown, or being written right now) that ended at or
    /// after `ended_since`; oldest `end_time` first, ties by id; at most `limit`.
    async fn list_unsummarized_conversations(
        &self,
        ended_since: Millis,
        limit: u32,
    ) -> Result<Vec<Conversation>>;
    /// Sets the status (and `end_time` when given).
    async fn set_conversation_status(
        &self,
        organization_id: &str,
        id: &str,
        status: ConversationStatus,
        end_time: Option<Millis>,
    ) -> Result<Conversation>;
    async fn set_patient_language(
        &self,
        organization_id: &str,
        id: &str,
        language: &str,
    ) -> Result<Conversation>;

    // --- messages ---
    /// Stores a message. When `stt_item_id` is set and a row with the same conversation,
    /// item id and sender kind (original vs translation) exists, returns it as `Existing`.
    async fn insert_message(&self, message: NewMessage) -> Result<Inserted<Message>>;
    /// Replaces a message's per-stage timings (known only after its processing finished).
    async fn set_message_timings(&self, id: &str, timings: &serde_json::Value) -> Result<()>;
    /// Ordered by (timestamp, id) ascending.
    async fn list_messages(&self, conversation_id: &str, page: &Page) -> Result<Vec<Message>>;

    // --- actions ---
    async fn insert_action(&self, action: NewAction) -> Result<Action>;
    /// Newest first.
    async fn list_actions(&self, conversation_id: &str) -> Result<Vec<Action>>;

    // --- action review (REST edit, confirm, cancel) ---
    /// An action of a conversation of the organization.
    async fn get_action(&self, organization_id: &str, id: &str) -> Result<Action>;
    /// Applies `change` if the row still has `change.expected_updated_at` (else `Conflict`),
    /// and in the same transaction queues `change.delivery` when the organization has a
    /// webhook. Returns the new row and the queued delivery, if any. `Conflict` also when the
    /// delivery's idempotency key was already queued (the event happened before).
    async fn update_action(
        &self,
        organization_id: &str,
        id: &str,
        change: ActionChange,
    ) -> Result<(Action, Option<Delivery>)>;

    // --- webhook and outbox ---
    /// Creates or replaces the organization's webhook.
    async fn put_webhook(&self, organization_id: &str, url: &str, secret: &str) -> Result<Webhook>;
    async fn get_webhook(&self, organization_id: &str) -> Result<Webhook>;
    /// Removes the webhook and fails its pending deliveries (there is nowhere left to send
    /// them; an admin can retry them after configuring a new one).
    async fn delete_webhook(&self, organization_id: &str) -> Result<()>;
    /// Leases up to `limit` due deliveries (pending, `next_attempt_at <= now`, no live lease)
    /// whose organization has a webhook, until `lease_until`, counting the attempt. Oldest due
    /// first. Concurrent callers never get the same row while its lease lives.
    async fn claim_deliveries(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>>;
    /// Logs a finished attempt and applies its outcome to the outbox row. `Delivered` applies
    /// to any row not yet delivered, whatever its lease or status (the receiver has the event,
    /// so it must never be queued again, not even by an admin retry of a row failed
    /// meanwhile); `Retry` and `GiveUp` only to a pending row whose lease token is the
    /// caller's (a newer claim wins). The log row is written either way.
    async fn record_delivery_attempt(&self, attempt: NewDeliveryAttempt) -> Result<()>;
    /// The organization's deliveries, newest first (by creation, then id); `action_id`
    /// narrows to one action's.
    async fn list_deliveries(
        &self,
        organization_id: &str,
        action_id: Option<&str>,
        page: &Page,
    ) -> Result<Vec<Delivery>>;
    /// The logged attempts of these deliveries (ids of other organizations are ignored),
    /// by delivery then start time.
    async fn list_delivery_attempts(
        &self,
        organization_id: &str,
        delivery_ids: &[String],
    ) -> Result<Vec<DeliveryAttempt>>;
    /// Makes a `failed` delivery pending again, due at `now`, with its attempt count reset.
    /// `Conflict` if it is not failed.
    async fn retry_delivery(
        &self,
        organization_id: &str,
        id: &str,
        now: Millis,
    ) -> Result<Delivery>;

    // --- documents (summary, medical history) ---
    /// Inserts or replaces the conversation's document of that kind.
    async fn upsert_document(
        &self,
        kind: DocumentKind,
        conversation_id: &str,
        content: &str,
    ) -> Result<Document>;
    async fn get_document(
        &self,
        kind: DocumentKind,
        conversation_id: &str,
    ) -> Result<Option<Document>>;
    /// The oldest document of that kind among all conversations of the patient in the
    /// organization (a medical history is generated once per patient, then copied to each new
    /// conversation); `None` when no conversation of the patient has one.
    async fn first_patient_document(
        &self,
        kind: DocumentKind,
        organization_id: &str,
        patient_id: &str,
    ) -> Result<Option<Document>>;

    // --- clinic commands and clinician settings ---
    /// `Conflict` if the organization has a command of that name (case-insensitively).
    async fn create_command(
        &self,
        organization_id: &str,
        definition: CommandDefinition,
    ) -> Result<ClinicCommand>;
    /// The organization's commands, by name.
    async fn list_commands(&self, organization_id: &str) -> Result<Vec<ClinicCommand>>;
    async fn get_command(&self, organization_id: &str, id: &str) -> Result<ClinicCommand>;
    /// Replaces the definition; `Conflict` when renamed onto another command's name.
    async fn update_command(
        &self,
        organization_id: &str,
        id: &str,
        definition: CommandDefinition,
    ) -> Result<ClinicCommand>;
    async fn delete_command(&self, organization_id: &str, id: &str) -> Result<()>;
    /// The user's settings, or the defaults when none were stored.
    async fn user_settings(&self, user_id: &str) -> Result<UserSettings>;
    /// Stores the user's settings whole; `NotFound` for an unknown user.
    async fn set_user_settings(&self, user_id: &str, settings: &UserSettings) -> Result<()>;

    // --- data protection: retention and erasure ---
    /// Hard-deletes up to `limit` conversations (of every organization) whose last activity
    /// — the latest of their end, their last change and their newest message — is before
    /// `cutoff`, except those in `keep` (live in this process), with every row keyed by them:
    /// messages, actions and their webhook deliveries and attempts, documents. A conversation
    /// never ended counts by its last activity too, so abandoned ones do not live forever.
    /// Returns the deleted ids, so the caller can remove what lives outside the database
    /// (stored audio). Audit entries are kept: they hold ids, never clinical text.
    async fn delete_conversations_inactive_since(
        &self,
        cutoff: Millis,
        keep: &[String],
        limit: u32,
    ) -> Result<Vec<String>>;
    /// Hard-deletes a patient of the organization with everything keyed by it (its
    /// conversations and all their rows, as above), and records `audit` in the same
    /// transaction. Returns the deleted conversation ids. `Conflict` (nothing deleted) while
    /// one of its conversations is still `active`; `NotFound` for an unknown patient or one of
    /// another organization.
    async fn delete_patient(
        &self,
        organization_id: &str,
        patient_id: &str,
        audit: NewAuditEntry,
    ) -> Result<Vec<String>>;
    // --- encryption at rest ---
    /// Re-seals up to `limit` stored values of the sealed columns
    /// ([`crypto::SEALED_COLUMNS`]) that are not under the active data key: values of older
    /// keys, and plaintext written before encryption. Returns how many it changed, how many of
    /// those were plaintext, and whether it found none left to do ([`Reencrypted::done`]).
    /// Safe while serving and safe to re-run: each value
    /// is replaced only if it is still the one read (compare-and-set), and writers seal with
    /// the active key, so a value changed meanwhile no longer needs it.
    ///
    /// # Errors
    /// [`Error::Crypto`] when a value cannot be opened (its key was removed, or it was
    /// altered); the values re-sealed before it stay re-sealed.
    ///
    /// A call that finds nothing left to do (`done`) records in the database that every value is
    /// sealed (`encryption_state.sealed_only`), so stores opened from then on refuse unsealed
    /// values unless `TANDEM_REQUIRE_SEALED` says otherwise.
    async fn reencrypt_batch(&self, limit: u32) -> Result<Reencrypted>;

    // --- audit ---
    /// One insert, so that auditing a read costs a single round trip.
    async fn record_audit(&self, entry: NewAuditEntry) -> Result<()>;
    /// The organization's entries matching `query`, newest first (by `at`, then id).
    async fn search_audit(
        &self,
        organization_id: &str,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEntry>>;
    /// The latest `limit` entries: [`Store::search_audit`] without filters.
    async fn list_audit(&self, organization_id: &str, limit: u32) -> Result<Vec<AuditEntry>> {
        let query = AuditQuery {
            limit,
            ..AuditQuery::default()
        };
        self.search_audit(organization_id, &query).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_passwords_are_never_displayed() {
        assert_eq!(
            super::display_database("postgres://tandem:s3cret@db:5432/tandem"),
            "postgres://tandem:REDACTED@db:5432/tandem"
        );
        assert_eq!(super::display_database("./tandem.db"), "./tandem.db");
        assert_eq!(
            super::display_database("postgres://db/tandem"),
            "postgres://db/tandem"
        );
    }
}
