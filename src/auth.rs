//! Authentication: access tokens (JWT), refresh tokens, password hashing and login throttling.
//!
//! No HTTP types live here; `http` turns [`Error`] into responses. Key decisions:
//! - Access tokens are HS256 JWTs and the algorithm is *pinned*: the header's `alg` is never
//!   trusted, so `alg: none` and algorithm-confusion tokens fail like forged ones. Issuer,
//!   audience and expiry are always checked. Claims keep the original backend's `id` and
//!   `username` next to the standard `sub`.
//! - Refresh tokens are opaque random strings; only their SHA-256 is stored. Every refresh
//!   rotates the token, and presenting an already-rotated token revokes its whole family
//!   (theft detection: either the thief or the user now holds a dead token), including a
//!   token issued by a refresh racing the reuse.
//! - Passwords are argon2id PHC strings, hashed and verified on the blocking pool because they
//!   are slow by design. Unknown usernames cost the same verification as known ones.
//! - Failed logins are throttled per username and per client IP in a bounded in-memory map.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::store::{self, now_millis, RefreshToken, Store, User, UserRole};

/// Shortest accepted HMAC secret: HS256 keys shorter than the hash output weaken it.
pub const MIN_SECRET_BYTES: usize = 32;

/// Accepted username lengths in characters (REST registration and `tandem user add`).
pub const USERNAME_LEN: std::ops::RangeInclusive<usize> = 3..=64;
/// Accepted password lengths in characters; the upper bound caps argon2 input.
pub const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 8..=256;

/// Authentication settings. Built by `config.rs` (or tests) and validated by
/// [`Authenticator::new`].
#[derive(Clone)]
pub struct AuthConfig {
    /// HMAC key for access tokens. Secret: never logged (`Debug` redacts it).
    pub secret: Vec<u8>,
    /// `iss` claim written and required.
    pub issuer: String,
    /// `aud` claim written and required.
    pub audience: String,
    /// Access-token lifetime; the original backend used 6 hours.
    pub access_ttl: Duration,
    /// Refresh-token lifetime.
    pub refresh_ttl: Duration,
    /// Cost of new password hashes (existing hashes keep the cost they were made with).
    pub argon2: Argon2Config,
    pub throttle: ThrottleConfig,
}

impl AuthConfig {
    /// Defaults (issuer `tandem`, audience `tandem-api`, 6 h access, 30 d refresh, OWASP
    /// argon2id cost, 5 failures/min per username and 20/min per IP) around `secret`.
    pub fn new(secret: Vec<u8>) -> Self {
        Self {
            secret,
            issuer: "tandem".to_owned(),
            audience: "tandem-api".to_owned(),
            access_ttl: Duration::from_secs(6 * 60 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 60 * 60),
            argon2: Argon2Config::default(),
            throttle: ThrottleConfig::default(),
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .field("argon2", &self.argon2)
            .field("throttle", &self.throttle)
            .finish()
    }
}

/// argon2id cost parameters for new hashes.
#[derive(Debug, Clone, Copy)]
pub struct Argon2Config {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Config {
    /// OWASP's argon2id recommendation (19 MiB, 2 iterations, 1 lane).
    fn default() -> Self {
        Self {
            memory_kib: Params::DEFAULT_M_COST,
            iterations: Params::DEFAULT_T_COST,
            parallelism: Params::DEFAULT_P_COST,
        }
    }
}

/// Login throttle limits: failures allowed per fixed window before logins are refused.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleConfig {
    pub max_failures_per_username: u32,
    pub max_failures_per_ip: u32,
    pub window: Duration,
    /// Bound on tracked usernames and on tracked IPs (each). When full, expired entries are
    /// dropped first, then the oldest window.
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures_per_username: 5,
            max_failures_per_ip: 20,
            window: Duration::from_secs(60),
            max_entries: 10_000,
        }
    }
}

