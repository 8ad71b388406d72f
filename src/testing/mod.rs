//! Test support, compiled only with the `testing` feature (integration tests, benches and
//! examples turn it on through a self dev-dependency): a loopback fake of the OpenAI API and a
//! load generator that drives a running server through it.

pub mod fake_openai;
pub mod loadgen;
pub mod logs;
