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
}

const SECRETS_HELP: &str = "\
Secrets are never taken from flags:
  TANDEM_JWT_SECRET       HS256 signing secret (at least 32 bytes). Unset: a random secret is
                          generated on first start and kept in <database dir>/tandem.jwt-secret.
  TANDEM_OPENAI_API_KEY   API key for the OpenAI-compatible provider (OPENAI_API_KEY also works).
Both may instead be set as jwt_secret / openai_api_key in the --config TOML file.";

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

    /// Log format. Levels come from TANDEM_LOG (or RUST_LOG), e.g. `info,tandem=debug`.
    /// [default: human]
    #[arg(long, env = "TANDEM_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,

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
    pub log_format: LogFormat,
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
        let env_secret =
            |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()));
        let jwt_secret = env_secret(&["TANDEM_JWT_SECRET"]).or(file.jwt_secret);
        let openai_api_key =
            env_secret(&["TANDEM_OPENAI_API_KEY", "OPENAI_API_KEY"]).or(file.openai_api_key);
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
        Ok(Config {
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            database: self
                .database
                .or(file.database)
                .unwrap_or_else(|| "tandem.db".into()),
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
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Human),
            jwt_secret: jwt_secret.map(Secret::new),
            openai_api_key: openai_api_key.map(Secret::new),
        })
    }
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
        let dir = if crate::store::is_postgres_url(&self.database) {
            None
        } else {
            Path::new(&self.database).parent()
        };
        dir.unwrap_or_else(|| Path::new(""))
            .join("tandem.jwt-secret")
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
        write_private(&path, &secret).map_err(io_err)?;
        self.jwt_secret = Some(Secret::new(secret));
        Ok(SecretSource::Generated)
    }
}

/// Creates a file only its owner can read, failing if it already exists (two servers
/// starting at once must not overwrite each other's secret).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
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