/// Authentication failures. `code()` is the stable wire code; `Display` the human message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Missing, malformed, forged, wrong-issuer/audience or `alg`-tampered access token.
    #[error("invalid or missing access token")]
    InvalidToken,
    #[error("access token expired")]
    TokenExpired,
    #[error("invalid username or password")]
    InvalidCredentials,
    /// Too many failed logins; retry after the given time.
    #[error("too many failed login attempts; retry in {} s", retry_after.as_secs().max(1))]
    Throttled { retry_after: Duration },
    /// Unknown, expired or revoked refresh token.
    #[error("invalid or expired refresh token")]
    InvalidRefreshToken,
    /// An already-rotated refresh token was presented again; its family is now revoked.
    #[error("refresh token reuse detected; please log in again")]
    RefreshTokenReused,
    /// Configuration problem found by [`Authenticator::new`].
    #[error("invalid auth configuration: {0}")]
    Config(String),
    /// Hashing failed or a stored hash is unparsable: a bug or a corrupt row.
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Error {
    /// Stable snake_case code for HTTP bodies and WebSocket `error` events.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidToken => "unauthorized",
            Error::TokenExpired => "token_expired",
            Error::InvalidCredentials => "invalid_credentials",
            Error::Throttled { .. } => "too_many_attempts",
            Error::InvalidRefreshToken => "invalid_refresh_token",
            Error::RefreshTokenReused => "refresh_token_reused",
            Error::Config(_) | Error::Hash(_) => "internal",
            Error::Store(e) => e.code(),
        }
    }
}

/// Who is calling, as proven by a valid access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    pub organization_id: String,
    pub role: UserRole,
    /// The peer address the request or socket came from (proxies are not trusted), for the
    /// audit log. Not part of the token: the HTTP layer fills it in per connection.
    pub remote: Option<std::net::IpAddr>,
}

/// Access-token claims. `id`/`username` are the original backend's payload, kept for clients
/// that decode the token; `sub`, `org` and `role` are what Tandem itself trusts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub id: String,
    pub username: String,
    pub org: String,
    pub role: UserRole,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
}

/// The HS256 key pair derived from the shared secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl JwtKeys {
    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }
}

/// What a successful login or refresh hands back to the client.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub access_token: String,
    pub refresh_token: String,
}

