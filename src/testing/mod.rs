//! Test support, compiled only with the `testing` feature (integration tests and benches turn
//! it on through a self dev-dependency): a loopback fake of the OpenAI API.

pub mod fake_openai;
