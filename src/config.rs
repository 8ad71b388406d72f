//! Configuration: command-line flags, `TANDEM_*` environment variables and an optional TOML
//! file, resolved once at startup into typed values.
//!
//! Design decision: every option is an `Option` in one struct that is both the clap argument
//! set and the TOML schema, so a flag or variable wins over the file and the file wins over
//! the built-in default, without a second copy of the option list. Secrets are not flags at all
//! (they would show in `ps` and shell history): they come from the environment or the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

/// Configuration errors, reported at startup before anything is served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid value for {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("cannot create or read the JWT secret file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TANDEM_DATA_KEYS or its file is unusable; the message never contains key material.
    #[error("data keys: {0}")]
    DataKeys(#[from] crate::store::crypto::Error),
}

const SECRETS_HELP: &str = "\
Secrets are never taken from flags:
  TANDEM_JWT_SECRET       HS256 signing secret (at least 32 bytes). Unset: a random secret is
                          generated on first start and kept in <database dir>/tandem.jwt-secret.
  TANDEM_OPENAI_API_KEY   API key for the OpenAI-compatible provider (OPENAI_API_KEY also works).
  TANDEM_DATA_KEYS        Keys that encrypt stored text: `id:base64-32-bytes`, comma-separated; the
                          first encrypts, all decrypt (see docs/data-protection.md). Unset with
                          SQLite: generated once into <database>.key. Required with Postgres
                          (or --data-keys-file).
All may instead be set as jwt_secret / openai_api_key / data_keys in the --config TOML file.";

/// `tandem`: real-time medical interpretation server.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about, after_help = SECRETS_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub options: Options,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve,
    /// Apply database migrations and print the schema versions, then exit.
    Migrate,
    /// Manage clinician accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Print an access token for a user, for scripts and curl.
    Token {
        /// The account to mint the token for.
        username: String,
    },
    /// Re-encrypt every stored text value with the active (first) data key, in batches; also
    /// encrypts rows written before encryption and reports how many it found. Safe to re-run
    /// and to run while serving: run it after adding a new key first in TANDEM_DATA_KEYS and
    /// restarting every instance, then remove the old key (docs/data-protection.md). A
    /// finished run marks the database as fully sealed (see --require-sealed).
    RotateDataKey {
        /// Values re-encrypted per database round trip.
        #[arg(long, default_value_t = 500)]
        batch_size: u32,
    },
    /// Decode browser audio files as if they were consecutive socket chunks (a whole
    /// recording is one chunk) to PCM16 mono 24 kHz, and report duration and errors. Needs no
    /// database: this is how to debug what a browser sends.
    Decode {
        /// Declared MIME type (e.g. `audio/webm;codecs=opus`, `audio/pcm;rate=48000`); needed
        /// for raw PCM, otherwise the format is detected from the first bytes.
        #[arg(long)]
        format: Option<String>,
        /// Write raw PCM16 little-endian mono 24 kHz here.
        #[arg(long, conflicts_with = "wav")]
        out: Option<PathBuf>,
        /// Write a WAV file here.
        #[arg(long)]
        wav: Option<PathBuf>,
        /// The chunk files, in order.
        #[arg(required = true)]
        chunks: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a clinician account. The password is read from a prompt, or from the first line
    /// of standard input when it is not a terminal.
    Add {
        username: String,
        /// Organization (clinic) name; created if it does not exist. Default: the install's
        /// default organization, which open registration also uses.
        #[arg(long)]
        organization: Option<String>,
        /// The clinician's preferred language (ISO 639-1).
        #[arg(long, default_value = "en")]
        language: String,
        /// Make the account an administrator of its organization.
        #[arg(long)]
        admin: bool,
    },
    /// List accounts.
    List,
    /// Change an account's password (read like `user add`).
    Passwd { username: String },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Speech-to-text protocol dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SttDialect {
    Ga,
    Beta,
    Speaches,
}

/// Who ends a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnDetection {
    Server,
    Local,
}

/// Provider-side noise reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseReduction {
    FarField,
    NearField,
    Off,
}

