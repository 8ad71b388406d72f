//! The load generator against an in-process server: two conversations stream a few seconds of
//! the real Chrome recording, and every chunk and transcript is accounted for with no errors.
//! Timings are printed, never asserted (speed is measured with `examples/loadgen.rs`).

mod support;

use std::time::Duration;

use tandem::testing::loadgen::{self, LoadConfig, ProbeTap, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_conversations_stream_and_every_chunk_and_transcript_is_measured() {
    let tap = ProbeTap::new();
    let (realtime, _) = loadgen::fake_provider(&tap);
    let srv = support::start_scripted(realtime).await;
    let config = LoadConfig {
        conversations: 2,
        // The recording's first utterance (clinician, English) ends after about 5.8 s.
        audio: Duration::from_secs(8),
        users: 2,
        drain: Duration::from_secs(3),
        ..LoadConfig::default()
    };
    let target = Target {
        base_url: url::Url::parse(&srv.url("/")).expect("url"),
        pid: None,
    };
    let report = loadgen::run(&config, &target, &tap).await.expect("run");
    println!("{report}");

    assert_eq!(report.live, 2);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.observations_lost, 0);
    // 8 s of 1.006 s chunks = 8 chunks per conversation, each timed once its PCM arrived.
    assert_eq!(report.chunks_sent, 16);
    assert_eq!(report.chunks_unmatched, 0);
    assert_eq!(report.chunk.count, 16);
    // Each conversation's first utterance was transcribed, stored, translated and spoken.
    assert!(report.transcripts >= 2, "{}", report.transcripts);
    assert_eq!(report.new_message.count as u64, report.transcripts);
    assert_eq!(report.translation.count as u64, report.transcripts);
    assert_eq!(report.tts_audio.count as u64, report.transcripts);
    assert!(report.server.is_none(), "no pid, no server readings");
}
