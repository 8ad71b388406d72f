//! The administrative subcommands (`user add|list|passwd`, `token`): account management from
//! the shell, for clinics that close open registration.
//!
//! Design decision: these functions take the store and the password as values, so they are
//! tested without a terminal; only [`read_password`] touches stdin.

use std::io::{BufRead as _, IsTerminal as _};

use crate::auth::{self, Authenticator};
use crate::store::{self, NewUser, Store, User, UserRole};

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
