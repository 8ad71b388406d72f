use super::*;
use serde_json::json;

const SR: usize = SAMPLE_RATE as usize;

fn cfg(server_vad: bool) -> SessionConfig {
    SessionConfig {
        server_vad,
        vad: VadConfig::default(),
        ring_samples: 30 * SR,
        idle_keep_samples: 2 * SR as u64,
        final_hold: Duration::from_secs(5),
    }
}

fn tone(ms: usize) -> Vec<i16> {
    (0..ms * SR / 1000)
        .map(|i| (3000.0 * (i as f32 * 300.0 * std::f32::consts::TAU / SR as f32).sin()) as i16)
        .collect()
}

fn silence(ms: usize) -> Vec<i16> {
    vec![0; ms * SR / 1000]
}

fn server(v: serde_json::Value) -> ServerEvent {
    serde_json::from_value(v).unwrap()
}

fn committed(id: &str, prev: Option<&str>) -> ServerEvent {
    server(json!({"type":"input_audio_buffer.committed","item_id":id,"previous_item_id":prev}))
}

fn completed(id: &str, text: &str) -> ServerEvent {
    server(
        json!({"type":"conversation.item.input_audio_transcription.completed","item_id":id,"transcript":text}),
    )
}

fn final_texts(out: &[Action]) -> Vec<String> {
    out.iter()
        .filter_map(|a| match a {
            Action::Emit(SttEvent::Final { text, .. }) => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn sent_samples(out: &[Action]) -> Vec<i16> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send(ClientEvent::Append { audio }) => decode_append(audio),
            _ => None,
        })
        .flatten()
        .collect()
}

fn commits(out: &[Action]) -> usize {
    out.iter()
        .filter(|a| matches!(a, Action::Send(ClientEvent::Commit)))
        .count()
}

fn feed(s: &mut Session, audio: &[i16], out: &mut Vec<Action>) {
    for frame in audio.chunks(960) {
        s.on_audio(frame, out);
    }
}

fn connected(server_vad: bool) -> Session {
    let mut s = Session::new(cfg(server_vad));
    let mut out = Vec::new();
    s.on_connected(&mut out);
    assert!(out.is_empty());
    s
}

/// Finals arrive in various orders; they come out in commit order, once each.
#[test]
fn ordering_and_dedup_table() {
    struct Case {
        name: &'static str,
        /// Completed events: (item, text, seconds after start).
        arrivals: Vec<(&'static str, &'static str, u64)>,
        tick_at: Option<u64>,
        expect: Vec<&'static str>,
    }
    let cases = vec![
        Case {
            name: "in order",
            arrivals: vec![("a", "one", 0), ("b", "two", 0), ("c", "three", 0)],
            tick_at: None,
            expect: vec!["one", "two", "three"],
        },
        Case {
            name: "reversed",
            arrivals: vec![("c", "three", 0), ("b", "two", 0), ("a", "one", 0)],
            tick_at: None,
            expect: vec!["one", "two", "three"],
        },
        Case {
            name: "duplicate completed is dropped",
            arrivals: vec![
                ("a", "one", 0),
                ("a", "one", 0),
                ("b", "two", 0),
                ("c", "three", 0),
            ],
            tick_at: None,
            expect: vec!["one", "two", "three"],
        },
        Case {
            name: "missing predecessor skipped after the hold, then emitted late",
            arrivals: vec![("b", "two", 0), ("c", "three", 1), ("a", "one", 10)],
            tick_at: Some(6),
            expect: vec!["two", "three", "one"],
        },
        Case {
            name: "hold not yet expired",
            arrivals: vec![("b", "two", 0), ("c", "three", 0)],
            tick_at: Some(4),
            expect: vec![],
        },
        Case {
            name: "empty transcript is consumed silently",
            arrivals: vec![("a", "", 0), ("b", "two", 0), ("c", "three", 0)],
            tick_at: None,
            expect: vec!["two", "three"],
        },
        Case {
            name: "unknown item is ordered after the known ones",
            arrivals: vec![
                ("x", "stray", 0),
                ("a", "one", 0),
                ("b", "two", 0),
                ("c", "three", 0),
            ],
            tick_at: None,
            expect: vec!["one", "two", "three", "stray"],
        },
    ];
    for case in cases {
        let t0 = Instant::now();
        let mut s = connected(true);
        let mut out = Vec::new();
        feed(&mut s, &tone(300), &mut out);
        s.on_server(committed("a", None), t0, &mut out);
        s.on_server(committed("b", Some("a")), t0, &mut out);
        s.on_server(committed("c", Some("b")), t0, &mut out);
        out.clear();
        let mut ticked = false;
        for (id, text, at) in &case.arrivals {
            let now = t0 + Duration::from_secs(*at);
            if let Some(t) = case.tick_at {
                if !ticked && *at > t {
                    s.on_tick(t0 + Duration::from_secs(t), &mut out);
                    ticked = true;
                }
            }
            s.on_server(completed(id, text), now, &mut out);
        }
        if let (Some(t), false) = (case.tick_at, ticked) {
            s.on_tick(t0 + Duration::from_secs(t), &mut out);
        }
        assert_eq!(final_texts(&out), case.expect, "{}", case.name);
    }
}

