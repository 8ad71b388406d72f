//! The Realtime STT client against the fake provider over real loopback sockets.

use std::time::Duration;

use tandem::stt::realtime::{Dialect, RealtimeConfig, RealtimeStt, ReconnectPolicy};
use tandem::stt::{ConnectionStatus, SpeechToText, SttEvent, SttInput, SttOptions};
use tandem::testing::fake_openai::{http, realtime, FakeOpenAi};

const SR: usize = 24_000;

struct Noise(u32);
impl Noise {
    fn next(&mut self, amp: i32) -> i32 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        ((self.0 >> 16) as i32 % (2 * amp + 1)) - amp
    }
}

/// `pattern` of (seconds, speech?): speech = 300 Hz at -20 dBFS plus small noise, else near-silence.
fn pcm(pattern: &[(f32, bool)]) -> Vec<i16> {
    let mut noise = Noise(11);
    let amp = 32767.0 * 0.1;
    let mut out = Vec::new();
    for &(secs, speech) in pattern {
        let n = (secs * SR as f32) as usize;
        for i in 0..n {
            let s = if speech {
                let t = i as f32 / SR as f32;
                (amp * (2.0 * std::f32::consts::PI * 300.0 * t).sin()) as i32 + noise.next(30)
            } else {
                noise.next(10)
            };
            out.push(s as i16);
        }
    }
    out
}

fn two_utterances() -> Vec<i16> {
    pcm(&[
        (0.5, false),
        (1.0, true),
        (1.0, false),
        (1.0, true),
        (1.0, false),
    ])
}

fn config(fake: &FakeOpenAi, dialect: Dialect) -> RealtimeConfig {
    let mut cfg = RealtimeConfig::new(fake.base_url());
    cfg.dialect = dialect;
    cfg.reconnect = ReconnectPolicy {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        ..ReconnectPolicy::default()
    };
    cfg
}

/// Streams `audio` in 40 ms frames, closes, and collects every event up to `Closed`.
async fn transcribe(cfg: RealtimeConfig, audio: Vec<i16>) -> Vec<SttEvent> {
    transcribe_then_idle(cfg, audio, Duration::ZERO).await
}

/// [`transcribe`], but the input stays open and silent (no frames at all, as when a browser
/// stops recording) for `idle` before the close.
async fn transcribe_then_idle(
    cfg: RealtimeConfig,
    audio: Vec<i16>,
    idle: Duration,
) -> Vec<SttEvent> {
    let session = RealtimeStt::new(cfg)
        .open(SttOptions {
            languages: vec!["en".into(), "es".into()],
            prompt: None,
            keywords: vec!["metformin".into()],
        })
        .await
        .expect("open");
    let tx = session.audio;
    let mut events = session.events;
    let writer = tokio::spawn(async move {
        for frame in audio.chunks(SR / 25) {
            tx.send(SttInput::Audio(frame.to_vec()))
                .await
                .expect("send audio");
        }
        tokio::time::sleep(idle).await;
        tx.send(SttInput::Close).await.expect("send close");
    });
    let mut got = Vec::new();
    let collect = async {
        while let Some(event) = events.recv().await {
            let closed = event == SttEvent::Closed;
            got.push(event);
            if closed {
                break;
            }
        }
    };
    // Generous hang guard only; nothing asserts on time.
    tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .expect("session closed");
    writer.await.expect("writer");
    got
}

fn finals(events: &[SttEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            SttEvent::Final { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn deltas_of(events: &[SttEvent], item: &str) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            SttEvent::Delta { item_id, delta } if item_id == item => Some(delta.as_str()),
            _ => None,
        })
        .collect()
}

const SCRIPT: [&str; 2] = [
    "I have had chest pain since Monday",
    "Take metformin twice a day",
];

async fn start(state: realtime::State) -> FakeOpenAi {
    FakeOpenAi::start(state, http::State::default()).await
}