/// Every option, as given on the command line, in the environment or in the TOML file.
/// `None` means "not given here"; [`Options::resolve`] applies the precedence and defaults.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Options {
    /// TOML file with any of these options (snake_case keys) and the secrets.
    #[arg(long, env = "TANDEM_CONFIG", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on. [default: 127.0.0.1:8080]
    #[arg(long, env = "TANDEM_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,

    /// Database: a SQLite file path, or a postgres:// URL (needs the `postgres` feature).
    /// [default: ./tandem.db]
    #[arg(long, env = "TANDEM_DATABASE", global = true)]
    pub database: Option<String>,

    /// Origins allowed to call the API from a browser (CORS), comma-separated.
    /// [default: http://localhost:5173,http://localhost:3000]
    #[arg(
        long,
        env = "TANDEM_CORS_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub cors_origins: Option<Vec<String>>,

    /// Whether `POST /api/v1/auth/register` is open to anyone. When false, accounts come from
    /// `tandem user add`. [default: true]
    #[arg(long, env = "TANDEM_OPEN_REGISTRATION", global = true)]
    pub open_registration: Option<bool>,

    /// Largest accepted JSON request body, in bytes. [default: 1048576]
    #[arg(long, env = "TANDEM_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<u64>,

    /// Access token lifetime in seconds. [default: 21600 (6 h, as the original)]
    #[arg(long, env = "TANDEM_ACCESS_TOKEN_TTL_SECS", global = true)]
    pub access_token_ttl_secs: Option<u64>,

    /// Refresh token lifetime in seconds. [default: 2592000 (30 days)]
    #[arg(long, env = "TANDEM_REFRESH_TOKEN_TTL_SECS", global = true)]
    pub refresh_token_ttl_secs: Option<u64>,

    /// Base URL of the OpenAI-compatible provider (HTTP API and Realtime WebSocket).
    /// [default: https://api.openai.com/v1]
    #[arg(long, env = "TANDEM_OPENAI_BASE_URL", global = true)]
    pub openai_base_url: Option<url::Url>,

    /// How long shutdown waits for in-flight work before cancelling it, in seconds.
    /// [default: 10]
    #[arg(long, env = "TANDEM_SHUTDOWN_GRACE_SECS", global = true)]
    pub shutdown_grace_secs: Option<u64>,

    /// How long a transcript waits for an unavailable database (restart, failover) before it
    /// is reported unsaved, in seconds. The client is told while it waits. [default: 60]
    #[arg(long, env = "TANDEM_TRANSCRIPT_RETRY_SECS", global = true)]
    pub transcript_retry_secs: Option<u64>,

    /// Log format. Levels come from TANDEM_LOG (or RUST_LOG), e.g. `info,tandem=debug`.
    /// [default: human]
    #[arg(long, env = "TANDEM_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,

    /// Speech-to-text protocol dialect: `ga` (OpenAI), `beta` (OpenAI beta, `OpenAI-Beta:
    /// realtime=v1`) or `speaches` (self-hosted speaches). [default: ga]
    #[arg(long, env = "TANDEM_STT_DIALECT", value_enum, global = true)]
    pub stt_dialect: Option<SttDialect>,

    /// Transcription model. [default: gpt-4o-transcribe]
    #[arg(long, env = "TANDEM_STT_MODEL", global = true)]
    pub stt_model: Option<String>,

    /// Who decides where an utterance ends: `server` (provider VAD) or `local` (Tandem's VAD
    /// commits; for models and servers without server VAD). [default: server]
    #[arg(long, env = "TANDEM_TURN_DETECTION", value_enum, global = true)]
    pub turn_detection: Option<TurnDetection>,

    /// Provider noise reduction: `far_field` (room microphone), `near_field` (headset) or
    /// `off`. [default: far_field]
    #[arg(long, env = "TANDEM_NOISE_REDUCTION", value_enum, global = true)]
    pub noise_reduction: Option<NoiseReduction>,

    /// Context prompt for the transcription model (e.g. "A clinic visit in English and
    /// Spanish").
    #[arg(long, env = "TANDEM_STT_PROMPT", global = true)]
    pub stt_prompt: Option<String>,

    /// Clinic glossary, comma-separated (drug names, procedures): a transcription hint, and
    /// kept verbatim in translations.
    #[arg(long, env = "TANDEM_GLOSSARY", value_delimiter = ',', global = true)]
    pub glossary: Option<Vec<String>>,

    /// Chat model for translation, language fallback and commands. [default: gpt-4o-mini]
    #[arg(long, env = "TANDEM_CHAT_MODEL", global = true)]
    pub chat_model: Option<String>,

    /// Speech model. [default: gpt-4o-mini-tts]
    #[arg(long, env = "TANDEM_TTS_MODEL", global = true)]
    pub tts_model: Option<String>,

    /// Encoding of `tts_audio`: mp3 (what the original frontend plays), opus, aac, flac, wav
    /// or pcm. [default: mp3]
    #[arg(long, env = "TANDEM_TTS_FORMAT", global = true)]
    pub tts_format: Option<String>,

    /// Audio decoding threads. [default: the number of cores]
    #[arg(long, env = "TANDEM_DSP_THREADS", global = true)]
    pub dsp_threads: Option<usize>,

    /// Seconds of not-yet-transcribed audio kept for replay while the speech-to-text
    /// connection is down; beyond it the oldest is dropped with a warning. [default: 30]
    #[arg(long, env = "TANDEM_AUDIO_BUFFER_SECS", global = true)]
    pub audio_buffer_secs: Option<u64>,

    /// Minimum milliseconds between frames on a control socket (the original frontend loses
    /// frames that arrive closer together); 0 disables. [default: 60]
    #[arg(long, env = "TANDEM_CONTROL_PACING_MS", global = true)]
    pub control_pacing_ms: Option<u64>,

    /// Largest audio-socket message in bytes; larger closes the socket with 1009.
    /// [default: 4194304]
    #[arg(long, env = "TANDEM_MAX_AUDIO_MESSAGE_BYTES", global = true)]
    pub max_audio_message_bytes: Option<usize>,

    /// How often the webhook delivery worker looks for due deliveries, in milliseconds.
    /// [default: 1000]
    #[arg(long, env = "TANDEM_WEBHOOK_POLL_INTERVAL_MS", global = true)]
    pub webhook_poll_interval_ms: Option<u64>,

    /// Time limit of one webhook POST (connect to response headers), in seconds; slower
    /// receivers count as a failed attempt. [default: 10]
    #[arg(long, env = "TANDEM_WEBHOOK_TIMEOUT_SECS", global = true)]
    pub webhook_timeout_secs: Option<u64>,

    /// Attempts per webhook delivery before it is marked failed (an admin can retry it).
    /// [default: 12]
    #[arg(long, env = "TANDEM_WEBHOOK_MAX_ATTEMPTS", global = true)]
    pub webhook_max_attempts: Option<u32>,

    /// Wait after the first failed webhook attempt, in seconds; doubles per attempt (with
    /// jitter) up to one hour. [default: 5]
    #[arg(long, env = "TANDEM_WEBHOOK_BACKOFF_BASE_SECS", global = true)]
    pub webhook_backoff_base_secs: Option<u64>,

    /// Days a conversation is kept after its last activity (its end, or its last message if
    /// it was never ended); older ones are hard-deleted with their messages, actions,
    /// summaries and stored audio. 0 keeps everything forever. [default: 0]
    #[arg(long, env = "TANDEM_RETENTION_DAYS", global = true)]
    pub retention_days: Option<u64>,

    /// How often the retention sweeper looks for expired conversations, in seconds.
    /// [default: 3600]
    #[arg(long, env = "TANDEM_RETENTION_INTERVAL_SECS", global = true)]
    pub retention_interval_secs: Option<u64>,

    /// Whether the ingested audio of each conversation (PCM16 mono 24 kHz) is stored as a WAV
    /// file. When false, no audio is written anywhere. [default: false]
    #[arg(long, env = "TANDEM_STORE_AUDIO", global = true)]
    pub store_audio: Option<bool>,

    /// Directory of stored conversation audio (`<conversation id>.wav`).
    /// [default: `audio` next to the SQLite file; ./audio with Postgres]
    #[arg(long, env = "TANDEM_AUDIO_DIR", global = true)]
    pub audio_dir: Option<PathBuf>,
    /// File holding the data keys (`id:base64-32-bytes`, one per line or comma-separated;
    /// the first encrypts), instead of TANDEM_DATA_KEYS. [default: <database>.key with
    /// SQLite, generated on first start; none with Postgres, which then refuses to start]
    #[arg(long, env = "TANDEM_DATA_KEYS_FILE", global = true)]
    pub data_keys_file: Option<PathBuf>,

    /// Whether a stored text value without the `tdm1:` envelope is refused (a store error,
    /// HTTP 500) instead of read as plaintext from before encryption. Once no plaintext is
    /// left, such a value can only have been written into the database around Tandem.
    /// [default: the database's marker: on for a database created with encryption, and once
    /// `tandem rotate-data-key` has sealed every value; off before]
    #[arg(long, env = "TANDEM_REQUIRE_SEALED", global = true)]
    pub require_sealed: Option<bool>,

    /// Data keys; only from the environment or the file (see below).
    #[arg(skip)]
    pub data_keys: Option<String>,

    /// HS256 secret; only from the environment or the file (see below).
    #[arg(skip)]
    pub jwt_secret: Option<String>,

    /// Provider API key; only from the environment or the file (see below).
    #[arg(skip)]
    pub openai_api_key: Option<String>,
}

