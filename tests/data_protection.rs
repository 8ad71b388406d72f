//! Data protection end to end, on a real SQLite file: audio is stored only when enabled (and
//! then exactly what was ingested), the retention sweeper deletes expired conversations,
//! deleting a patient leaves no trace in any table or file but the audit entry's id, and text
//! swapped into the database as plaintext is refused like a tampered value.

// Helpers outside #[test] fns are not covered by allow-unwrap-in-tests; a panic is the report.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::ws::{connect, send_recording, stream_recording, Ws};
use support::{speech_script, Client, TestServer, CLINICIAN, PATIENT};
use tandem::recordings::RecordingConfig;
use tandem::retention::RetentionConfig;
use tandem::store::UserRole;

async fn start(store_audio: bool, retention: RetentionConfig) -> TestServer {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("tandem.db");
    let audio_dir = dir.path().join("audio");
    support::start_tuned(dir, &db, Default::default(), speech_script(), |t| {
        t.pipeline.recordings = RecordingConfig {
            enabled: store_audio,
            dir: audio_dir,
        };
        t.retention = retention;
    })
    .await
}

fn wav_path(srv: &TestServer, conversation_id: &str) -> PathBuf {
    srv.dir
        .path()
        .join("audio")
        .join(format!("{conversation_id}.wav"))
}

async fn open_audio(srv: &TestServer, user: &Client, id: &str) -> Ws {
    connect(format!(
        "ws://{}/transcription?conversationId={id}&token={}",
        srv.addr, user.access_token
    ))
    .await
}