#[tokio::test]
async fn ga_utterances_are_transcribed_in_order_with_deltas() {
    let fake = start(realtime::State::new([
        realtime::ScriptLine {
            text: SCRIPT[0].into(),
            languages: vec!["en".into()],
        },
        SCRIPT[1].into(),
    ]))
    .await;
    let mut cfg = config(&fake, Dialect::Ga);
    cfg.api_key = Some("sk-test".into());
    let events = transcribe(cfg, two_utterances()).await;

    assert_eq!(
        events.first(),
        Some(&SttEvent::Status(ConnectionStatus::Connected))
    );
    assert_eq!(events.last(), Some(&SttEvent::Closed));
    assert_eq!(finals(&events), SCRIPT);
    let mut previous = None;
    for e in &events {
        if let SttEvent::Final {
            item_id,
            previous_item_id,
            text,
            languages,
            ..
        } = e
        {
            assert_eq!(
                &deltas_of(&events, item_id),
                text,
                "deltas add up to the final"
            );
            assert_eq!(previous_item_id, &previous);
            previous = Some(item_id.clone());
            if text == SCRIPT[0] {
                assert_eq!(languages, &["en".to_string()]);
            }
        }
    }
    assert!(events
        .iter()
        .any(|e| matches!(e, SttEvent::SpeechStarted { .. })));

    let hs = fake.realtime.handshakes();
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(hs[0].openai_beta, None);
    assert_eq!(
        hs[0].query.get("intent").map(String::as_str),
        Some("transcription")
    );
    let first = &fake.realtime.received()[0];
    assert_eq!(first["type"], "session.update");
    assert_eq!(first["session"]["type"], "transcription");
    assert_eq!(first["session"]["audio"]["input"]["format"]["rate"], 24000);
}

/// The watchdog waits for an answer to what was asked: a close that commits the last turn
/// after the provider has been quiet for longer than the watchdog is not a lost connection.
#[tokio::test]
async fn a_commit_after_a_long_quiet_spell_gets_its_answer_on_the_same_connection() {
    let fake = start(realtime::State::new(SCRIPT)).await;
    let mut cfg = config(&fake, Dialect::Ga);
    cfg.watchdog = Duration::from_millis(300);
    // Speech that the provider's VAD never sees end, then nothing for 4 watchdog periods.
    let events = transcribe_then_idle(
        cfg,
        pcm(&[(0.5, false), (1.0, true)]),
        Duration::from_millis(1200),
    )
    .await;
    assert_eq!(finals(&events), SCRIPT[..1]);
    assert_eq!(fake.realtime.connection_count(), 1, "no reconnect");
    assert!(!events
        .iter()
        .any(|e| matches!(e, SttEvent::Status(ConnectionStatus::Reconnecting { .. }))));
}

#[tokio::test]
async fn beta_dialect() {
    let fake = start(realtime::State::new(SCRIPT)).await;
    let events = transcribe(config(&fake, Dialect::Beta), two_utterances()).await;
    assert_eq!(finals(&events), SCRIPT);
    assert_eq!(
        fake.realtime.handshakes()[0].openai_beta.as_deref(),
        Some("realtime=v1")
    );
    assert_eq!(
        fake.realtime.received_types()[0],
        "transcription_session.update"
    );
}

#[tokio::test]
async fn speaches_dialect_completed_only() {
    let fake = start(realtime::State::new(SCRIPT).completed_only()).await;
    let events = transcribe(config(&fake, Dialect::Speaches), two_utterances()).await;
    assert_eq!(finals(&events), SCRIPT);
    assert!(!events.iter().any(|e| matches!(e, SttEvent::Delta { .. })));
    let hs = fake.realtime.handshakes();
    assert_eq!(
        hs[0].query.get("model").map(String::as_str),
        Some("gpt-4o-transcribe")
    );
    let first = &fake.realtime.received()[0];
    assert_eq!(first["type"], "session.update");
    assert!(first["session"].get("input_audio_transcription").is_some());
}

#[tokio::test]
async fn socket_dropped_mid_utterance_loses_and_duplicates_nothing() {
    let fake = start(
        realtime::State::new(SCRIPT)
            .drop_mid_utterance_once()
            .completed_delay(Duration::from_millis(20)),
    )
    .await;
    let events = transcribe(config(&fake, Dialect::Ga), two_utterances()).await;
    assert_eq!(fake.realtime.faults_fired(), ["drop_mid_utterance"]);
    assert_eq!(finals(&events), SCRIPT, "each utterance exactly once");
    assert_eq!(fake.realtime.connection_count(), 2);
    assert!(
        events.contains(&SttEvent::Status(ConnectionStatus::Reconnecting {
            attempt: 1
        }))
    );
    let connected = events
        .iter()
        .filter(|e| **e == SttEvent::Status(ConnectionStatus::Connected))
        .count();
    assert_eq!(connected, 2);
    // The second connection was configured again before the replay.
    let updates = fake
        .realtime
        .received_types()
        .iter()
        .filter(|t| *t == "session.update")
        .count();
    assert_eq!(updates, 2);
}