/// A secret string whose `Debug` never shows the value, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the JWT secret came from; decides whether a warning is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    Configured,
    /// Read from the file generated on an earlier start.
    Persisted,
    /// Generated and persisted by this start.
    Generated,
}

/// Fully resolved configuration with defaults applied and values validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: String,
    pub cors_origins: Vec<String>,
    pub open_registration: bool,
    pub max_body_bytes: u64,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub openai_base_url: url::Url,
    pub shutdown_grace: Duration,
    pub transcript_retry: Duration,
    pub log_format: LogFormat,
    pub stt_dialect: SttDialect,
    pub stt_model: String,
    pub turn_detection: TurnDetection,
    pub noise_reduction: NoiseReduction,
    pub stt_prompt: Option<String>,
    pub glossary: Vec<String>,
    pub chat_model: String,
    pub tts_model: String,
    pub tts_format: crate::ai::AudioFormat,
    pub dsp_threads: std::num::NonZeroUsize,
    pub audio_buffer: Duration,
    pub control_pacing: Duration,
    pub max_audio_message_bytes: usize,
    pub webhook: crate::webhook::WebhookConfig,
    pub retention: crate::retention::RetentionConfig,
    pub recordings: crate::recordings::RecordingConfig,
    /// The configured data keys; `None` leaves the choice to the store (SQLite's key file, or
    /// a refusal for Postgres).
    pub data_keys: Option<std::sync::Arc<crate::store::Keyring>>,
    /// `TANDEM_REQUIRE_SEALED`; `None` follows the database's marker.
    pub require_sealed: Option<bool>,
    /// `None` until [`Config::load_jwt_secret`] runs (it may touch the filesystem).
    pub jwt_secret: Option<Secret>,
    pub openai_api_key: Option<Secret>,
}