#[test]
fn final_carries_previous_item_languages_and_confidence() {
    let mut s = connected(true);
    let mut out = Vec::new();
    s.on_server(committed("b", Some("a")), Instant::now(), &mut out);
    s.on_server(
        server(json!({"type":"conversation.item.input_audio_transcription.completed","item_id":"b",
            "transcript":"hola","languages":[{"code":"es"}],"logprobs":[{"token":"hola","logprob":0.0}]})),
        Instant::now(),
        &mut out,
    );
    assert_eq!(
        out.last(),
        Some(&Action::Emit(SttEvent::Final {
            item_id: "b".into(),
            previous_item_id: Some("a".into()),
            text: "hola".into(),
            languages: vec!["es".into()],
            confidence: Some(1.0),
        }))
    );
}

#[test]
fn local_vad_commits_once_per_utterance_and_close_drains() {
    let mut s = connected(false);
    let mut out = Vec::new();
    feed(&mut s, &silence(500), &mut out);
    feed(&mut s, &tone(1000), &mut out);
    assert_eq!(commits(&out), 0);
    feed(&mut s, &silence(1000), &mut out);
    assert_eq!(commits(&out), 1, "commit after min_silence");
    assert!(s.awaiting_server());
    s.on_close(&mut out);
    assert_eq!(commits(&out), 1, "no commit of trailing silence");
    assert!(!s.is_drained());
    s.on_server(committed("a", None), Instant::now(), &mut out);
    assert!(!s.is_drained());
    s.on_server(completed("a", "one"), Instant::now(), &mut out);
    assert!(s.is_drained());
    assert_eq!(final_texts(&out), ["one"]);
}

#[test]
fn close_mid_speech_commits() {
    let mut s = connected(false);
    let mut out = Vec::new();
    feed(&mut s, &tone(800), &mut out);
    s.on_close(&mut out);
    assert_eq!(commits(&out), 1);
    assert!(!s.is_drained());
}

#[test]
fn commit_empty_error_releases_the_cut() {
    let mut s = connected(true);
    let mut out = Vec::new();
    feed(&mut s, &tone(500), &mut out);
    s.on_commit(&mut out);
    assert_eq!(commits(&out), 1);
    assert!(s.awaiting_server());
    let f = s.on_server(
        server(json!({"type":"error","error":{"type":"invalid_request_error","code":"input_audio_buffer_commit_empty","message":"buffer too small"}})),
        Instant::now(),
        &mut out,
    );
    assert_eq!(f, Flow::Continue);
    assert!(!s.awaiting_server());
    assert!(!out
        .iter()
        .any(|a| matches!(a, Action::Emit(SttEvent::Warning { .. }))));
}

#[test]
fn tiny_commit_is_not_sent() {
    let mut s = connected(true);
    let mut out = Vec::new();
    feed(&mut s, &tone(40), &mut out);
    s.on_commit(&mut out);
    assert_eq!(commits(&out), 0);
}

