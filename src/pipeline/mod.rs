//! The live interpretation pipeline: per-conversation runtime from PCM to interpreted speech,
//! and the fan-out of its events to WebSocket clients.

pub mod event;
pub mod hub;
pub mod speaker;
