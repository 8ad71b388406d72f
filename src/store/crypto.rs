//! Encryption at rest of the free-text columns (transcripts, translations, summaries, action
//! data and the webhook events that embed it): the [`Keyring`] of data keys and the self-describing envelope stored in place of the
//! plaintext.
//!
//! Design decision: values are sealed in the store layer, in the existing text columns, as
//! `tdm1:<key id>:<base64(nonce | ciphertext)>` (XChaCha20-Poly1305, a random 192-bit nonce per
//! value). The envelope names its key, so several keys can be live at once and rotation is a
//! background re-encryption rather than a flag day; the associated data names the table, column
//! and row ([`SealedColumn::associated_data`]), so a ciphertext copied into another row or
//! column fails authentication instead of showing the wrong text. A value without the prefix is
//! plaintext written before encryption and reads as it is, unless the store refuses unsealed
//! values ([`Sealing`]): then it is a forgery by someone who can write to the database.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::{Action, Delivery, Document, Message};

/// Marks a sealed value; the version lets a later format coexist with this one.
pub const ENVELOPE_PREFIX: &str = "tdm1:";
const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;
const MAX_KEY_ID_LEN: usize = 32;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a data key list could not be used or a stored value could not be opened. Never carries
/// key material or plaintext, so it may be logged.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The value names a key that is not in the configured list (it was removed too early, or
    /// the database came from another install).
    #[error("stored value is encrypted with data key {0:?}, which is not configured")]
    UnknownKey(String),
    /// The key is known but the value does not authenticate: it was altered, or copied from
    /// another row or column.
    #[error("stored value does not authenticate with data key {0:?} (altered or moved)")]
    Tampered(String),
    #[error("stored value has a malformed envelope: {0}")]
    Malformed(&'static str),
    /// The value has no envelope while the store refuses unsealed values: written into the
    /// database around Tandem, since Tandem itself seals every value it writes.
    #[error("stored value is not sealed, and unsealed values are refused (TANDEM_REQUIRE_SEALED)")]
    Unsealed,
    /// The configured key list is unusable; reported at startup.
    #[error("invalid data key list: {0}")]
    InvalidKeys(String),
    #[error("cannot read or create the data key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct DataKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// The configured data keys: the first encrypts, all decrypt.
pub struct Keyring {
    /// Never empty (checked by every constructor); index 0 is the active key.
    keys: Vec<DataKey>,
}

/// Shows key ids only, so a keyring can sit in logged structs.
impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// Parses `id:base64-32-bytes[,id:base64-32-bytes...]` (whitespace and newlines around
    /// entries are ignored, so a key file may hold one entry per line).
    ///
    /// # Errors
    /// [`Error::InvalidKeys`] for an empty list, a bad id (1 to 32 ASCII letters, digits or
    /// `-`), a key that is not 32 bytes of standard base64, or a repeated id. The message
    /// names the entry by position and id, never the key.
    pub fn parse(list: &str) -> Result<Keyring, Error> {
        let mut keys: Vec<DataKey> = Vec::new();
        for (n, entry) in list
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let invalid = |why: &str| Error::InvalidKeys(format!("entry {}: {why}", n + 1));
            let (id, key) = entry
                .split_once(':')
                .ok_or_else(|| invalid("expected <id>:<base64 key>"))?;
            check_key_id(id).map_err(|why| invalid(&why))?;
            let bytes = B64
                .decode(key.trim())
                .map_err(|_| invalid(&format!("key {id:?} is not standard base64")))?;
            if bytes.len() != KEY_LEN {
                return Err(invalid(&format!(
                    "key {id:?} is {} bytes, expected {KEY_LEN}",
                    bytes.len()
                )));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(invalid(&format!("key id {id:?} appears twice")));
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
                .map_err(|_| invalid("unusable key length"))?;
            keys.push(DataKey {
                id: id.to_owned(),
                cipher,
            });
        }
        if keys.is_empty() {
            return Err(Error::InvalidKeys("no keys given".into()));
        }
        Ok(Keyring { keys })
    }

    /// A new random key as a one-entry list (`<id>:<base64>`), the format [`Keyring::parse`]
    /// and the key file take.
    ///
    /// # Errors
    /// [`Error::InvalidKeys`] if `id` is not a valid key id.
    pub fn generate_entry(id: &str) -> Result<String, Error> {
        check_key_id(id).map_err(Error::InvalidKeys)?;
        let key: [u8; KEY_LEN] = rand::random();
        Ok(format!("{id}:{}", B64.encode(key)))
    }

    /// The key file kept next to a SQLite database when no keys are configured: read it, or
    /// create it (owner-only) with one random key. Returns the keyring and whether the file
    /// was created by this call, so the caller can tell the admin to back it up.
    ///
    /// # Errors
    /// [`Error::KeyFile`] if the file cannot be read or created; [`Error::InvalidKeys`] if it
    /// holds no valid list.
    pub fn load_or_create(path: &Path) -> Result<(Keyring, bool), Error> {
        let io_err = |source| Error::KeyFile {
            path: path.to_owned(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => return Ok((Keyring::parse(&text)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        // Random, so a key generated after the file was lost never reuses the lost key's id
        // (its values then fail as `UnknownKey`, which says what happened).
        let id = format!("local-{:08x}", rand::random::<u32>());
        let entry = Keyring::generate_entry(&id)?;
        match write_private(path, &format!("{entry}\n")) {
            Ok(()) => Ok((Keyring::parse(&entry)?, true)),
            // Another process created it first: use theirs, never overwrite a key.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path).map_err(io_err)?;
                Ok((Keyring::parse(&text)?, false))
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// The id new values are sealed with.
    pub fn active_id(&self) -> &str {
        &self.keys[0].id
    }

    /// All configured ids, the active one first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// The prefix every value sealed with the active key starts with; values without it are
    /// what rotation has left to do.
    pub fn active_prefix(&self) -> String {
        format!("{ENVELOPE_PREFIX}{}:", self.active_id())
    }

    /// Seals `plaintext` with the active key, bound to `associated_data`.
    pub fn seal(&self, plaintext: &str, associated_data: &str) -> String {
        let key = &self.keys[0];
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = XNonce::from(nonce_bytes);
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: associated_data.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 fails only on inputs over 256 GiB, beyond any column");
        let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(&nonce_bytes);
        blob.extend_from_slice(&ciphertext);
        format!("{ENVELOPE_PREFIX}{}:{}", key.id, B64.encode(blob))
    }

    /// The plaintext of a stored value: opened if it is an envelope, as it is otherwise (rows
    /// written before encryption).
    ///
    /// # Errors
    /// [`Error::UnknownKey`], [`Error::Tampered`] or [`Error::Malformed`]; never a wrong text.
    pub fn open(&self, stored: &str, associated_data: &str) -> Result<String, Error> {
        let Some(rest) = stored.strip_prefix(ENVELOPE_PREFIX) else {
            return Ok(stored.to_owned());
        };
        let (id, blob) = rest
            .split_once(':')
            .ok_or(Error::Malformed("no key id separator"))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| Error::UnknownKey(id.to_owned()))?;
        let blob = B64
            .decode(blob)
            .map_err(|_| Error::Malformed("body is not base64"))?;
        if blob.len() < NONCE_LEN {
            return Err(Error::Malformed("shorter than its nonce"));
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| Error::Malformed("shorter than its nonce"))?;
        let plaintext = key
            .cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: associated_data.as_bytes(),
                },
            )
            .map_err(|_| Error::Tampered(id.to_owned()))?;
        String::from_utf8(plaintext).map_err(|_| Error::Malformed("plaintext is not UTF-8"))
    }

    /// The value re-sealed with the active key, or `None` when it already is sealed with it.
    /// Plaintext from before encryption is sealed too, so rotation also encrypts old rows.
    ///
    /// # Errors
    /// As [`Keyring::open`].
    pub fn reseal(&self, stored: &str, associated_data: &str) -> Result<Option<String>, Error> {
        if stored.starts_with(&self.active_prefix()) {
            return Ok(None);
        }
        let plaintext = self.open(stored, associated_data)?;
        Ok(Some(self.seal(&plaintext, associated_data)))
    }
}

fn check_key_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key id {id:?} must be 1 to {MAX_KEY_ID_LEN} ASCII letters, digits or '-'"
        ))
    }
}