/// Issues and checks tokens, hashes passwords and throttles logins. Cheap to share (`Arc`).
pub struct Authenticator {
    keys: JwtKeys,
    validation: Validation,
    config: AuthConfig,
    argon2_params: Params,
    throttle: LoginThrottle,
    /// A hash verified against when the username is unknown, so response time does not reveal
    /// which usernames exist. Computed on first use.
    dummy_hash: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// # Errors
    /// [`Error::Config`] when the secret is shorter than [`MIN_SECRET_BYTES`], the issuer or
    /// audience is empty, or the argon2 cost is out of range.
    pub fn new(config: AuthConfig) -> Result<Self, Error> {
        if config.secret.len() < MIN_SECRET_BYTES {
            return Err(Error::Config(format!(
                "JWT secret must be at least {MIN_SECRET_BYTES} bytes"
            )));
        }
        if config.issuer.is_empty() || config.audience.is_empty() {
            return Err(Error::Config("issuer and audience must be set".into()));
        }
        let argon2_params = Params::new(
            config.argon2.memory_kib,
            config.argon2.iterations,
            config.argon2.parallelism,
            None,
        )
        .map_err(|e| Error::Config(format!("argon2 parameters: {e}")))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Ok(Self {
            keys: JwtKeys::from_secret(&config.secret),
            validation,
            throttle: LoginThrottle::new(config.throttle),
            argon2_params,
            config,
            dummy_hash: Arc::new(OnceLock::new()),
        })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// A signed access token for `user`, valid for `access_ttl`.
    pub fn issue_access(&self, user: &User) -> String {
        let iat = unix_now();
        self.issue_access_with(user, iat, iat + self.config.access_ttl.as_secs())
    }

    fn issue_access_with(&self, user: &User, iat: u64, exp: u64) -> String {
        let claims = Claims {
            sub: user.id.clone(),
            id: user.id.clone(),
            username: user.username.clone(),
            org: user.organization_id.clone(),
            role: user.role,
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            exp,
            iat,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.keys.encoding)
            .expect("HMAC signing of plain string/number claims cannot fail")
    }

    /// Verifies an access token and returns who it belongs to.
    ///
    /// # Errors
    /// [`Error::TokenExpired`] for an expired token, [`Error::InvalidToken`] for anything else
    /// wrong (signature, algorithm, issuer, audience, shape).
    pub fn authenticate(&self, token: &str) -> Result<Principal, Error> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.keys.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Error::TokenExpired,
                _ => Error::InvalidToken,
            })?;
        let c = data.claims;
        if c.sub != c.id {
            return Err(Error::InvalidToken);
        }
        Ok(Principal {
            user_id: c.sub,
            username: c.username,
            organization_id: c.org,
            role: c.role,
            remote: None,
        })
    }

    /// Hashes a password with argon2id on the blocking pool.
    ///
    /// # Errors
    /// [`Error::Hash`] if hashing fails (it does not for valid parameters).
    pub async fn hash_password(&self, password: &str) -> Result<String, Error> {
        let password = password.to_owned();
        let params = self.argon2_params.clone();
        tokio::task::spawn_blocking(move || hash_password_blocking(&password, params))
            .await
            .map_err(|e| Error::Hash(e.to_string()))?
    }

    /// Checks a password against a PHC string on the blocking pool.
    ///
    /// # Errors
    /// [`Error::Hash`] if the stored hash is not a valid PHC string.
    pub async fn verify_password(&self, password: &str, phc: &str) -> Result<bool, Error> {
        let password = password.to_owned();
        let phc = phc.to_owned();
        tokio::task::spawn_blocking(move || verify_password_blocking(&password, &phc))
            .await
            .map_err(|e| Error::Hash(e.to_string()))?
    }

    /// Username/password login: throttle check, constant-work verification, then a new
    /// access token and a refresh token starting a new family.
    ///
    /// # Errors
    /// [`Error::Throttled`] when the username or IP has too many recent failures,
    /// [`Error::InvalidCredentials`] for an unknown user or wrong password, store errors.
    pub async fn login(
        &self,
        store: &dyn Store,
        username: &str,
        password: &str,
        ip: Option<IpAddr>,
    ) -> Result<Session, Error> {
        self.throttle.check(username, ip, Instant::now())?;
        let user = match store.user_by_username(username).await {
            Ok(user) => Some(user),
            Err(store::Error::NotFound) => None,
            Err(e) => return Err(e.into()),
        };
        let phc = match &user {
            Some(u) => u.password_hash.clone(),
            None => self.dummy_hash().await?,
        };
        let ok = self.verify_password(password, &phc).await?;
        match user {
            Some(user) if ok => {
                self.throttle.record_success(username);
                let refresh_token = self
                    .issue_refresh(store, &user.id, &store::new_id())
                    .await?;
                Ok(Session {
                    access_token: self.issue_access(&user),
                    refresh_token,
                    user,
                })
            }
            _ => {
                self.throttle.record_failure(username, ip, Instant::now());
                Err(Error::InvalidCredentials)
            }
        }
    }

    /// Exchanges a refresh token for a new access token and a new refresh token of the same
    /// family; the presented token is spent.
    ///
    /// # Errors
    /// [`Error::RefreshTokenReused`] (and the family is revoked) when the token was already
    /// spent; [`Error::InvalidRefreshToken`] when unknown, expired or its user is gone; store
    /// errors.
    pub async fn refresh(&self, store: &dyn Store, refresh_token: &str) -> Result<Session, Error> {
        let hash = hash_refresh_token(refresh_token);
        let row = match store.consume_refresh_token(&hash).await {
            Ok(row) => row,
            Err(store::Error::NotFound) => return Err(Error::InvalidRefreshToken),
            Err(e) => return Err(e.into()),
        };
        if row.used_at.is_some() {
            store.revoke_refresh_family(&row.family_id).await?;
            tracing::warn!(
                user_id = %row.user_id,
                family_id = %row.family_id,
                "refresh token reuse detected; family revoked"
            );
            return Err(Error::RefreshTokenReused);
        }
        if row.expires_at <= now_millis() {
            return Err(Error::InvalidRefreshToken);
        }
        let user = match store.user_by_id(&row.user_id).await {
            Ok(user) => user,
            Err(store::Error::NotFound) => return Err(Error::InvalidRefreshToken),
            Err(e) => return Err(e.into()),
        };
        let refresh_token = self.issue_refresh(store, &user.id, &row.family_id).await?;
        // A reuse of the same token racing this refresh revokes the family, possibly before
        // the new token above existed, which would then outlive the revocation. Revocation
        // expires the presented token, so look again now that the new one is stored.
        let presented = store.consume_refresh_token(&hash).await?;
        if presented.expires_at <= now_millis() {
            store.revoke_refresh_family(&row.family_id).await?;
            return Err(Error::RefreshTokenReused);
        }
        Ok(Session {
            access_token: self.issue_access(&user),
            refresh_token,
            user,
        })
    }

    async fn issue_refresh(
        &self,
        store: &dyn Store,
        user_id: &str,
        family_id: &str,
    ) -> Result<String, Error> {
        let token = new_refresh_token();
        let now = now_millis();
        let ttl_ms = i64::try_from(self.config.refresh_ttl.as_millis()).unwrap_or(i64::MAX);
        store
            .insert_refresh_token(RefreshToken {
                token_hash: hash_refresh_token(&token),
                user_id: user_id.to_owned(),
                family_id: family_id.to_owned(),
                expires_at: now.saturating_add(ttl_ms),
                used_at: None,
                created_at: now,
            })
            .await?;
        Ok(token)
    }

    async fn dummy_hash(&self) -> Result<String, Error> {
        if let Some(h) = self.dummy_hash.get() {
            return Ok(h.clone());
        }
        let h = self.hash_password("tandem-dummy-password").await?;
        Ok(self.dummy_hash.get_or_init(|| h).clone())
    }
}

