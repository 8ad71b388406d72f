//! Tandem: a self-hosted backend for real-time medical interpretation.
//!
//! # Layout
//! - [`audio`]: browser audio bytes in, PCM16 mono 24 kHz out (pure, synchronous).
//! - [`store`]: persistence behind one trait; SQLite by default, Postgres behind a feature.
//! - [`auth`]: JWTs, password hashing and login throttling; no HTTP types.
//! - [`http`]: warp filters and handlers for the REST API and the WebSockets.
//! - [`config`]: the command line and environment, composed from per-module configs.
//! - [`server`]: the composition root that wires the above together and serves.

pub mod audio;
pub mod config;
pub mod store;
pub mod stt;
#[cfg(feature = "testing")]
pub mod testing;
