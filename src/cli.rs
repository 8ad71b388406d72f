//! The administrative subcommands (`user add|list|passwd`, `token`, `rotate-data-key`):
//! account and key management from the shell, for clinics that close open registration.
//!
//! Design decision: these functions take the store and the password as values, so they are
//! tested without a terminal; only [`read_password`] touches stdin.

use std::io::{BufRead as _, IsTerminal as _};

use crate::audio::transcoder::{Stats, Transcoder};
use crate::audio::{self, sniff, Pcm16Frame, OUTPUT_RATE};
use crate::auth::{self, Authenticator};
use crate::store::{self, NewUser, Reencrypted, Store, User, UserRole};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Auth(#[from] auth::Error),
    #[error("{field} must be {min} to {max} characters")]
    Length {
        field: &'static str,
        min: usize,
        max: usize,
    },
    #[error("user {0:?} does not exist")]
    NoSuchUser(String),
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("{0}")]
    Input(String),
    #[error("cannot read {path}: {source}")]
    ReadChunk {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("declared format {mime:?}: {source}")]
    Format { mime: String, source: audio::Error },
}

/// Reads a new password: from a hidden prompt (asked twice) on a terminal, else the first line
/// of standard input, so scripts can pipe it in.
///
/// # Errors
/// Unreadable input, a mismatch between the two prompts, or an empty password.
pub fn read_password() -> Result<String, Error> {
    let io = |e: std::io::Error| Error::Input(format!("cannot read the password: {e}"));
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(io)?;
        let again = rpassword::prompt_password("Password (again): ").map_err(io)?;
        if first != again {
            return Err(Error::Input("the passwords do not match".into()));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(io)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    check_len("password", &password, auth::PASSWORD_LEN)?;
    Ok(password)
}

fn check_len(
    field: &'static str,
    value: &str,
    range: std::ops::RangeInclusive<usize>,
) -> Result<(), Error> {
    if range.contains(&value.chars().count()) {
        Ok(())
    } else {
        Err(Error::Length {
            field,
            min: *range.start(),
            max: *range.end(),
        })
    }
}

/// Creates an account in the named organization (created when missing) or in the default one.
///
/// # Errors
/// The username is taken, or the store fails.
pub async fn user_add(
    store: &dyn Store,
    authenticator: &Authenticator,
    username: &str,
    organization: Option<&str>,
    language: &str,
    role: UserRole,
    password: &str,
) -> Result<User, Error> {
    check_len("username", username, auth::USERNAME_LEN)?;
    let organization = match organization {
        Some(name) => match store.organization_by_name(name).await {
            Ok(org) => org,
            Err(store::Error::NotFound) => store.create_organization(name).await?,
            Err(e) => return Err(e.into()),
        },
        None => store.default_organization().await?,
    };
    let password_hash = authenticator.hash_password(password).await?;
    store
        .create_user(NewUser {
            organization_id: organization.id,
            username: username.to_owned(),
            password_hash,
            preferred_language: language.to_owned(),
            role,
        })
        .await
        .map_err(|e| match e {
            store::Error::Conflict(_) => Error::UserExists(username.to_owned()),
            other => other.into(),
        })
}

/// Replaces an account's password.
///
/// # Errors
/// No such user, or the store fails.
pub async fn user_passwd(
    store: &dyn Store,
    authenticator: &Authenticator,
    username: &str,
    password: &str,
) -> Result<(), Error> {
    let user = find_user(store, username).await?;
    let hash = authenticator.hash_password(password).await?;
    store.set_password_hash(&user.id, &hash).await?;
    Ok(())
}

/// One line per account: username, role, organization id, language.
///
/// # Errors
/// The store fails.
pub async fn user_list(store: &dyn Store) -> Result<Vec<String>, Error> {
    Ok(store
        .list_users()
        .await?
        .into_iter()
        .map(|u| {
            format!(
                "{}\t{}\t{}\t{}",
                u.username,
                u.role.as_str(),
                u.organization_id,
                u.preferred_language
            )
        })
        .collect())
}

/// Mints an access token for `username`, as login would.
///
/// # Errors
/// No such user, or the store fails.
pub async fn token(
    store: &dyn Store,
    authenticator: &Authenticator,
    username: &str,
) -> Result<String, Error> {
    let user = find_user(store, username).await?;
    Ok(authenticator.issue_access(&user))
}

async fn find_user(store: &dyn Store, username: &str) -> Result<User, Error> {
    store.user_by_username(username).await.map_err(|e| match e {
        store::Error::NotFound => Error::NoSuchUser(username.to_owned()),
        other => other.into(),
    })
}

/// Re-seals every stored value that is not under the active data key, `batch_size` values per
/// store call, and returns how many changed and how many of those were plaintext. `progress`
/// gets the running total after each batch, so a long rotation shows it is moving.
///
/// A run that completes leaves no plaintext value, and the store marks the database as fully
/// sealed (see [`Store::reencrypt_batch`]); the plaintext count tells the operator what that
/// run had still found.
///
/// # Errors
/// A zero batch size, or the store fails (a value whose key is not configured stops the run
/// with [`store::Error::Crypto`]; what was re-sealed before stays re-sealed).
pub async fn rotate_data_key(
    store: &dyn Store,
    batch_size: u32,
    mut progress: impl FnMut(u64),
) -> Result<Reencrypted, Error> {
    if batch_size == 0 {
        return Err(Error::Input("--batch-size must be positive".into()));
    }
    let mut total = Reencrypted::default();
    loop {
        // Every value a batch finds leaves the set still to do (re-sealed by it, or by a
        // writer that won the compare-and-set), so this ends.
        let batch = store.reencrypt_batch(batch_size).await?;
        total.values += batch.values;
        total.plaintext += batch.plaintext;
        if batch.done {
            total.done = true;
            return Ok(total);
        }
        progress(total.values);
    }
}

/// What decoding a set of chunk files produced.
#[derive(Debug)]
pub struct DecodeReport {
    /// PCM16 mono at [`OUTPUT_RATE`].
    pub samples: Vec<i16>,
    /// Errors by chunk index (`None` for the end-of-input flush), in order.
    pub errors: Vec<(Option<usize>, audio::Error)>,
    pub stats: Stats,
}

impl DecodeReport {
    /// Output duration in milliseconds.
    pub fn duration_ms(&self) -> f64 {
        self.samples.len() as f64 * 1000.0 / f64::from(OUTPUT_RATE)
    }
}

/// Decodes chunk files exactly as the audio socket would receive them, one chunk per file.
/// Decode errors are collected, not fatal: the point is to see all of them.
///
/// # Errors
/// A file cannot be read, or the declared MIME type is not understood.
pub fn decode_files(
    chunks: &[std::path::PathBuf],
    mime: Option<&str>,
) -> Result<DecodeReport, Error> {
    let declared = mime
        .map(|m| {
            sniff::parse_mime(m, None).map_err(|source| Error::Format {
                mime: m.to_owned(),
                source,
            })
        })
        .transpose()?;
    let mut transcoder = Transcoder::new(declared);
    let mut frames: Vec<Pcm16Frame> = Vec::new();
    let mut errors = Vec::new();
    for (i, path) in chunks.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|source| Error::ReadChunk {
            path: path.clone(),
            source,
        })?;
        if let Err(e) = transcoder.push(&bytes, &mut frames) {
            errors.push((Some(i), e));
        }
    }
    if let Err(e) = transcoder.finish(&mut frames) {
        errors.push((None, e));
    }
    Ok(DecodeReport {
        samples: frames.into_iter().flat_map(|f| f.samples).collect(),
        errors,
        stats: transcoder.stats(),
    })
}