#[tokio::test]
async fn socket_dropped_between_utterances() {
    // 2.5 s of 40 ms frames in: after the first utterance, before the second.
    let fake = start(realtime::State::new(SCRIPT).drop_after_appends(62)).await;
    let events = transcribe(config(&fake, Dialect::Ga), two_utterances()).await;
    assert_eq!(fake.realtime.faults_fired(), ["drop_after_appends"]);
    assert_eq!(finals(&events), SCRIPT);
}

#[tokio::test]
async fn session_expired_reconnects() {
    let fake = start(realtime::State::new(SCRIPT).session_expired_after_appends(40)).await;
    let events = transcribe(config(&fake, Dialect::Ga), two_utterances()).await;
    assert_eq!(fake.realtime.faults_fired(), ["session_expired"]);
    assert_eq!(finals(&events), SCRIPT);
    assert_eq!(fake.realtime.connection_count(), 2);
}

#[tokio::test]
async fn malformed_frame_is_a_warning() {
    let fake = start(realtime::State::new(SCRIPT).malformed_frame_once()).await;
    let events = transcribe(config(&fake, Dialect::Ga), two_utterances()).await;
    assert_eq!(finals(&events), SCRIPT);
    assert!(events
        .iter()
        .any(|e| matches!(e, SttEvent::Warning { code, .. } if code == "stt_malformed_event")));
    assert_eq!(fake.realtime.connection_count(), 1);
}

#[tokio::test]
async fn local_vad_commits_each_utterance() {
    let fake = start(realtime::State::new(SCRIPT)).await;
    let mut cfg = config(&fake, Dialect::Ga);
    cfg.turn_detection = None;
    let events = transcribe(cfg, two_utterances()).await;
    assert_eq!(finals(&events), SCRIPT);
    let first = &fake.realtime.received()[0];
    assert!(first["session"]["audio"]["input"]["turn_detection"].is_null());
    let commits = fake
        .realtime
        .received_types()
        .iter()
        .filter(|t| *t == "input_audio_buffer.commit")
        .count();
    assert_eq!(
        commits, 2,
        "one commit per utterance, none for trailing silence"
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, SttEvent::SpeechStarted { .. })));
}

#[tokio::test]
async fn local_vad_replays_commits_after_a_drop() {
    let fake = start(
        realtime::State::new(SCRIPT)
            .drop_mid_utterance_once()
            .completed_delay(Duration::from_millis(20)),
    )
    .await;
    let mut cfg = config(&fake, Dialect::Beta);
    cfg.turn_detection = None;
    let events = transcribe(cfg, two_utterances()).await;
    assert_eq!(finals(&events), SCRIPT);
}

#[tokio::test]
async fn bad_key_fails_open() {
    let fake = start(realtime::State::new(SCRIPT).require_key("right")).await;
    let mut cfg = config(&fake, Dialect::Ga);
    cfg.api_key = Some("wrong".into());
    let err = RealtimeStt::new(cfg)
        .open(SttOptions::default())
        .await
        .expect_err("401");
    assert_eq!(err.code(), "stt_unauthorized");
}

#[tokio::test]
async fn session_rotates_at_a_turn_boundary() {
    let fake = start(realtime::State::new(SCRIPT)).await;
    let mut cfg = config(&fake, Dialect::Ga);
    cfg.max_session_age = Duration::from_millis(200);
    let mut session = RealtimeStt::new(cfg)
        .open(SttOptions::default())
        .await
        .expect("open");
    let utterance = pcm(&[(0.5, false), (1.0, true), (1.0, false)]);
    let mut got = Vec::new();
    let run = async {
        for part in 0..2 {
            for frame in utterance.chunks(SR / 25) {
                session
                    .audio
                    .send(SttInput::Audio(frame.to_vec()))
                    .await
                    .expect("send audio");
            }
            // Wait for this turn's transcript; the session is then idle past its maximum age.
            while let Some(event) = session.events.recv().await {
                let done = matches!(event, SttEvent::Final { .. });
                got.push(event);
                if done {
                    break;
                }
            }
            if part == 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        session.audio.send(SttInput::Close).await.expect("close");
        while let Some(event) = session.events.recv().await {
            got.push(event);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("session closed");
    assert_eq!(finals(&got), SCRIPT);
    assert!(fake.realtime.connection_count() >= 2, "rotated");
    assert!(
        !got.iter()
            .any(|e| matches!(e, SttEvent::Status(ConnectionStatus::Reconnecting { .. }))),
        "a rotation is not a reconnect"
    );
}