impl Options {
    /// Applies precedence (flag/env over file over default), reads secrets from the
    /// environment, and validates.
    ///
    /// # Errors
    /// An unreadable or invalid config file, or an invalid value.
    pub fn resolve(self) -> Result<Config, Error> {
        self.resolve_with_env(|name| std::env::var(name).ok())
    }

    /// [`Options::resolve`] with the environment lookup passed in, so tests do not depend on
    /// the variables of the machine they run on.
    ///
    /// # Errors
    /// As [`Options::resolve`].
    pub fn resolve_with_env(self, env: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => Options::default(),
        };
        let webhook = resolve_webhook(&self, &file)?;
        let retention = resolve_retention(&self, &file)?;
        let env_secret =
            |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()));
        let jwt_secret = env_secret(&["TANDEM_JWT_SECRET"]).or(file.jwt_secret);
        let openai_api_key =
            env_secret(&["TANDEM_OPENAI_API_KEY", "OPENAI_API_KEY"]).or(file.openai_api_key);
        let data_keys = resolve_data_keys(
            env_secret(&["TANDEM_DATA_KEYS"]).or(file.data_keys),
            self.data_keys_file.or(file.data_keys_file),
        )?;
        if let Some(s) = &jwt_secret {
            if s.len() < 32 {
                return Err(Error::Invalid {
                    field: "jwt_secret",
                    message: "must be at least 32 bytes".into(),
                });
            }
        }
        let max_body_bytes = self
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(1024 * 1024);
        if max_body_bytes == 0 {
            return Err(Error::Invalid {
                field: "max_body_bytes",
                message: "must be positive".into(),
            });
        }
        let default_base =
            url::Url::parse("https://api.openai.com/v1").map_err(|e| Error::Invalid {
                field: "openai_base_url",
                message: e.to_string(),
            })?;
        let tts_format = self
            .tts_format
            .or(file.tts_format)
            .unwrap_or_else(|| "mp3".into());
        let tts_format = crate::ai::AudioFormat::parse(&tts_format).ok_or(Error::Invalid {
            field: "tts_format",
            message: format!("{tts_format:?} is not one of mp3, opus, aac, flac, wav, pcm"),
        })?;
        let dsp_threads = match self.dsp_threads.or(file.dsp_threads) {
            Some(n) => std::num::NonZeroUsize::new(n).ok_or(Error::Invalid {
                field: "dsp_threads",
                message: "must be positive".into(),
            })?,
            None => std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN),
        };
        let database = self
            .database
            .or(file.database)
            .unwrap_or_else(|| "tandem.db".into());
        let recordings = crate::recordings::RecordingConfig {
            enabled: self.store_audio.or(file.store_audio).unwrap_or(false),
            dir: self
                .audio_dir
                .or(file.audio_dir)
                .unwrap_or_else(|| database_dir(&database).join("audio")),
        };
        Ok(Config {
            webhook,
            retention,
            recordings,
            stt_dialect: self
                .stt_dialect
                .or(file.stt_dialect)
                .unwrap_or(SttDialect::Ga),
            stt_model: self
                .stt_model
                .or(file.stt_model)
                .unwrap_or_else(|| "gpt-4o-transcribe".into()),
            turn_detection: self
                .turn_detection
                .or(file.turn_detection)
                .unwrap_or(TurnDetection::Server),
            noise_reduction: self
                .noise_reduction
                .or(file.noise_reduction)
                .unwrap_or(NoiseReduction::FarField),
            stt_prompt: self.stt_prompt.or(file.stt_prompt),
            glossary: self
                .glossary
                .or(file.glossary)
                .unwrap_or_default()
                .into_iter()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
            chat_model: self
                .chat_model
                .or(file.chat_model)
                .unwrap_or_else(|| "gpt-4o-mini".into()),
            tts_model: self
                .tts_model
                .or(file.tts_model)
                .unwrap_or_else(|| "gpt-4o-mini-tts".into()),
            tts_format,
            dsp_threads,
            audio_buffer: Duration::from_secs(
                self.audio_buffer_secs
                    .or(file.audio_buffer_secs)
                    .unwrap_or(30),
            ),
            control_pacing: Duration::from_millis(
                self.control_pacing_ms
                    .or(file.control_pacing_ms)
                    .unwrap_or(60),
            ),
            max_audio_message_bytes: self
                .max_audio_message_bytes
                .or(file.max_audio_message_bytes)
                .unwrap_or(4 * 1024 * 1024),
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            database,
            cors_origins: self.cors_origins.or(file.cors_origins).unwrap_or_else(|| {
                vec![
                    "http://localhost:5173".into(),
                    "http://localhost:3000".into(),
                ]
            }),
            open_registration: self
                .open_registration
                .or(file.open_registration)
                .unwrap_or(true),
            max_body_bytes,
            access_token_ttl: Duration::from_secs(
                self.access_token_ttl_secs
                    .or(file.access_token_ttl_secs)
                    .unwrap_or(6 * 3600),
            ),
            refresh_token_ttl: Duration::from_secs(
                self.refresh_token_ttl_secs
                    .or(file.refresh_token_ttl_secs)
                    .unwrap_or(30 * 24 * 3600),
            ),
            openai_base_url: self
                .openai_base_url
                .or(file.openai_base_url)
                .unwrap_or(default_base),
            shutdown_grace: Duration::from_secs(
                self.shutdown_grace_secs
                    .or(file.shutdown_grace_secs)
                    .unwrap_or(10),
            ),
            transcript_retry: Duration::from_secs(
                self.transcript_retry_secs
                    .or(file.transcript_retry_secs)
                    .unwrap_or(60),
            ),
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Human),
            data_keys,
            require_sealed: self.require_sealed.or(file.require_sealed),
            jwt_secret: jwt_secret.map(Secret::new),
            openai_api_key: openai_api_key.map(Secret::new),
        })
    }
}

