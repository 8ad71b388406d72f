//! Tandem: a self-hosted backend for real-time medical interpretation.
//!
//! # Layout
//! - [`audio`]: browser audio bytes in, PCM16 mono 24 kHz out (pure, synchronous).
//! - [`ai`]: the OpenAI-compatible HTTP providers (language, translation, commands, speech,
//!   summaries) behind traits.
//! - [`pipeline`]: per-conversation live processing and the fan-out of its events.
//! - [`records`]: what a visit leaves behind: summaries, synthetic medical histories, exports.
//! - [`recordings`]: stored conversation audio (WAV files), off unless a clinic enables it.
//! - [`retention`]: the sweeper that hard-deletes conversations past the retention period.
//! - [`stt`]: the Realtime speech-to-text client (reconnects, replay, local VAD).
//! - [`audit`]: the names of audited reads of patient data (the audit log's `action`s).
//! - [`actions`]: the review rules of actions (editable fields, confirm/cancel).
//! - [`webhook`]: signed delivery of confirmed actions to a clinic system, from the outbox.
//! - [`store`]: persistence behind one trait; SQLite by default, Postgres behind a feature.
//! - [`wire`]: the JSON shapes of stored rows shared by REST and WebSocket events.
//! - [`auth`]: JWTs, password hashing and login throttling; no HTTP types.
//! - [`http`]: warp filters and handlers for the REST API and the WebSockets.
//! - [`metrics`]: the Prometheus registry.
//! - [`config`], [`cli`], [`shutdown`]: the binary's edge, composed from per-module configs.
//! - [`server`]: the composition root that wires the above together and serves.
//! - `testing` (feature `testing`): the loopback fake OpenAI server and the load generator, for
//!   tests, benches and examples.

pub mod actions;
pub mod ai;
pub mod audio;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod recordings;
pub mod records;
pub mod retention;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod stt;
#[cfg(feature = "testing")]
pub mod testing;
pub mod webhook;
pub mod wire;

/// With the `mimalloc` feature the whole process allocates with mimalloc. It lives here, not in
/// `main.rs`, so that the tests, benches and examples that measure the ingest run with the
/// allocator the server would: the default Opus decoder (c2rust) allocates and frees ≈440
/// zeroed scratch blocks per packet, and the allocator is ≈11 % of its instructions under
/// glibc malloc (`docs/performance.md`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
