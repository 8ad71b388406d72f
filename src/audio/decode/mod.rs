//! Packet decoders: compressed packets in, interleaved f32 samples out.

pub mod aac;
pub mod opus;