/// The webhook delivery settings: flag/env over file over [`WebhookConfig::default`], each
/// required to be positive.
///
/// [`WebhookConfig::default`]: crate::webhook::WebhookConfig
fn resolve_webhook(cli: &Options, file: &Options) -> Result<crate::webhook::WebhookConfig, Error> {
    let defaults = crate::webhook::WebhookConfig::default();
    let positive = |field: &'static str, value: Option<u64>| match value {
        Some(0) => Err(Error::Invalid {
            field,
            message: "must be positive".into(),
        }),
        other => Ok(other),
    };
    let poll = positive(
        "webhook_poll_interval_ms",
        cli.webhook_poll_interval_ms
            .or(file.webhook_poll_interval_ms),
    )?;
    let timeout = positive(
        "webhook_timeout_secs",
        cli.webhook_timeout_secs.or(file.webhook_timeout_secs),
    )?;
    let backoff = positive(
        "webhook_backoff_base_secs",
        cli.webhook_backoff_base_secs
            .or(file.webhook_backoff_base_secs),
    )?;
    let max_attempts = match cli.webhook_max_attempts.or(file.webhook_max_attempts) {
        None => defaults.max_attempts,
        Some(n) => std::num::NonZeroU32::new(n).ok_or(Error::Invalid {
            field: "webhook_max_attempts",
            message: "must be at least 1".into(),
        })?,
    };
    Ok(crate::webhook::WebhookConfig {
        poll_interval: poll.map_or(defaults.poll_interval, Duration::from_millis),
        timeout: timeout.map_or(defaults.timeout, Duration::from_secs),
        max_attempts,
        backoff_base: backoff.map_or(defaults.backoff_base, Duration::from_secs),
        backoff_max: defaults.backoff_max,
    })
}