/// Waits until no conversation is live (its sockets detached and its last utterance done).
async fn until_idle(srv: &TestServer) {
    for _ in 0..200 {
        if srv.state.pipelines.live_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the conversation is still live after 20 s");
}

/// The samples of a finished WAV file, once its header accounts for the whole file.
async fn finished_wav(path: &Path) -> Vec<i16> {
    for _ in 0..200 {
        if let Ok(bytes) = std::fs::read(path) {
            if tandem::audio::wav::data_len(&bytes).map(|n| n as usize + 44) == Some(bytes.len())
                && bytes.len() > 44
            {
                return bytes[44..]
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} was not finished within 20 s", path.display());
}

/// What the fixture decodes to offline: the PCM the pipeline ingests.
fn fixture_pcm() -> Vec<i16> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/chrome-webm-opus-1000ms");
    let chunks: Vec<PathBuf> = (0..)
        .map(|i| dir.join(format!("chunk-{i:03}.bin")))
        .take_while(|p| p.exists())
        .collect();
    tandem::cli::decode_files(&chunks, None).unwrap().samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_audio_is_exactly_the_ingested_pcm() {
    let srv = start(true, RetentionConfig::default()).await;
    let user = srv.new_user("dr_wav").await;
    let conversation = user.create_conversation("Ana", "Wav", "1980-04-02").await;
    let id = conversation["id"].as_str().unwrap();
    let mut audio = open_audio(&srv, &user, id).await;
    send_recording(&mut audio, Duration::ZERO).await;
    audio.close(None).await.unwrap();
    until_idle(&srv).await;

    let stored = finished_wav(&wav_path(&srv, id)).await;
    let expected = fixture_pcm();
    assert_eq!(
        stored.len(),
        expected.len(),
        "duration: {:.3} s stored, {:.3} s decoded",
        stored.len() as f64 / 24_000.0,
        expected.len() as f64 / 24_000.0
    );
    assert!(stored == expected, "the samples are the decoder's output");
    srv.stop().await;
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_no_audio_is_written_anywhere() {
    let srv = start(false, RetentionConfig::default()).await;
    let user = srv.new_user("dr_quiet").await;
    let conversation = user.create_conversation("Ana", "Quiet", "1980-04-02").await;
    let id = conversation["id"].as_str().unwrap();
    let mut audio = open_audio(&srv, &user, id).await;
    // At real-time pace, so both utterances are transcribed, translated and spoken (TTS).
    stream_recording(&mut audio).await;
    audio.close(None).await.unwrap();
    assert_eq!(support::stored_messages(&user, id, 4).await.len(), 4);
    until_idle(&srv).await;

    let files: Vec<String> = files_under(srv.dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for name in &files {
        assert!(
            // The database and its generated data key (encryption at rest).
            [
                "tandem.db",
                "tandem.db-wal",
                "tandem.db-shm",
                "tandem.db.key"
            ]
            .contains(&name.as_str()),
            "unexpected file {name} (all: {files:?})"
        );
    }
    // Nothing audio-like in the database: no blob anywhere, and the whole file is smaller than
    // one second of the PCM that went through it.
    let db = rusqlite::Connection::open(&srv.db_path).unwrap();
    for (table, column) in columns(&db) {
        let blobs: i64 = db
            .query_row(
                &format!("SELECT count(*) FROM \"{table}\" WHERE typeof(\"{column}\") = 'blob'"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(blobs, 0, "{table}.{column} holds blobs");
    }
    // Nor audio as text: the longest text value is far shorter than base64 of one second of
    // PCM (64 000 characters) or of the spoken replies.
    for (table, column) in columns(&db) {
        let longest: Option<i64> = db
            .query_row(
                &format!("SELECT max(length(CAST(\"{column}\" AS TEXT))) FROM \"{table}\""),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            longest.unwrap_or(0) < 16_000,
            "{table}.{column} holds a {longest:?}-character value"
        );
    }
    srv.stop().await;
}

/// Every (table, column) of the database.
fn columns(db: &rusqlite::Connection) -> Vec<(String, String)> {
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = Vec::new();
    for table in tables {
        let cols: Vec<String> = db
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        out.extend(cols.into_iter().map(|c| (table.clone(), c)));
    }
    out
}

/// Every place (table, column, row's text) where `needle` occurs in any column's text.
fn occurrences(db: &rusqlite::Connection, needle: &str) -> Vec<(String, String, String)> {
    let mut hits = Vec::new();
    for (table, column) in columns(db) {
        let sql = format!(
            "SELECT CAST(\"{column}\" AS TEXT) FROM \"{table}\" \
             WHERE instr(CAST(\"{column}\" AS TEXT), ?1) > 0"
        );
        let found: Vec<String> = db
            .prepare(&sql)
            .unwrap()
            .query_map([needle], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        hits.extend(
            found
                .into_iter()
                .map(|v| (table.clone(), column.clone(), v)),
        );
    }
    hits
}

/// Until the conversation's medical history (generated in the background at creation) exists.
async fn medical_history(user: &Client, id: &str) {
    for _ in 0..100 {
        let doc = user
            .get_json(&format!("/conversations/{id}/medical-history"), 200)
            .await;
        if !doc.is_null() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no medical history after 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_patient_leaves_only_the_audit_id() {
    let srv = start(true, RetentionConfig::default()).await;
    let clinician = srv.new_user("dr_erase").await;
    let org = srv.store.default_organization().await.unwrap();
    let admin = srv
        .user_with_role(&org.id, "admin_erase", UserRole::Admin)
        .await;
    let outsider = srv
        .user_in_new_org_as("Other clinic", "admin_other", UserRole::Admin)
        .await;
    let (first, last, dob) = ("Zelinda", "Quarrington", "1961-07-19");
    let conversation = clinician.create_conversation(first, last, dob).await;
    let id = conversation["id"].as_str().unwrap().to_owned();
    let patient_id = conversation["patientId"].as_str().unwrap().to_owned();
    let kept = clinician
        .create_conversation("Ana", "Neighbour", "1980-04-02")
        .await;

    // A visit: two utterances (messages, translations, spoken audio, a note and a follow-up),
    // its audio stored, an action confirmed into the webhook outbox, a summary.
    let mut audio = open_audio(&srv, &clinician, &id).await;
    stream_recording(&mut audio).await;
    audio.close(None).await.unwrap();
    let messages = support::stored_messages(&clinician, &id, 4).await;
    assert_eq!(messages.len(), 4);
    medical_history(&clinician, &id).await;
    let res = admin
        .put("/organization/webhook")
        .json(&json!({"url": "http://127.0.0.1:9/hook", "secret": "s3cret-s3cret-s3cret"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "webhook: {}", res.status());
    let actions = clinician
        .get_json(&format!("/conversations/{id}/actions"), 200)
        .await;
    let action_id = actions[0]["id"].as_str().unwrap().to_owned();
    let res = clinician
        .post(&format!("/actions/{action_id}/confirm"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let delete = |who: &Client| who.delete(&format!("/patients/{patient_id}")).send();
    assert_eq!(
        support::error_code(delete(&admin).await.unwrap(), 409).await,
        "conversation_active"
    );
    let res = clinician
        .post(&format!("/conversations/{id}/end?wait=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    until_idle(&srv).await;
    let wav = wav_path(&srv, &id);
    assert!(
        !finished_wav(&wav).await.is_empty(),
        "the visit's audio was stored"
    );

    assert_eq!(
        support::error_code(delete(&clinician).await.unwrap(), 403).await,
        "forbidden"
    );
    assert_eq!(
        support::error_code(delete(&outsider).await.unwrap(), 404).await,
        "not_found"
    );
    assert_eq!(delete(&admin).await.unwrap().status(), 204);
    assert_eq!(
        support::error_code(delete(&admin).await.unwrap(), 404).await,
        "not_found"
    );
    clinician
        .get_json(&format!("/patients/{patient_id}"), 404)
        .await;
    clinician
        .get_json(&format!("/conversations/{id}"), 404)
        .await;
    assert!(!wav.exists(), "the stored audio is deleted");
    let kept_id = kept["id"].as_str().unwrap();
    clinician
        .get_json(&format!("/conversations/{kept_id}"), 200)
        .await;

    // The raw database, every table and column: nothing of the patient but audit ids.
    let db = rusqlite::Connection::open(&srv.db_path).unwrap();
    let mut needles = vec![
        first.to_owned(),
        last.to_owned(),
        dob.to_owned(),
        CLINICIAN.to_owned(),
        PATIENT.to_owned(),
    ];
    needles.extend(
        messages
            .iter()
            .map(|m| m["originalText"].as_str().unwrap().to_owned()),
    );
    for needle in &needles {
        assert_eq!(occurrences(&db, needle), [], "{needle:?} is left");
    }
    for needle in [&patient_id, &id, &action_id] {
        for (table, column, _) in occurrences(&db, needle) {
            assert!(
                table == "audit_log" && ["entity_id", "record_ids"].contains(&column.as_str()),
                "{needle} is left outside the audit trail, in {table}.{column}"
            );
        }
    }
    let deleted: (String, String, Option<String>) = db
        .query_row(
            "SELECT action, entity_type, user_id FROM audit_log WHERE entity_id = ?1 \
             ORDER BY at DESC LIMIT 1",
            [&patient_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        deleted,
        (
            "delete".into(),
            "patient".into(),
            Some(admin.user_id.clone())
        )
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_deletes_conversations_past_retention() {
    let srv = start(
        false,
        RetentionConfig {
            max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            interval: Duration::from_millis(100),
        },
    )
    .await;
    let user = srv.new_user("dr_old").await;
    let old = user
        .create_conversation("Olga", "Expired", "1950-01-01")
        .await;
    let recent = user
        .create_conversation("Rita", "Recent", "1990-01-01")
        .await;
    let (old_id, recent_id) = (
        old["id"].as_str().unwrap().to_owned(),
        recent["id"].as_str().unwrap().to_owned(),
    );
    for id in [&old_id, &recent_id] {
        medical_history(&user, id).await;
        let res = user
            .post(&format!("/conversations/{id}/end?wait=true"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // Audio stored while the setting was on is deleted with its conversation even now.
    let wav = wav_path(&srv, &old_id);
    std::fs::create_dir_all(wav.parent().unwrap()).unwrap();
    std::fs::write(&wav, tandem::audio::wav::header(0)).unwrap();

    // Backdate the old visit by 31 days, as if it had happened then.
    let db = rusqlite::Connection::open(&srv.db_path).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let shift: i64 = 31 * 24 * 3600 * 1000;
    db.execute(
        "UPDATE conversations SET start_time = start_time - ?2, end_time = end_time - ?2, \
         created_at = created_at - ?2, updated_at = updated_at - ?2 WHERE id = ?1",
        rusqlite::params![old_id, shift],
    )
    .unwrap();
    db.execute(
        "UPDATE messages SET timestamp = timestamp - ?2 WHERE conversation_id = ?1",
        rusqlite::params![old_id, shift],
    )
    .unwrap();

    let mut gone = false;
    for _ in 0..100 {
        let res = user
            .get(&format!("/conversations/{old_id}"))
            .send()
            .await
            .unwrap();
        if res.status() == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the expired conversation was deleted within 10 s");
    let rows = |table: &str| -> i64 {
        db.query_row(
            &format!("SELECT count(*) FROM {table} WHERE conversation_id = ?1"),
            [&old_id],
            |r| r.get(0),
        )
        .unwrap()
    };
    for table in ["messages", "actions", "documents"] {
        assert_eq!(rows(table), 0, "{table} of the expired conversation");
    }
    assert!(!wav.exists(), "its stored audio is deleted");
    let kept = user
        .get_json(&format!("/conversations/{recent_id}"), 200)
        .await;
    assert_eq!(kept["id"], recent_id.as_str());
    let summary = user
        .get_json(&format!("/conversations/{recent_id}/summary"), 200)
        .await;
    assert!(!summary.is_null());
    // The audit trail keeps ids only: none of its columns holds the patient's name. (The
    // patient record itself stays: retention deletes visits, DELETE /patients deletes people.)
    let in_audit = |needle: &str| {
        occurrences(&db, needle)
            .into_iter()
            .filter(|(table, _, _)| table == "audit_log")
            .count()
    };
    assert_eq!(in_audit("Expired"), 0);
    assert!(in_audit(&old_id) > 0, "its reads stay audited, by id");
    srv.stop().await;
}

/// Someone with write access to the database file replaces a sealed value: an altered envelope
/// and plain text of their choosing are both answered 500 `internal`, never shown, because a
/// new database refuses unsealed values (docs/data-protection.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_swapped_into_the_database_is_refused_like_a_tampered_value() {
    let srv = start(false, RetentionConfig::default()).await;
    let user = srv.new_user("sealed-clinician").await;
    let conversation = user
        .create_conversation("Ana", "Sealed", "1980-04-02")
        .await;
    let id = conversation["id"].as_str().unwrap();
    let note = tandem::ai::Command::TakeNote {
        content: "allergic to penicillin".into(),
    };
    let action = support::voice_action(&srv, id, &note).await;
    let path = format!("/actions/{action}");
    let shown = user.get_json(&path, 200).await;
    assert_eq!(
        shown["data"]["content"], "allergic to penicillin",
        "{shown}"
    );

    let raw = rusqlite::Connection::open(&srv.db_path).unwrap();
    let set = |value: &str| {
        raw.execute(
            "UPDATE actions SET data = ?2 WHERE id = ?1",
            [&action, value],
        )
        .unwrap();
    };
    let sealed: String = raw
        .query_row("SELECT data FROM actions WHERE id = ?1", [&action], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(sealed.starts_with("tdm1:"), "{sealed}");
    let mut altered = sealed.clone().into_bytes();
    let i = altered.len() - 3;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    set(std::str::from_utf8(&altered).unwrap());
    let tampered = support::error_code(user.get(&path).send().await.unwrap(), 500).await;

    set(r#"{"content":"no known allergies"}"#);
    let res = user.get(&path).send().await.unwrap();
    assert_eq!(res.status(), 500);
    let body = res.text().await.unwrap();
    assert!(!body.contains("no known allergies"), "{body}");
    let forged: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(forged["code"], tampered.as_str());
    assert_eq!(tampered, "internal");

    set(&sealed);
    user.get_json(&path, 200).await;
}
