//! A fake OpenAI-compatible provider for local development, so Tandem and a frontend can be
//! tried end to end without an API key or network:
//!
//! ```sh
//! cargo run --example fake_openai -- "Take a note: chest pain for three days." "Me duele el pecho."
//! # prints the base URL, e.g. http://127.0.0.1:40123/v1; then, in another terminal:
//! TANDEM_OPENAI_BASE_URL=http://127.0.0.1:40123/v1 cargo run --release
//! ```
//!
//! Each utterance the fake's energy VAD hears in the streamed audio is answered with the next
//! line given on the command line (then with empty transcripts, which Tandem skips);
//! translation, commands and speech answer deterministically (`[es] …`, keyword tool calls, `FAKE-MP3:` bytes).

use tandem::testing::fake_openai::{http, realtime, FakeOpenAi};

#[tokio::main]
async fn main() {
    let lines: Vec<String> = std::env::args().skip(1).collect();
    let lines = if lines.is_empty() {
        vec![
            "Take a note: the patient reports chest pain for three days.".to_owned(),
            "Me duele el pecho desde hace tres días.".to_owned(),
        ]
    } else {
        lines
    };
    let count = lines.len();
    let fake = FakeOpenAi::start(
        realtime::State::new(lines.iter().map(String::as_str)),
        http::State::default(),
    )
    .await;
    println!("fake OpenAI listening; scripted utterances: {count}");
    println!("TANDEM_OPENAI_BASE_URL={}", fake.base_url());
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("cannot wait for Ctrl-C: {e}");
    }
}