/// The retention settings: flag/env over file over [`RetentionConfig::default`].
///
/// [`RetentionConfig::default`]: crate::retention::RetentionConfig
fn resolve_retention(
    cli: &Options,
    file: &Options,
) -> Result<crate::retention::RetentionConfig, Error> {
    let defaults = crate::retention::RetentionConfig::default();
    let days = cli.retention_days.or(file.retention_days).unwrap_or(0);
    let max_age = match days {
        0 => None,
        // Beyond a million years the arithmetic would overflow; nobody means that.
        d if d > 365 * 1_000_000 => {
            return Err(Error::Invalid {
                field: "retention_days",
                message: "must be at most 365000000 (0 keeps everything)".into(),
            })
        }
        d => Some(Duration::from_secs(d * 24 * 3600)),
    };
    let interval = match cli.retention_interval_secs.or(file.retention_interval_secs) {
        None => defaults.interval,
        Some(0) => {
            return Err(Error::Invalid {
                field: "retention_interval_secs",
                message: "must be positive".into(),
            })
        }
        Some(n) => Duration::from_secs(n),
    };
    Ok(crate::retention::RetentionConfig { max_age, interval })
}

/// The directory of the SQLite file (the working directory for Postgres), where generated
/// files live by default.
fn database_dir(database: &str) -> &Path {
    let dir = if crate::store::is_postgres_url(database) {
        None
    } else {
        Path::new(database).parent()
    };
    dir.unwrap_or_else(|| Path::new(""))
}

/// The data keys from their list or their file (not both: which one wins would be a guess).
fn resolve_data_keys(
    list: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<std::sync::Arc<crate::store::Keyring>>, Error> {
    use crate::store::{crypto, Keyring};
    let text = match (list, file) {
        (Some(_), Some(_)) => {
            return Err(Error::Invalid {
                field: "data_keys",
                message: "set TANDEM_DATA_KEYS or TANDEM_DATA_KEYS_FILE, not both".into(),
            })
        }
        (Some(list), None) => list,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|source| crypto::Error::KeyFile { path, source })?,
        (None, None) => return Ok(None),
    };
    Ok(Some(std::sync::Arc::new(Keyring::parse(&text)?)))
}