/// Where the SQLite database's generated key lives: `<database file>.key`.
pub fn key_file_for(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

/// Creates a file only its owner can read, failing if it already exists (two processes
/// starting at once must not overwrite each other's key or secret).
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut file = opts.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// A column whose values are sealed, and how its rows are named in the associated data.
/// Both backends seal, open and rotate through this one list, so they cannot disagree on what
/// is encrypted or how a value is bound to its row.
#[derive(Debug, Clone, Copy)]
pub(super) struct SealedColumn {
    pub table: &'static str,
    pub column: &'static str,
    /// SQL expression (valid in both dialects) of the row key bound into the associated data.
    /// Documents are keyed by conversation and kind, not id: an upsert replaces the content
    /// but keeps the first row's id.
    pub row_key_sql: &'static str,
}

impl SealedColumn {
    /// `tdm1|<table>.<column>|<row key>`.
    pub fn associated_data(&self, row_key: &str) -> String {
        format!("tdm1|{}.{}|{row_key}", self.table, self.column)
    }
}

pub(super) const MESSAGE_ORIGINAL: SealedColumn = SealedColumn {
    table: "messages",
    column: "original_text",
    row_key_sql: "id",
};
pub(super) const MESSAGE_TRANSLATED: SealedColumn = SealedColumn {
    table: "messages",
    column: "translated_text",
    row_key_sql: "id",
};
pub(super) const DOCUMENT_CONTENT: SealedColumn = SealedColumn {
    table: "documents",
    column: "content",
    row_key_sql: "conversation_id || '|' || kind",
};
pub(super) const ACTION_DATA: SealedColumn = SealedColumn {
    table: "actions",
    column: "data",
    row_key_sql: "id",
};
/// A webhook event body embeds its action, so it holds the same text as [`ACTION_DATA`].
pub(super) const DELIVERY_PAYLOAD: SealedColumn = SealedColumn {
    table: "webhook_outbox",
    column: "payload",
    row_key_sql: "id",
};

/// Every sealed column, in the order rotation walks them.
pub(super) const SEALED_COLUMNS: [SealedColumn; 5] = [
    MESSAGE_ORIGINAL,
    MESSAGE_TRANSLATED,
    DOCUMENT_CONTENT,
    ACTION_DATA,
    DELIVERY_PAYLOAD,
];

/// The data keys as a store applies them to its sealed columns, and whether a value without an
/// envelope is refused. Both backends seal and open their rows through this, so they bind the
/// same fields the same way and refuse the same values.
#[derive(Debug, Clone)]
pub(super) struct Sealing {
    keys: Arc<Keyring>,
    /// Set once every stored value is known to be sealed (the database's marker, or
    /// `TANDEM_REQUIRE_SEALED`): from then on a plaintext value can only be a forgery.
    require_sealed: bool,
}

impl Sealing {
    pub fn new(keys: Arc<Keyring>, require_sealed: bool) -> Sealing {
        Sealing {
            keys,
            require_sealed,
        }
    }

    /// The keys themselves, for rotation (which seals plaintext rather than refusing it).
    pub fn keyring(&self) -> &Keyring {
        &self.keys
    }

    pub fn requires_sealed(&self) -> bool {
        self.require_sealed
    }

    /// Applies `TANDEM_REQUIRE_SEALED` over the database's marker, which `new` was given;
    /// `None` keeps the marker. Says so when the two disagree, since either way one of them is
    /// not doing what the operator may think.
    pub fn apply_setting(&mut self, setting: Option<bool>) {
        let marker = self.require_sealed;
        match setting {
            Some(true) if !marker => tracing::warn!(
                "TANDEM_REQUIRE_SEALED is on but the database is not marked as fully sealed: \
                 values still stored as plaintext will fail to read until \
                 `tandem rotate-data-key` seals them"
            ),
            Some(false) if marker => tracing::warn!(
                "TANDEM_REQUIRE_SEALED=false: the database is marked as fully sealed, yet a \
                 plaintext value written into it directly will be read and shown"
            ),
            _ => {}
        }
        self.require_sealed = setting.unwrap_or(marker);
    }

    /// [`Keyring::open`] for a value of `column`, refusing plaintext when required. The
    /// refusal is logged here, where table, column and row are known; the value never is.
    fn open_column(
        &self,
        column: SealedColumn,
        row_key: &str,
        stored: &str,
    ) -> Result<String, Error> {
        if self.require_sealed && !stored.starts_with(ENVELOPE_PREFIX) {
            tracing::error!(
                table = column.table,
                column = column.column,
                row = row_key,
                "refusing an unsealed stored value: every value Tandem writes is sealed, so \
                 this one was written into the database directly"
            );
            return Err(Error::Unsealed);
        }
        self.keys.open(stored, &column.associated_data(row_key))
    }

    /// The message's `original_text` and `translated_text` as stored.
    pub(super) fn seal_message(&self, m: &Message) -> (String, Option<String>) {
        (
            self.keys
                .seal(&m.original_text, &MESSAGE_ORIGINAL.associated_data(&m.id)),
            m.translated_text.as_deref().map(|t| {
                self.keys
                    .seal(t, &MESSAGE_TRANSLATED.associated_data(&m.id))
            }),
        )
    }

    /// A message as read, with its text columns opened.
    pub(super) fn open_message(&self, mut m: Message) -> Result<Message, Error> {
        m.original_text = self.open_column(MESSAGE_ORIGINAL, &m.id, &m.original_text)?;
        if let Some(t) = &m.translated_text {
            m.translated_text = Some(self.open_column(MESSAGE_TRANSLATED, &m.id, t)?);
        }
        Ok(m)
    }

    /// A document's content as stored; `kind` is the stored kind name.
    pub(super) fn seal_document(&self, conversation_id: &str, kind: &str, content: &str) -> String {
        self.keys.seal(
            content,
            &DOCUMENT_CONTENT.associated_data(&document_key(conversation_id, kind)),
        )
    }

    /// A document as read, with its content opened.
    pub(super) fn open_document(&self, kind: &str, mut d: Document) -> Result<Document, Error> {
        d.content = self.open_column(
            DOCUMENT_CONTENT,
            &document_key(&d.conversation_id, kind),
            &d.content,
        )?;
        Ok(d)
    }

    /// An action's `data` as stored: its JSON text, sealed.
    pub(super) fn seal_action_data(&self, action_id: &str, data: &serde_json::Value) -> String {
        self.keys
            .seal(&data.to_string(), &ACTION_DATA.associated_data(action_id))
    }

    /// An action as read: `stored_data` is its `data` column, opened and parsed into the row.
    pub(super) fn open_action(
        &self,
        mut action: Action,
        stored_data: &str,
    ) -> Result<Action, super::Error> {
        action.data = self.open_json(ACTION_DATA, &action.id, stored_data)?;
        Ok(action)
    }

    /// A webhook delivery's `payload` as stored: its JSON text, sealed.
    pub(super) fn seal_delivery_payload(
        &self,
        delivery_id: &str,
        payload: &serde_json::Value,
    ) -> String {
        self.keys.seal(
            &payload.to_string(),
            &DELIVERY_PAYLOAD.associated_data(delivery_id),
        )
    }

    /// A delivery as read: `stored_payload` is its `payload` column, opened and parsed.
    pub(super) fn open_delivery(
        &self,
        mut delivery: Delivery,
        stored_payload: &str,
    ) -> Result<Delivery, super::Error> {
        delivery.payload = self.open_json(DELIVERY_PAYLOAD, &delivery.id, stored_payload)?;
        Ok(delivery)
    }

    fn open_json(
        &self,
        column: SealedColumn,
        row_key: &str,
        stored: &str,
    ) -> Result<serde_json::Value, super::Error> {
        let text = self.open_column(column, row_key, stored)?;
        serde_json::from_str(&text).map_err(|e| {
            super::Error::Backend(format!(
                "{}.{} of {row_key}: {e}",
                column.table, column.column
            ))
        })
    }
}

/// Matches [`DOCUMENT_CONTENT`]'s `row_key_sql`.
fn document_key(conversation_id: &str, kind: &str) -> String {
    format!("{conversation_id}|{kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[&str]) -> Keyring {
        let list: Vec<String> = ids
            .iter()
            .map(|id| Keyring::generate_entry(id).unwrap())
            .collect();
        Keyring::parse(&list.join(",")).unwrap()
    }

    #[test]
    fn sealed_values_round_trip_and_hide_the_plaintext() {
        let keys = ring(&["a"]);
        let sealed = keys.seal("chest pain since Tuesday", "tdm1|messages.original_text|m1");
        assert!(sealed.starts_with("tdm1:a:"), "{sealed}");
        assert!(!sealed.contains("chest"));
        // A fresh nonce per value: the same text never seals to the same envelope.
        assert_ne!(
            sealed,
            keys.seal("chest pain since Tuesday", "tdm1|messages.original_text|m1")
        );
        assert_eq!(
            keys.open(&sealed, "tdm1|messages.original_text|m1")
                .unwrap(),
            "chest pain since Tuesday"
        );
        assert_eq!(keys.open("plain old row", "x").unwrap(), "plain old row");
    }

    #[test]
    fn moved_altered_or_unknown_values_are_errors() {
        let keys = ring(&["a"]);
        let sealed = keys.seal("text", "tdm1|messages.original_text|m1");
        assert!(matches!(
            keys.open(&sealed, "tdm1|messages.original_text|m2"),
            Err(Error::Tampered(id)) if id == "a"
        ));
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            keys.open(&altered, "tdm1|messages.original_text|m1"),
            Err(Error::Tampered(_))
        ));
        assert!(matches!(
            ring(&["b"]).open(&sealed, "tdm1|messages.original_text|m1"),
            Err(Error::UnknownKey(id)) if id == "a"
        ));
        assert!(matches!(keys.open("tdm1:a", "x"), Err(Error::Malformed(_))));
        assert!(matches!(
            keys.open("tdm1:a:!!!", "x"),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn key_lists_are_validated_without_echoing_keys() {
        let entry = Keyring::generate_entry("k2").unwrap();
        let (_, secret) = entry.split_once(':').unwrap();
        for bad in [
            "",
            "k1",
            "k_1:AAAA",
            "k1:not base64!",
            "k1:AAAA",
            &format!("{entry},{entry}"),
        ] {
            match Keyring::parse(bad) {
                Err(Error::InvalidKeys(msg)) => assert!(!msg.contains(secret), "{msg}"),
                other => panic!("{bad:?} must be invalid, got {other:?}"),
            }
        }
        let keys = Keyring::parse(&format!(
            "{entry},\n {}",
            Keyring::generate_entry("k1").unwrap()
        ))
        .unwrap();
        assert_eq!(keys.active_id(), "k2");
        assert_eq!(keys.key_ids().collect::<Vec<_>>(), ["k2", "k1"]);
        assert!(!format!("{keys:?}").contains(secret));
    }

    #[test]
    fn reseal_moves_old_and_plaintext_values_to_the_active_key() {
        let a = Keyring::generate_entry("a").unwrap();
        let b = Keyring::generate_entry("b").unwrap();
        let old = Keyring::parse(&a).unwrap();
        let new = Keyring::parse(&format!("{b},{a}")).unwrap();
        let sealed = old.seal("note", "ad");
        let moved = new.reseal(&sealed, "ad").unwrap().unwrap();
        assert!(moved.starts_with("tdm1:b:"));
        assert_eq!(new.reseal(&moved, "ad").unwrap(), None, "idempotent");
        assert_eq!(
            Keyring::parse(&b).unwrap().open(&moved, "ad").unwrap(),
            "note"
        );
        let from_plain = new.reseal("legacy", "ad").unwrap().unwrap();
        assert_eq!(new.open(&from_plain, "ad").unwrap(), "legacy");
    }

    /// Log lines written while `f` runs on this thread.
    fn logged(f: impl FnOnce()) -> String {
        let logs = crate::testing::logs::CapturedLogs::default();
        tracing::subscriber::with_default(logs.subscriber(tracing::Level::TRACE), f);
        logs.text()
    }

    #[test]
    fn unsealed_values_are_refused_when_required_and_logged_without_the_value() {
        let keys = Arc::new(ring(&["a"]));
        let forged = "forged chest-pain text";
        let lenient = Sealing::new(Arc::clone(&keys), false);
        assert_eq!(
            lenient.open_column(MESSAGE_ORIGINAL, "m1", forged).unwrap(),
            forged
        );
        let mut strict = lenient.clone();
        strict.apply_setting(Some(true));
        let sealed = keys.seal("real", &MESSAGE_ORIGINAL.associated_data("m1"));
        let logs = logged(|| {
            assert_eq!(
                strict.open_column(MESSAGE_ORIGINAL, "m1", &sealed).unwrap(),
                "real"
            );
            assert!(matches!(
                strict.open_column(MESSAGE_ORIGINAL, "m1", forged),
                Err(Error::Unsealed)
            ));
        });
        assert!(logs.contains("ERROR"), "{logs}");
        for field in [
            "table=\"messages\"",
            "column=\"original_text\"",
            "row=\"m1\"",
        ] {
            assert!(logs.contains(field), "{field} missing from {logs}");
        }
        assert!(!logs.contains("chest-pain"), "the value was logged: {logs}");
        // The setting wins over the marker both ways; `None` keeps the marker.
        let mut kept = strict.clone();
        kept.apply_setting(None);
        assert!(kept.requires_sealed());
        kept.apply_setting(Some(false));
        assert!(!kept.requires_sealed());
    }

    #[test]
    fn key_file_is_created_once_owner_only_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file_for(&dir.path().join("tandem.db"));
        assert!(path.ends_with("tandem.db.key"));
        let (first, created) = Keyring::load_or_create(&path).unwrap();
        assert!(created);
        let sealed = first.seal("x", "ad");
        let (again, created) = Keyring::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.open(&sealed, "ad").unwrap(), "x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