#[test]
fn errors_map_to_flow_and_warnings() {
    let mut s = connected(true);
    let mut out = Vec::new();
    let expired = server(
        json!({"type":"error","error":{"type":"invalid_request_error","code":"session_expired","message":"max"}}),
    );
    assert_eq!(
        s.on_server(expired, Instant::now(), &mut out),
        Flow::Reconnect
    );
    let other = server(
        json!({"type":"error","error":{"type":"x","code":"rate_limited","message":"slow down"}}),
    );
    assert_eq!(s.on_server(other, Instant::now(), &mut out), Flow::Continue);
    assert_eq!(
        out,
        vec![Action::Emit(SttEvent::Warning {
            code: "rate_limited".into(),
            message: "slow down".into()
        })]
    );
    let failed = server(
        json!({"type":"conversation.item.input_audio_transcription.failed","item_id":"a",
        "error":{"code":"audio_unintelligible","message":"?"}}),
    );
    out.clear();
    s.on_server(failed.clone(), Instant::now(), &mut out);
    s.on_server(failed, Instant::now(), &mut out);
    assert_eq!(out.len(), 1, "failed is emitted once: {out:?}");
}

#[test]
fn reconnect_replays_untranscribed_audio_and_skips_transcribed() {
    let stopped = |id: &str, ms: u64| {
        server(json!({"type":"input_audio_buffer.speech_stopped","item_id":id,"audio_end_ms":ms}))
    };
    let mut s = connected(true);
    let mut out = Vec::new();
    let first = tone(1000);
    let gap = silence(600);
    let second = tone(1000);
    feed(&mut s, &first, &mut out);
    s.on_server(stopped("a", 1000), Instant::now(), &mut out);
    s.on_server(committed("a", None), Instant::now(), &mut out);
    feed(&mut s, &gap, &mut out);
    feed(&mut s, &second, &mut out);
    s.on_server(stopped("b", 2600), Instant::now(), &mut out);
    s.on_server(committed("b", Some("a")), Instant::now(), &mut out);
    // b is transcribed, a is not (and holds b back).
    s.on_server(completed("b", "two"), Instant::now(), &mut out);
    assert!(final_texts(&out).is_empty());
    out.clear();

    s.on_disconnected(&mut out);
    assert_eq!(final_texts(&out), ["two"]);
    // Audio arriving while disconnected is buffered, not sent.
    out.clear();
    feed(&mut s, &silence(200), &mut out);
    assert!(sent_samples(&out).is_empty());
    s.on_connected(&mut out);
    let replay = sent_samples(&out);
    let mut expect = first.clone();
    expect.extend(vec![0i16; gap.len() + second.len()]);
    expect.extend(silence(200));
    assert_eq!(replay.len(), expect.len());
    assert!(replay == expect, "a verbatim, transcribed b as silence");
    assert_eq!(commits(&out), 0, "server VAD re-segments the replay");

    // Once a's replacement is transcribed, nothing but idle audio is kept.
    s.on_server(stopped("a2", 1000), Instant::now(), &mut out);
    s.on_server(committed("a2", None), Instant::now(), &mut out);
    s.on_server(completed("a2", "one"), Instant::now(), &mut out);
    assert_eq!(final_texts(&out), ["one"]);
    assert!(s.buffered_samples() <= 2 * SR);
}

#[test]
fn reconnect_abandons_untranscribed_turns_and_recommits_in_local_mode() {
    let mut s = connected(false);
    let mut out = Vec::new();
    feed(&mut s, &tone(1000), &mut out);
    feed(&mut s, &silence(700), &mut out);
    assert_eq!(commits(&out), 1);
    s.on_server(committed("a", None), Instant::now(), &mut out);
    feed(&mut s, &tone(1000), &mut out);
    feed(&mut s, &silence(700), &mut out);
    assert_eq!(commits(&out), 2);
    // "b" committed and transcribed, "a" never: b is held for a.
    s.on_server(committed("b", Some("a")), Instant::now(), &mut out);
    out.clear();
    s.on_server(completed("b", "two"), Instant::now(), &mut out);
    assert!(final_texts(&out).is_empty());

    s.on_disconnected(&mut out);
    assert_eq!(final_texts(&out), ["two"], "held transcripts are released");
    out.clear();
    s.on_connected(&mut out);
    assert_eq!(
        commits(&out),
        1,
        "a's audio is replayed and committed again"
    );
    s.on_server(committed("a2", None), Instant::now(), &mut out);
    s.on_server(completed("a2", "one"), Instant::now(), &mut out);
    // The old item's transcript can no longer arrive; if it did, it would be a duplicate source.
    assert_eq!(final_texts(&out), ["one"]);
    assert!(s.at_turn_boundary());
}