fn read_file(path: &Path) -> Result<Options, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| Error::ParseFile {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

impl Config {
    /// Where a generated JWT secret is kept: next to the SQLite file (or in the working
    /// directory for Postgres), readable only by its owner.
    pub fn jwt_secret_path(&self) -> PathBuf {
        database_dir(&self.database).join("tandem.jwt-secret")
    }

    /// Ensures a JWT secret: the configured one, else the persisted one, else a new random
    /// one written to [`Config::jwt_secret_path`]. A generated secret survives restarts so
    /// issued tokens stay valid; the caller logs a warning for [`SecretSource::Generated`].
    ///
    /// # Errors
    /// The secret file cannot be read or created.
    pub fn load_jwt_secret(&mut self) -> Result<SecretSource, Error> {
        if self.jwt_secret.is_some() {
            return Ok(SecretSource::Configured);
        }
        let path = self.jwt_secret_path();
        let io_err = |source| Error::SecretFile {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) if text.trim().len() >= 32 => {
                self.jwt_secret = Some(Secret::new(text.trim().to_owned()));
                return Ok(SecretSource::Persisted);
            }
            Ok(_) => {
                return Err(io_err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "file holds fewer than 32 bytes",
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        use base64::Engine as _;
        let bytes: [u8; 48] = rand::random();
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        crate::store::crypto::write_private(&path, &secret).map_err(io_err)?;
        self.jwt_secret = Some(Secret::new(secret));
        Ok(SecretSource::Generated)
    }
}

/// How the configuration becomes each module's own settings.
impl Config {
    fn api_key(&self) -> Option<String> {
        self.openai_api_key.as_ref().map(|k| k.expose().to_owned())
    }

    /// Settings of the OpenAI-compatible HTTP API client.
    pub fn openai(&self) -> crate::ai::openai::OpenAiConfig {
        let mut ai =
            crate::ai::openai::OpenAiConfig::new(self.openai_base_url.clone(), self.api_key());
        ai.chat_model = self.chat_model.clone();
        ai.tts_model = self.tts_model.clone();
        ai
    }

    /// Settings of the Realtime speech-to-text client.
    pub fn realtime(&self) -> crate::stt::realtime::RealtimeConfig {
        use crate::stt::realtime::{protocol::NoiseReductionType, Dialect, ServerVad};
        let mut stt = crate::stt::realtime::RealtimeConfig::new(self.openai_base_url.clone());
        stt.api_key = self.api_key();
        stt.dialect = match self.stt_dialect {
            SttDialect::Ga => Dialect::Ga,
            SttDialect::Beta => Dialect::Beta,
            SttDialect::Speaches => Dialect::Speaches,
        };
        stt.model = self.stt_model.clone();
        stt.noise_reduction = match self.noise_reduction {
            NoiseReduction::FarField => Some(NoiseReductionType::FarField),
            NoiseReduction::NearField => Some(NoiseReductionType::NearField),
            NoiseReduction::Off => None,
        };
        stt.turn_detection = match self.turn_detection {
            TurnDetection::Server => Some(ServerVad::default()),
            TurnDetection::Local => None,
        };
        stt.ring_buffer = self.audio_buffer;
        stt
    }

    /// Settings of the per-utterance pipeline.
    pub fn pipeline(&self) -> crate::pipeline::PipelineConfig {
        crate::pipeline::PipelineConfig {
            tts_format: self.tts_format,
            glossary: self
                .glossary
                .iter()
                .map(|term| crate::ai::GlossaryEntry {
                    term: term.clone(),
                    rendering: None,
                })
                .collect(),
            stt_prompt: self.stt_prompt.clone(),
            store_retry_window: self.transcript_retry,
            recordings: self.recordings.clone(),
        }
    }

    /// Size of the DSP pool.
    pub fn dsp_pool(&self) -> crate::audio::pool::PoolConfig {
        crate::audio::pool::PoolConfig {
            workers: self.dsp_threads,
            ..crate::audio::pool::PoolConfig::default()
        }
    }

    /// Settings of the HTTP server and sockets.
    pub fn http(&self) -> crate::http::HttpConfig {
        crate::http::HttpConfig {
            cors_origins: self.cors_origins.clone(),
            max_body_bytes: self.max_body_bytes,
            registration_open: self.open_registration,
            drain_timeout: self.shutdown_grace,
            control_pacing: self.control_pacing,
            max_audio_message_bytes: self.max_audio_message_bytes,
        }
    }

    /// Settings of authentication; `None` until [`Config::load_jwt_secret`] ran.
    pub fn auth(&self) -> Option<crate::auth::AuthConfig> {
        let secret = self.jwt_secret.as_ref()?;
        let mut auth = crate::auth::AuthConfig::new(secret.expose().as_bytes().to_vec());
        auth.access_ttl = self.access_token_ttl;
        auth.refresh_ttl = self.refresh_token_ttl;
        Some(auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_configuration() {
        let cfg = Options::default().resolve_with_env(|_| None).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.database, "tandem.db");
        assert!(cfg.open_registration);
        assert_eq!(cfg.access_token_ttl, Duration::from_secs(6 * 3600));
        assert_eq!(cfg.openai_base_url.as_str(), "https://api.openai.com/v1");
        assert_eq!(cfg.webhook.timeout, Duration::from_secs(10));
        assert_eq!(cfg.webhook.max_attempts.get(), 12);
        assert_eq!(
            cfg.retention.max_age, None,
            "kept forever unless configured"
        );
        assert!(!cfg.recordings.enabled, "no audio stored unless configured");
        assert_eq!(cfg.recordings.dir, Path::new("audio"));
        assert_eq!(cfg.require_sealed, None, "the database's marker decides");
    }

    #[test]
    fn require_sealed_overrides_the_marker_either_way() {
        for (value, expected) in [("true", Some(true)), ("false", Some(false))] {
            let cli = Cli::parse_from(["tandem", "--require-sealed", value]);
            let cfg = cli.options.resolve_with_env(|_| None).unwrap();
            assert_eq!(cfg.require_sealed, expected);
        }
        assert!(Cli::try_parse_from(["tandem", "--require-sealed", "maybe"]).is_err());
    }

    #[test]
    fn retention_and_audio_settings() {
        let cli = Cli::parse_from([
            "tandem",
            "--database",
            "/var/lib/tandem/tandem.db",
            "--retention-days",
            "30",
            "--retention-interval-secs",
            "60",
            "--store-audio",
            "true",
        ]);
        let cfg = cli.options.resolve_with_env(|_| None).unwrap();
        assert_eq!(
            cfg.retention.max_age,
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        assert_eq!(cfg.retention.interval, Duration::from_secs(60));
        assert!(cfg.recordings.enabled);
        assert_eq!(cfg.recordings.dir, Path::new("/var/lib/tandem/audio"));
        let off = Cli::parse_from(["tandem", "--retention-days", "0"]);
        assert_eq!(
            off.options
                .resolve_with_env(|_| None)
                .unwrap()
                .retention
                .max_age,
            None
        );
        let bad = Cli::parse_from(["tandem", "--retention-interval-secs", "0"]);
        assert!(matches!(
            bad.options.resolve_with_env(|_| None),
            Err(Error::Invalid {
                field: "retention_interval_secs",
                ..
            })
        ));
    }

    #[test]
    fn webhook_settings_are_validated() {
        let cli = Cli::parse_from([
            "tandem",
            "--webhook-timeout-secs",
            "3",
            "--webhook-poll-interval-ms",
            "250",
            "--webhook-backoff-base-secs",
            "2",
            "--webhook-max-attempts",
            "4",
        ]);
        let cfg = cli.options.resolve_with_env(|_| None).unwrap();
        assert_eq!(cfg.webhook.timeout, Duration::from_secs(3));
        assert_eq!(cfg.webhook.poll_interval, Duration::from_millis(250));
        assert_eq!(cfg.webhook.backoff_base, Duration::from_secs(2));
        assert_eq!(cfg.webhook.max_attempts.get(), 4);
        for flag in [
            "--webhook-timeout-secs",
            "--webhook-max-attempts",
            "--webhook-poll-interval-ms",
            "--webhook-backoff-base-secs",
        ] {
            let cli = Cli::parse_from(["tandem", flag, "0"]);
            assert!(
                matches!(
                    cli.options.resolve_with_env(|_| None),
                    Err(Error::Invalid { .. })
                ),
                "{flag} 0"
            );
        }
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\ndatabase = \"/var/lib/tandem/t.db\"\nopen_registration = false\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "tandem",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:7000",
        ]);
        let cfg = cli.options.resolve_with_env(|_| None).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(cfg.database, "/var/lib/tandem/t.db");
        assert!(!cfg.open_registration);
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        std::fs::write(&path, "lisen = \"0.0.0.0:9000\"\n").unwrap();
        let opts = Options {
            config: Some(path),
            ..Options::default()
        };
        assert!(matches!(
            opts.resolve_with_env(|_| None),
            Err(Error::ParseFile { .. })
        ));
    }

    #[test]
    fn short_secret_in_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        std::fs::write(&path, "jwt_secret = \"short\"\n").unwrap();
        let opts = Options {
            config: Some(path),
            ..Options::default()
        };
        assert!(matches!(
            opts.clone().resolve_with_env(|_| None),
            Err(Error::Invalid {
                field: "jwt_secret",
                ..
            })
        ));
        // The environment wins over the file.
        let long = "x".repeat(40);
        let cfg = opts
            .resolve_with_env(|name| (name == "TANDEM_JWT_SECRET").then(|| long.clone()))
            .unwrap();
        assert_eq!(cfg.jwt_secret.unwrap().expose(), long);
    }

    #[test]
    fn data_keys_come_from_the_environment_or_a_file() {
        let entry = crate::store::Keyring::generate_entry("k1").unwrap();
        let cfg = Options::default()
            .resolve_with_env(|name| (name == "TANDEM_DATA_KEYS").then(|| entry.clone()))
            .unwrap();
        assert_eq!(cfg.data_keys.unwrap().active_id(), "k1");
        assert!(Options::default()
            .resolve_with_env(|_| None)
            .unwrap()
            .data_keys
            .is_none());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("{entry}\n")).unwrap();
        let cli = Cli::parse_from(["tandem", "--data-keys-file", path.to_str().unwrap()]);
        let cfg = cli.options.clone().resolve_with_env(|_| None).unwrap();
        assert_eq!(cfg.data_keys.unwrap().active_id(), "k1");
        assert!(
            !format!("{:?}", cli.options.clone().resolve_with_env(|_| None))
                .contains(entry.split_once(':').unwrap().1)
        );
        assert!(matches!(
            cli.options
                .resolve_with_env(|name| (name == "TANDEM_DATA_KEYS").then(|| entry.clone())),
            Err(Error::Invalid {
                field: "data_keys",
                ..
            })
        ));
        assert!(matches!(
            Options::default()
                .resolve_with_env(|name| (name == "TANDEM_DATA_KEYS").then(|| "k1:short".into())),
            Err(Error::DataKeys(_))
        ));
    }

    #[test]
    fn generated_secret_is_persisted_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tandem.db");
        let mut cfg = Options {
            database: Some(db.to_string_lossy().into_owned()),
            ..Options::default()
        }
        .resolve_with_env(|_| None)
        .unwrap();
        assert_eq!(cfg.load_jwt_secret().unwrap(), SecretSource::Generated);
        let first = cfg.jwt_secret.clone().unwrap();
        cfg.jwt_secret = None;
        assert_eq!(cfg.load_jwt_secret().unwrap(), SecretSource::Persisted);
        assert_eq!(cfg.jwt_secret.unwrap(), first);
        assert!(dir.path().join("tandem.jwt-secret").exists());
        assert!(!format!("{first:?}").contains(first.expose()));
    }
}