fn hash_password_blocking(password: &str, params: Params) -> Result<String, Error> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Hash(e.to_string()))?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Hash(e.to_string()))
}

fn verify_password_blocking(password: &str, phc: &str) -> Result<bool, Error> {
    let parsed = PasswordHash::new(phc).map_err(|e| Error::Hash(e.to_string()))?;
    // The PHC string carries algorithm and cost, so old hashes verify after a cost change.
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(Error::Hash(e.to_string())),
    }
}

/// A fresh refresh token: 32 random bytes, base64url without padding.
fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the store keeps of a refresh token: lowercase hex SHA-256.
pub fn hash_refresh_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Fixed-window failure counters per username and per IP.
///
/// Policy when a map is full: expired windows are purged; if still full, the oldest window is
/// evicted. An attacker spraying keys can thus reset someone's counter only by creating
/// `max_entries` fresh windows, which the per-IP limit makes expensive.
#[derive(Debug)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    by_username: Mutex<HashMap<String, Window>>,
    by_ip: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl LoginThrottle {
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            by_username: Mutex::new(HashMap::new()),
            by_ip: Mutex::new(HashMap::new()),
        }
    }

    /// # Errors
    /// [`Error::Throttled`] when either the username or the IP is over its limit at `now`.
    pub fn check(&self, username: &str, ip: Option<IpAddr>, now: Instant) -> Result<(), Error> {
        let window = self.config.window;
        let over = |w: Option<&Window>, limit: u32| -> Option<Duration> {
            let w = w?;
            let elapsed = now.saturating_duration_since(w.started);
            (elapsed < window && w.failures >= limit).then(|| window - elapsed)
        };
        let user_wait = over(
            lock(&self.by_username).get(username),
            self.config.max_failures_per_username,
        );
        let ip_wait =
            ip.and_then(|ip| over(lock(&self.by_ip).get(&ip), self.config.max_failures_per_ip));
        match user_wait.max(ip_wait) {
            Some(retry_after) => Err(Error::Throttled { retry_after }),
            None => Ok(()),
        }
    }

    pub fn record_failure(&self, username: &str, ip: Option<IpAddr>, now: Instant) {
        bump(
            &mut lock(&self.by_username),
            username.to_owned(),
            now,
            &self.config,
        );
        if let Some(ip) = ip {
            bump(&mut lock(&self.by_ip), ip, now, &self.config);
        }
    }

    /// A successful login clears the username's counter (not the IP's: one right password
    /// must not reset a spraying client).
    pub fn record_success(&self, username: &str) {
        lock(&self.by_username).remove(username);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps hold plain counters; a panic mid-update leaves them usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bump<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Window>,
    key: K,
    now: Instant,
    config: &ThrottleConfig,
) {
    let window = config.window;
    if !map.contains_key(&key) && map.len() >= config.max_entries {
        map.retain(|_, w| now.saturating_duration_since(w.started) < window);
        if map.len() >= config.max_entries {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, w)| w.started)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
    }
    let w = map.entry(key).or_insert(Window {
        started: now,
        failures: 0,
    });
    if now.saturating_duration_since(w.started) >= window {
        *w = Window {
            started: now,
            failures: 0,
        };
    }
    w.failures = w.failures.saturating_add(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: "u1".into(),
            organization_id: "o1".into(),
            username: "alice".into(),
            password_hash: String::new(),
            preferred_language: "en".into(),
            role: UserRole::Clinician,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn auth_with(secret: &[u8]) -> Authenticator {
        Authenticator::new(AuthConfig::new(secret.to_vec())).unwrap()
    }

    fn auth() -> Authenticator {
        auth_with(&[7u8; 32])
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn round_trip_carries_principal_and_original_claims() {
        let a = auth();
        let token = a.issue_access(&user());
        let p = a.authenticate(&token).unwrap();
        assert_eq!(p.user_id, "u1");
        assert_eq!(p.username, "alice");
        assert_eq!(p.organization_id, "o1");
        assert_eq!(p.role, UserRole::Clinician);
        let payload = token.split('.').nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(json["id"], "u1");
        assert_eq!(json["username"], "alice");
        assert_eq!(json["iss"], "tandem");
        assert_eq!(json["aud"], "tandem-api");
        assert!(json["jti"].is_string());
    }

    #[test]
    fn expired_token_rejected() {
        let a = auth();
        let now = unix_now();
        let token = a.issue_access_with(&user(), now - 7200, now - 3600);
        assert!(matches!(a.authenticate(&token), Err(Error::TokenExpired)));
    }

    #[test]
    fn forged_token_rejected() {
        let token = auth_with(&[9u8; 32]).issue_access(&user());
        assert!(matches!(
            auth().authenticate(&token),
            Err(Error::InvalidToken)
        ));
    }

    #[test]
    fn alg_none_rejected() {
        let a = auth();
        let good = a.issue_access(&user());
        let payload = good.split('.').nth(1).unwrap();
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
        ] {
            let forged = format!("{}.{payload}.", b64(header));
            assert!(matches!(a.authenticate(&forged), Err(Error::InvalidToken)));
        }
    }

    #[test]
    fn wrong_audience_and_issuer_rejected() {
        let secret = [7u8; 32].to_vec();
        let mut other_aud = AuthConfig::new(secret.clone());
        other_aud.audience = "someone-else".into();
        let mut other_iss = AuthConfig::new(secret);
        other_iss.issuer = "evil".into();
        for cfg in [other_aud, other_iss] {
            let token = Authenticator::new(cfg).unwrap().issue_access(&user());
            assert!(matches!(
                auth().authenticate(&token),
                Err(Error::InvalidToken)
            ));
        }
    }

    #[test]
    fn garbage_rejected_and_short_secret_refused() {
        assert!(matches!(
            auth().authenticate("abc"),
            Err(Error::InvalidToken)
        ));
        assert!(matches!(auth().authenticate(""), Err(Error::InvalidToken)));
        assert!(matches!(
            Authenticator::new(AuthConfig::new(b"short".to_vec())),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let t1 = new_refresh_token();
        let t2 = new_refresh_token();
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), 43);
        assert_eq!(hash_refresh_token(&t1).len(), 64);
        assert_ne!(hash_refresh_token(&t1), t1);
    }

    #[tokio::test]
    async fn password_hash_round_trip() {
        let mut cfg = AuthConfig::new(vec![1; 32]);
        cfg.argon2 = Argon2Config {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let a = Authenticator::new(cfg).unwrap();
        let h = a.hash_password("correct horse").await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(a.verify_password("correct horse", &h).await.unwrap());
        assert!(!a.verify_password("wrong", &h).await.unwrap());
        assert!(a.verify_password("x", "not a phc").await.is_err());
    }

    #[test]
    fn throttle_per_username_then_window_resets() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let now = Instant::now();
        for i in 0..5 {
            assert!(t.check("bob", None, now).is_ok(), "attempt {i}");
            t.record_failure("bob", None, now);
        }
        match t.check("bob", None, now + Duration::from_secs(10)) {
            Err(Error::Throttled { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(50))
            }
            other => panic!("expected throttle, got {other:?}"),
        }
        assert!(t.check("carol", None, now).is_ok());
        assert!(t.check("bob", None, now + Duration::from_secs(61)).is_ok());
        t.record_success("bob");
        assert!(t.check("bob", None, now).is_ok());
    }

    #[test]
    fn throttle_per_ip_across_usernames() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        for i in 0..20 {
            t.record_failure(&format!("user{i}"), Some(ip), now);
        }
        assert!(matches!(
            t.check("fresh", Some(ip), now),
            Err(Error::Throttled { .. })
        ));
        assert!(t
            .check("fresh", Some("10.0.0.2".parse().unwrap()), now)
            .is_ok());
    }

    #[test]
    fn throttle_map_is_bounded() {
        let t = LoginThrottle::new(ThrottleConfig {
            max_entries: 3,
            ..ThrottleConfig::default()
        });
        let now = Instant::now();
        for i in 0..10 {
            t.record_failure(&format!("u{i}"), None, now + Duration::from_millis(i));
        }
        assert_eq!(lock(&t.by_username).len(), 3);
    }
}