#[test]
fn idle_audio_is_trimmed_and_speech_kept() {
    let mut s = connected(true);
    let mut out = Vec::new();
    feed(&mut s, &silence(10_000), &mut out);
    assert_eq!(s.buffered_samples(), 2 * SR);
    feed(&mut s, &tone(1000), &mut out);
    feed(&mut s, &silence(5000), &mut out);
    // The speech (not committed by the server yet) and about 2 s before it are kept (less the
    // local VAD's confirmation delay).
    let kept = s.buffered_samples();
    assert!((8 * SR - SR / 10..=8 * SR).contains(&kept), "{kept}");
    s.on_server(
        server(
            json!({"type":"input_audio_buffer.speech_stopped","item_id":"a","audio_end_ms":11000}),
        ),
        Instant::now(),
        &mut out,
    );
    s.on_server(committed("a", None), Instant::now(), &mut out);
    s.on_server(completed("a", "one"), Instant::now(), &mut out);
    assert_eq!(s.buffered_samples(), 2 * SR);
    assert!(s.at_turn_boundary());
}

#[test]
fn ring_is_bounded_with_one_warning() {
    let mut c = cfg(true);
    c.ring_samples = 3 * SR;
    let mut s = Session::new(c);
    let mut out = Vec::new();
    feed(&mut s, &tone(10_000), &mut out);
    assert_eq!(s.buffered_samples(), 3 * SR);
    let warnings = out
        .iter()
        .filter(|a| matches!(a, Action::Emit(SttEvent::Warning { code, .. }) if code == "stt_audio_dropped"))
        .count();
    assert_eq!(warnings, 1);
}

#[test]
fn speech_stopped_is_reported_in_conversation_time() {
    let mut s = connected(true);
    let mut out = Vec::new();
    feed(&mut s, &silence(1000), &mut out);
    s.on_disconnected(&mut out);
    feed(&mut s, &silence(3000), &mut out);
    out.clear();
    s.on_connected(&mut out); // replays the last 2 s: provider 0 ms = conversation 2000 ms
    out.clear();
    s.on_server(
        server(
            json!({"type":"input_audio_buffer.speech_stopped","item_id":"a","audio_end_ms":500}),
        ),
        Instant::now(),
        &mut out,
    );
    assert_eq!(
        out,
        vec![Action::Emit(SttEvent::SpeechStopped {
            item_id: "a".into(),
            audio_end_ms: 2500
        })]
    );
}

#[test]
fn deltas_are_forwarded_until_final() {
    let mut s = connected(true);
    let mut out = Vec::new();
    for d in ["Hel", "lo"] {
        s.on_server(
            server(json!({"type":"conversation.item.input_audio_transcription.delta","item_id":"a","delta":d})),
            Instant::now(),
            &mut out,
        );
    }
    // A completed with an empty transcript falls back to the accumulated deltas.
    s.on_server(completed("a", ""), Instant::now(), &mut out);
    s.on_server(
        server(json!({"type":"conversation.item.input_audio_transcription.delta","item_id":"a","delta":"late"})),
        Instant::now(),
        &mut out,
    );
    let deltas = out
        .iter()
        .filter(|a| matches!(a, Action::Emit(SttEvent::Delta { .. })))
        .count();
    assert_eq!(deltas, 2);
    assert_eq!(final_texts(&out), ["Hello"]);
}

#[test]
fn speech_not_yet_committed_is_not_a_turn_boundary() {
    let mut s = connected(true);
    let mut out = Vec::new();
    feed(&mut s, &tone(1000), &mut out);
    feed(&mut s, &silence(1000), &mut out);
    // The server reported the end of speech but has not committed it yet.
    s.on_server(
        server(
            json!({"type":"input_audio_buffer.speech_stopped","item_id":"a","audio_end_ms":1000}),
        ),
        Instant::now(),
        &mut out,
    );
    assert!(!s.at_turn_boundary());
    s.on_server(committed("a", None), Instant::now(), &mut out);
    assert!(!s.at_turn_boundary());
    s.on_server(completed("a", "one"), Instant::now(), &mut out);
    assert!(s.at_turn_boundary());
}