/// Writes PCM16 mono 24 kHz as a WAV file (44-byte RIFF header).
///
/// # Errors
/// The writer fails, or the audio is longer than a WAV file can describe.
pub fn write_wav(mut w: impl std::io::Write, samples: &[i16]) -> std::io::Result<()> {
    let data_len = samples.len() as u64 * 2;
    if data_len > u64::from(audio::wav::MAX_DATA_LEN) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "audio too long for WAV",
        ));
    }
    w.write_all(&audio::wav::header(data_len))?;
    w.write_all(&pcm_bytes(samples))
}

/// PCM16 little-endian bytes.
pub fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<std::path::PathBuf> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name);
        (0..)
            .map(|i| dir.join(format!("chunk-{i:03}.bin")))
            .take_while(|p| p.exists())
            .collect()
    }

    #[test]
    fn decode_reports_duration_of_real_chunks() {
        let chunks = fixture("chrome-webm-opus-250ms");
        assert_eq!(chunks.len(), 20);
        let report = decode_files(&chunks, None).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        // 141 120 samples: the libopus reference decode's length (fixtures/README.md).
        assert_eq!(report.samples.len(), 141_120);
        assert!((report.duration_ms() - 5880.0).abs() < 0.1);
        let mut wav = Vec::new();
        write_wav(&mut wav, &report.samples).unwrap();
        assert_eq!(wav.len(), 44 + 2 * 141_120);
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(
            u32::from_le_bytes([wav[24], wav[25], wav[26], wav[27]]),
            24_000
        );
    }

    #[test]
    fn decode_collects_errors_per_chunk() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bad");
        let report = decode_files(&[dir.join("random-4k.bin")], None).unwrap();
        assert!(report.samples.is_empty());
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(report.errors[0].0, Some(0));
        assert!(matches!(
            decode_files(&[dir.join("random-4k.bin")], Some("video/x-nope")),
            Err(Error::Format { .. })
        ));
    }
}
