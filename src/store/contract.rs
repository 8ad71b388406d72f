//! The behaviour every [`Store`] backend must show, as one executable suite.
//!
//! Design decision: the suite is ordinary library code (not `#[cfg(test)]`) so integration
//! tests can run it against each backend, including Postgres behind a feature. Every run makes
//! its own organizations and unique names, so it can run repeatedly against the same database
//! (a reopened SQLite file, a shared Postgres schema) without cleaning up.
//!
//! It panics on the first violated expectation, like any test.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed contract check.

use serde_json::json;

use super::crypto;

use super::{
    new_id, next_updated_at, now_millis, Action, ActionChange, AuditEntry, AuditQuery,
    CommandDefinition, CommandProduces, ConversationStatus, DeliveryOutcome, DeliveryStatus,
    DocumentKind, Error, Inserted, NewAction, NewAuditEntry, NewConversation, NewDelivery,
    NewDeliveryAttempt, NewMessage, NewPatient, NewUser, Organization, Page, PatientUpdate,
    Reencrypted, RefreshToken, SenderType, Store, User, UserRole, UserSettings,
};

/// Strings that must round-trip verbatim through every text column.
const NASTY: &[&str] = &[
    "'; DROP TABLE users; --",
    "Robert\"); DELETE FROM patients; --",
    "O'Brien \\ % _ ? $1 :name @x",
    "José Ñúñez 👩‍⚕️ 中文 العربية",
    "",
];

/// Runs the whole contract against `store`.
///
/// # Panics
/// On the first behaviour that differs from the [`Store`] documentation.
pub async fn run(store: &dyn Store) {
    store.ping().await.unwrap();
    organizations(store).await;
    users(store).await;
    refresh_tokens(store).await;
    patients(store).await;
    patient_pagination(store).await;
    conversations(store).await;
    conversation_pagination(store).await;
    unsummarized_conversations(store).await;
    messages(store).await;
    message_pagination(store).await;
    actions_and_documents(store).await;
    patient_documents(store).await;
    action_review(store).await;
    webhook_outbox(store).await;
    audit(store).await;
    audit_search(store).await;
    verbatim_strings(store).await;
    clinic_commands(store).await;
    user_settings(store).await;
    patient_erasure(store).await;
    reencryption_is_idempotent(store).await;
    // Last: retention deletes old conversations of every organization, earlier steps' too.
    retention(store).await;
}

/// A fresh organization and a clinician in it.
pub(crate) async fn tenant(store: &dyn Store) -> (Organization, User) {
    let org = store
        .create_organization(&format!("org {}", new_id()))
        .await
        .unwrap();
    let user = store
        .create_user(NewUser {
            organization_id: org.id.clone(),
            username: format!("user-{}", new_id()),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$salt$hash".into(),
            preferred_language: "en".into(),
            role: UserRole::Clinician,
        })
        .await
        .unwrap();
    (org, user)
}

fn new_patient(org: &str, first: &str, last: &str) -> NewPatient {
    NewPatient {
        organization_id: org.into(),
        first_name: first.into(),
        last_name: last.into(),
        date_of_birth: "1970-01-31".into(),
        preferred_language: "es".into(),
    }
}

fn new_message(conversation_id: &str, sender: SenderType, text: &str) -> NewMessage {
    NewMessage::utterance(conversation_id, sender, "en", text)
}

/// Creates a conversation for a new patient of the tenant.
pub(crate) async fn conversation(store: &dyn Store, org: &Organization, user: &User) -> String {
    let (patient, _) = store
        .find_or_create_patient(new_patient(&org.id, "Ana", &format!("Conv {}", new_id())))
        .await
        .unwrap();
    store
        .create_conversation(NewConversation {
            organization_id: org.id.clone(),
            user_id: user.id.clone(),
            patient_id: patient.id,
            clinician_language: "en".into(),
            patient_language: "es".into(),
        })
        .await
        .unwrap()
        .id
}

fn assert_not_found<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    assert!(
        matches!(r, Err(Error::NotFound)),
        "{what}: expected NotFound, got {r:?}"
    );
}

async fn organizations(store: &dyn Store) {
    let org = store.create_organization("Clinic A").await.unwrap();
    assert_eq!(store.get_organization(&org.id).await.unwrap(), org);
    assert_not_found(store.get_organization(&new_id()).await, "unknown org");
    let named = store
        .create_organization(&format!("Clinic {}", new_id()))
        .await
        .unwrap();
    assert_eq!(
        store.organization_by_name(&named.name).await.unwrap(),
        named
    );
    assert_not_found(
        store.organization_by_name(&new_id()).await,
        "unknown org name",
    );

    let d1 = store.default_organization().await.unwrap();
    let d2 = store.default_organization().await.unwrap();
    assert_eq!(d1, d2, "default organization is created once");
    assert_ne!(d1.id, org.id);
}

async fn users(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    assert_eq!(store.user_by_id(&user.id).await.unwrap(), user);
    assert_eq!(store.user_by_username(&user.username).await.unwrap(), user);
    assert_not_found(store.user_by_id(&new_id()).await, "unknown user id");
    assert_not_found(store.user_by_username(&new_id()).await, "unknown username");

    let dup = store
        .create_user(NewUser {
            organization_id: org.id.clone(),
            username: user.username.clone(),
            password_hash: "x".into(),
            preferred_language: "fr".into(),
            role: UserRole::Admin,
        })
        .await;
    assert!(
        matches!(dup, Err(Error::Conflict(_))),
        "duplicate username: {dup:?}"
    );
    let orphan = store
        .create_user(NewUser {
            organization_id: new_id(),
            username: format!("orphan-{}", new_id()),
            password_hash: "x".into(),
            preferred_language: "en".into(),
            role: UserRole::Clinician,
        })
        .await;
    assert_not_found(orphan, "user in unknown organization");

    let admin = store
        .create_user(NewUser {
            organization_id: org.id.clone(),
            username: format!("admin-{}", new_id()),
            password_hash: "h".into(),
            preferred_language: "de".into(),
            role: UserRole::Admin,
        })
        .await
        .unwrap();
    assert_eq!(
        store.user_by_id(&admin.id).await.unwrap().role,
        UserRole::Admin
    );

    let all = store.list_users().await.unwrap();
    assert!(all.contains(&user) && all.contains(&admin));
    assert!(
        all.windows(2).all(|w| w[0].username <= w[1].username),
        "users are ordered by username"
    );
    assert!(store.count_users().await.unwrap() >= 2);
    assert_eq!(store.count_users().await.unwrap(), all.len() as u64);

    store.set_password_hash(&user.id, "new-hash").await.unwrap();
    let changed = store.user_by_id(&user.id).await.unwrap();
    assert_eq!(changed.password_hash, "new-hash");
    assert!(changed.updated_at >= user.updated_at);
    assert_not_found(
        store.set_password_hash(&new_id(), "h").await,
        "password of unknown user",
    );
}

async fn refresh_tokens(store: &dyn Store) {
    let (_, user) = tenant(store).await;
    let family = new_id();
    let now = now_millis();
    let token = |hash: &str| RefreshToken {
        token_hash: hash.into(),
        user_id: user.id.clone(),
        family_id: family.clone(),
        expires_at: now + 86_400_000,
        used_at: None,
        created_at: now,
    };
    let (h1, h2, h3) = (new_id(), new_id(), new_id());
    store.insert_refresh_token(token(&h1)).await.unwrap();
    let dup = store.insert_refresh_token(token(&h1)).await;
    assert!(
        matches!(dup, Err(Error::Conflict(_))),
        "duplicate hash: {dup:?}"
    );
    let mut orphan = token(&new_id());
    orphan.user_id = new_id();
    assert_not_found(
        store.insert_refresh_token(orphan).await,
        "token of unknown user",
    );

    let first = store.consume_refresh_token(&h1).await.unwrap();
    assert_eq!(first, token(&h1), "first consume returns the unused token");
    let second = store.consume_refresh_token(&h1).await.unwrap();
    let used_at = second.used_at.expect("second consume reports reuse");
    assert!(used_at >= now);
    let third = store.consume_refresh_token(&h1).await.unwrap();
    assert_eq!(third.used_at, Some(used_at), "first use time is kept");
    assert_not_found(
        store.consume_refresh_token(&new_id()).await,
        "unknown token",
    );

    store.insert_refresh_token(token(&h2)).await.unwrap();
    let mut other_family = token(&h3);
    other_family.family_id = new_id();
    store.insert_refresh_token(other_family).await.unwrap();
    store.revoke_refresh_family(&family).await.unwrap();
    let revoked = store.consume_refresh_token(&h2).await.unwrap();
    assert!(revoked.used_at.is_some());
    assert!(
        revoked.expires_at <= now_millis(),
        "revocation also expires the family, so a consumer can tell it from a rotation"
    );
    let untouched = store.consume_refresh_token(&h3).await.unwrap();
    assert!(untouched.used_at.is_none(), "other families are untouched");
    assert_eq!(untouched.expires_at, now + 86_400_000);
    store.revoke_refresh_family(&new_id()).await.unwrap();
}

async fn patients(store: &dyn Store) {
    let (org, _) = tenant(store).await;
    let (other, _) = tenant(store).await;

    let (p, created) = store
        .find_or_create_patient(new_patient(&org.id, "Maria", "Lopez"))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(
        (
            p.first_name.as_str(),
            p.last_name.as_str(),
            p.date_of_birth.as_str()
        ),
        ("Maria", "Lopez", "1970-01-31")
    );
    assert_eq!(p.preferred_language, "es");
    let (again, created) = store
        .find_or_create_patient(new_patient(&org.id, "Maria", "Lopez"))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again, p, "same org + name + dob is the same patient");

    let mut other_dob = new_patient(&org.id, "Maria", "Lopez");
    other_dob.date_of_birth = "1970-02-01".into();
    let (p2, created) = store.find_or_create_patient(other_dob).await.unwrap();
    assert!(created && p2.id != p.id);

    let (elsewhere, created) = store
        .find_or_create_patient(new_patient(&other.id, "Maria", "Lopez"))
        .await
        .unwrap();
    assert!(
        created && elsewhere.id != p.id,
        "another org gets its own patient"
    );
    assert_not_found(
        store
            .find_or_create_patient(new_patient(&new_id(), "A", "B"))
            .await,
        "patient in unknown org",
    );

    assert_eq!(store.get_patient(&org.id, &p.id).await.unwrap(), p);
    assert_not_found(
        store.get_patient(&other.id, &p.id).await,
        "cross-org get_patient",
    );
    assert_not_found(
        store.get_patient(&org.id, &new_id()).await,
        "unknown patient",
    );

    let updated = store
        .update_patient(
            &org.id,
            &p.id,
            PatientUpdate {
                preferred_language: Some("pt".into()),
                ..PatientUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.preferred_language, "pt");
    assert_eq!(updated.first_name, "Maria", "None leaves fields unchanged");
    assert_eq!(updated.date_of_birth, "1970-01-31");
    assert!(updated.updated_at >= p.updated_at);
    assert_eq!(store.get_patient(&org.id, &p.id).await.unwrap(), updated);
    assert_not_found(
        store
            .update_patient(
                &other.id,
                &p.id,
                PatientUpdate {
                    first_name: Some("Hijacked".into()),
                    ..PatientUpdate::default()
                },
            )
            .await,
        "cross-org update_patient",
    );
    assert_eq!(store.get_patient(&org.id, &p.id).await.unwrap(), updated);

    // Renaming into an existing identity collides with the uniqueness of patients.
    let clash = store
        .update_patient(
            &org.id,
            &p2.id,
            PatientUpdate {
                date_of_birth: Some("1970-01-31".into()),
                ..PatientUpdate::default()
            },
        )
        .await;
    assert!(
        matches!(clash, Err(Error::Conflict(_))),
        "identity clash: {clash:?}"
    );

    let listed = store
        .list_patients(&org.id, None, &Page::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|x| x.organization_id == org.id));
    let q = store
        .list_patients(&org.id, Some("lOPe"), &Page::default())
        .await
        .unwrap();
    assert_eq!(q.len(), 2, "case-insensitive substring of the last name");
    let q = store
        .list_patients(&org.id, Some("ari"), &Page::default())
        .await
        .unwrap();
    assert_eq!(q.len(), 2, "substring of the first name");
    let q = store
        .list_patients(&org.id, Some("zzz"), &Page::default())
        .await
        .unwrap();
    assert!(q.is_empty());
    let q = store
        .list_patients(&org.id, Some("%"), &Page::default())
        .await
        .unwrap();
    assert!(q.is_empty(), "the query is a literal, not a LIKE pattern");
    assert!(store
        .list_patients(&other.id, Some("Hijacked"), &Page::default())
        .await
        .unwrap()
        .is_empty());
}

async fn patient_pagination(store: &dyn Store) {
    let (org, _) = tenant(store).await;
    let names = [
        ("Zoe", "Adams"),
        ("Al", "Baker"),
        ("Bo", "Baker"),
        ("Cy", "Clark"),
        ("Di", "Davis"),
    ];
    // Inserted out of order, so ordering comes from the query, not insertion.
    for (first, last) in names.iter().rev() {
        store
            .find_or_create_patient(new_patient(&org.id, first, last))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut page = Page {
        after: None,
        limit: 2,
    };
    loop {
        let rows = store.list_patients(&org.id, None, &page).await.unwrap();
        assert!(rows.len() <= 2);
        let Some(last) = rows.last() else { break };
        page.after = Some(last.id.clone());
        seen.extend(rows.into_iter().map(|p| (p.first_name, p.last_name)));
    }
    let expected: Vec<_> = names
        .iter()
        .map(|(f, l)| (f.to_string(), l.to_string()))
        .collect();
    assert_eq!(
        seen, expected,
        "ordered by last, first name; no gaps or duplicates"
    );

    let (other, _) = tenant(store).await;
    let foreign_cursor = Page {
        after: page.after.clone(),
        limit: 2,
    };
    assert_not_found(
        store.list_patients(&other.id, None, &foreign_cursor).await,
        "cursor from another organization",
    );
}

async fn conversations(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    let (other, other_user) = tenant(store).await;
    let (patient, _) = store
        .find_or_create_patient(new_patient(&org.id, "Li", "Wei"))
        .await
        .unwrap();
    let (foreign_patient, _) = store
        .find_or_create_patient(new_patient(&other.id, "Li", "Wei"))
        .await
        .unwrap();

    let before = now_millis();
    let c = store
        .create_conversation(NewConversation {
            organization_id: org.id.clone(),
            user_id: user.id.clone(),
            patient_id: patient.id.clone(),
            clinician_language: "en".into(),
            patient_language: "zh".into(),
        })
        .await
        .unwrap();
    assert_eq!(c.status, ConversationStatus::Active);
    assert_eq!(c.end_time, None);
    assert!(c.start_time >= before);
    assert_eq!(
        (c.user_id.as_str(), c.patient_id.as_str()),
        (user.id.as_str(), patient.id.as_str())
    );

    let new_conv = |user_id: &str, patient_id: &str| NewConversation {
        organization_id: org.id.clone(),
        user_id: user_id.into(),
        patient_id: patient_id.into(),
        clinician_language: "en".into(),
        patient_language: "zh".into(),
    };
    assert_not_found(
        store
            .create_conversation(new_conv(&user.id, &foreign_patient.id))
            .await,
        "conversation with another org's patient",
    );
    assert_not_found(
        store
            .create_conversation(new_conv(&other_user.id, &patient.id))
            .await,
        "conversation by another org's user",
    );

    let got = store.get_conversation(&org.id, &c.id).await.unwrap();
    assert_eq!(got.conversation, c);
    assert_eq!(got.patient, patient);
    assert_not_found(
        store.get_conversation(&other.id, &c.id).await,
        "cross-org get",
    );
    assert!(store
        .list_conversations(&other.id, &Page::default())
        .await
        .unwrap()
        .iter()
        .all(|x| x.conversation.organization_id == other.id));

    let lang = store
        .set_patient_language(&org.id, &c.id, "yue")
        .await
        .unwrap();
    assert_eq!(lang.patient_language, "yue");
    assert_not_found(
        store.set_patient_language(&other.id, &c.id, "fr").await,
        "cross-org set_patient_language",
    );

    let end = now_millis();
    let ended = store
        .set_conversation_status(&org.id, &c.id, ConversationStatus::Ended, Some(end))
        .await
        .unwrap();
    assert_eq!(ended.status, ConversationStatus::Ended);
    assert_eq!(ended.end_time, Some(end));
    assert_eq!(ended.patient_language, "yue");
    let summarized = store
        .set_conversation_status(&org.id, &c.id, ConversationStatus::Summarized, None)
        .await
        .unwrap();
    assert_eq!(summarized.status, ConversationStatus::Summarized);
    assert_eq!(summarized.end_time, Some(end), "None keeps the end time");
    assert_not_found(
        store
            .set_conversation_status(&other.id, &c.id, ConversationStatus::EndedError, None)
            .await,
        "cross-org status change",
    );
    let stored = store.get_conversation(&org.id, &c.id).await.unwrap();
    assert_eq!(stored.conversation, summarized);

    let errored = conversation(store, &org, &user).await;
    let e = store
        .set_conversation_status(&org.id, &errored, ConversationStatus::EndedError, Some(end))
        .await
        .unwrap();
    assert_eq!(e.status, ConversationStatus::EndedError);
}

/// Only `ended` conversations inside the window, of every organization, oldest end first. The
/// end times lie far in the future and grow with each run, so rows of earlier runs against the
/// same database stay out of this run's window.
async fn unsummarized_conversations(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    let (other, other_user) = tenant(store).await;
    let since = now_millis() + 10 * 365 * 24 * 3_600_000;
    let ended = |org: &Organization, user: &User, status, end_time| {
        let (org, user) = (org.clone(), user.clone());
        async move {
            let id = conversation(store, &org, &user).await;
            store
                .set_conversation_status(&org.id, &id, status, Some(end_time))
                .await
                .unwrap();
            id
        }
    };
    let newest = ended(&org, &user, ConversationStatus::Ended, since + 30).await;
    let oldest = ended(&other, &other_user, ConversationStatus::Ended, since).await;
    let middle = ended(&org, &user, ConversationStatus::Ended, since + 20).await;
    ended(&org, &user, ConversationStatus::Ended, since - 1).await;
    ended(&org, &user, ConversationStatus::Summarized, since + 1).await;
    ended(&org, &user, ConversationStatus::EndedError, since + 2).await;
    conversation(store, &org, &user).await;

    let ids = |found: Vec<super::Conversation>| -> Vec<String> {
        assert!(found.iter().all(|c| c.status == ConversationStatus::Ended));
        found.into_iter().map(|c| c.id).collect()
    };
    assert_eq!(
        ids(store
            .list_unsummarized_conversations(since, 10)
            .await
            .unwrap()),
        [oldest.clone(), middle.clone(), newest]
    );
    assert_eq!(
        ids(store
            .list_unsummarized_conversations(since, 2)
            .await
            .unwrap()),
        [oldest, middle]
    );
}

async fn conversation_pagination(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(conversation(store, &org, &user).await);
    }
    let all = store
        .list_conversations(&org.id, &Page::default())
        .await
        .unwrap();
    let ids: Vec<_> = all.iter().map(|c| c.conversation.id.clone()).collect();
    let newest_first: Vec<_> = created.iter().rev().cloned().collect();
    assert_eq!(ids, newest_first, "newest start_time first");
    assert!(all
        .iter()
        .all(|c| c.patient.id == c.conversation.patient_id));

    let mut seen = Vec::new();
    let mut page = Page {
        after: None,
        limit: 2,
    };
    loop {
        let rows = store.list_conversations(&org.id, &page).await.unwrap();
        let Some(last) = rows.last() else { break };
        page.after = Some(last.conversation.id.clone());
        seen.extend(rows.into_iter().map(|c| c.conversation.id));
    }
    assert_eq!(seen, newest_first, "pages have no gaps or duplicates");

    let (other, _) = tenant(store).await;
    let foreign_cursor = Page {
        after: Some(created[0].clone()),
        limit: 2,
    };
    assert_not_found(
        store.list_conversations(&other.id, &foreign_cursor).await,
        "conversation cursor from another organization",
    );
}

async fn messages(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    let conv = conversation(store, &org, &user).await;
    let item = format!("item_{}", new_id());

    let mut original = new_message(&conv, SenderType::Patient, "me duele la cabeza");
    original.language = "es".into();
    original.is_final = true;
    original.stt_item_id = Some(item.clone());
    original.speaker_source = Some("language".into());
    original.speaker_confidence = Some(0.875);
    original.timings = Some(json!({"transcript_ms": 412, "detect_ms": 88.5}));
    let first = store.insert_message(original.clone()).await.unwrap();
    let Inserted::New(stored) = first else {
        panic!("first insert must be New, got {first:?}")
    };
    assert_eq!(stored.sender_type, SenderType::Patient);
    assert_eq!(stored.speaker_confidence, Some(0.875));
    assert_eq!(stored.timings, original.timings);

    let mut replay = original.clone();
    replay.original_text = "replayed text".into();
    let second = store.insert_message(replay).await.unwrap();
    assert_eq!(
        second,
        Inserted::Existing(stored.clone()),
        "a replayed STT item returns the stored row"
    );

    let mut translation = new_message(&conv, SenderType::Translation, "my head hurts");
    translation.original_message_id = Some(stored.id.clone());
    translation.stt_item_id = Some(item.clone());
    let t1 = store.insert_message(translation.clone()).await.unwrap();
    let Inserted::New(t1) = t1 else {
        panic!("the translation of an item is a different row, got {t1:?}")
    };
    assert_eq!(t1.original_message_id.as_deref(), Some(stored.id.as_str()));
    let t2 = store.insert_message(translation).await.unwrap();
    assert_eq!(
        t2,
        Inserted::Existing(t1.clone()),
        "translation stored once"
    );

    // Timings are filled in once processing has finished.
    let timings = json!({"transcript_ms": 412, "tts_first_byte_ms": 950});
    store.set_message_timings(&t1.id, &timings).await.unwrap();
    let listed = store.list_messages(&conv, &Page::default()).await.unwrap();
    let t1_listed = listed.iter().find(|m| m.id == t1.id).unwrap();
    assert_eq!(t1_listed.timings.as_ref(), Some(&timings));
    let t1 = t1_listed.clone();
    assert_not_found(
        store.set_message_timings(&new_id(), &timings).await,
        "timings of an unknown message",
    );

    // The same item id in another conversation is unrelated.
    let conv2 = conversation(store, &org, &user).await;
    let mut elsewhere = original.clone();
    elsewhere.conversation_id = conv2.clone();
    assert!(matches!(
        store.insert_message(elsewhere).await.unwrap(),
        Inserted::New(_)
    ));

    // Rows without an item id are never deduplicated.
    let plain = new_message(&conv, SenderType::Clinician, "hello");
    let a = store.insert_message(plain.clone()).await.unwrap();
    let b = store.insert_message(plain).await.unwrap();
    assert!(matches!((&a, &b), (Inserted::New(_), Inserted::New(_))));
    let b = b.into_inner();
    assert_eq!(b.sender_type, SenderType::Clinician);
    assert_eq!(
        (b.stt_item_id, b.timings, b.speaker_confidence),
        (None, None, None)
    );

    let listed = store.list_messages(&conv, &Page::default()).await.unwrap();
    assert_eq!(
        listed.len(),
        4,
        "one original, one translation, two plain rows"
    );
    assert_eq!(listed[0], stored);
    assert_eq!(listed[1], t1);
    assert_eq!(listed[3].id, b.id);

    assert_not_found(
        store
            .insert_message(new_message(&new_id(), SenderType::Patient, "x"))
            .await,
        "message for unknown conversation",
    );
}

async fn message_pagination(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    let conv = conversation(store, &org, &user).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let m = store
            .insert_message(new_message(&conv, SenderType::Clinician, &format!("m{i}")))
            .await
            .unwrap()
            .into_inner();
        ids.push(m.id);
    }
    let all = store.list_messages(&conv, &Page::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|m| &m.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );
    assert!(all.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));

    let mut seen = Vec::new();
    let mut page = Page {
        after: None,
        limit: 3,
    };
    loop {
        let rows = store.list_messages(&conv, &page).await.unwrap();
        assert!(rows.len() <= 3);
        let Some(last) = rows.last() else { break };
        page.after = Some(last.id.clone());
        seen.extend(rows.into_iter().map(|m| m.id));
    }
    assert_eq!(seen, ids, "ascending, no gaps or duplicates across pages");

    let other = conversation(store, &org, &user).await;
    let foreign = Page {
        after: Some(ids[0].clone()),
        limit: 3,
    };
    assert_not_found(
        store.list_messages(&other, &foreign).await,
        "cursor from another conversation",
    );
}

async fn actions_and_documents(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    let conv = conversation(store, &org, &user).await;

    let note = store
        .insert_action(NewAction {
            conversation_id: conv.clone(),
            kind: "note".into(),
            status: "created".into(),
            data: json!({"content": "BP 120/80"}),
        })
        .await
        .unwrap();
    let rx = store
        .insert_action(NewAction {
            conversation_id: conv.clone(),
            kind: "prescription".into(),
            status: "pending_review".into(),
            data: json!({"medicationName": "Ibuprofen", "dosage": "400 mg",
                         "frequency": "every 8 hours", "details": null}),
        })
        .await
        .unwrap();
    let listed = store.list_actions(&conv).await.unwrap();
    assert_eq!(listed, vec![rx, note], "actions newest first");
    assert_not_found(
        store
            .insert_action(NewAction {
                conversation_id: new_id(),
                kind: "note".into(),
                status: "created".into(),
                data: json!({}),
            })
            .await,
        "action for unknown conversation",
    );

    for kind in [DocumentKind::Summary, DocumentKind::MedicalHistory] {
        assert_eq!(store.get_document(kind, &conv).await.unwrap(), None);
        let d1 = store.upsert_document(kind, &conv, "first").await.unwrap();
        assert_eq!(d1.content, "first");
        let d2 = store.upsert_document(kind, &conv, "second").await.unwrap();
        assert_eq!(d2.id, d1.id, "upsert replaces, keeps the row");
        assert_eq!(d2.content, "second");
        assert_eq!(d2.created_at, d1.created_at);
        assert!(d2.updated_at >= d1.updated_at);
        assert_eq!(store.get_document(kind, &conv).await.unwrap(), Some(d2));
    }
    let summary = store
        .get_document(DocumentKind::Summary, &conv)
        .await
        .unwrap()
        .unwrap();
    let history = store
        .get_document(DocumentKind::MedicalHistory, &conv)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(summary.id, history.id, "kinds are separate documents");
    assert_not_found(
        store
            .upsert_document(DocumentKind::Summary, &new_id(), "x")
            .await,
        "document for unknown conversation",
    );
}

async fn patient_documents(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    let (other_org, _) = tenant(store).await;
    let (patient, _) = store
        .find_or_create_patient(new_patient(&org.id, "Eva", &format!("Hist {}", new_id())))
        .await
        .unwrap();
    let visit = |patient_id: String| NewConversation {
        organization_id: org.id.clone(),
        user_id: user.id.clone(),
        patient_id,
        clinician_language: "en".into(),
        patient_language: "es".into(),
    };
    let first = store
        .create_conversation(visit(patient.id.clone()))
        .await
        .unwrap();
    let second = store
        .create_conversation(visit(patient.id.clone()))
        .await
        .unwrap();
    let kind = DocumentKind::MedicalHistory;
    assert_eq!(
        store
            .first_patient_document(kind, &org.id, &patient.id)
            .await
            .unwrap(),
        None,
        "no conversation of the patient has one yet"
    );
    let original = store
        .upsert_document(kind, &second.id, "history v1")
        .await
        .unwrap();
    store
        .upsert_document(kind, &first.id, "history copy")
        .await
        .unwrap();
    // A summary of the patient is not a medical history.
    store
        .upsert_document(DocumentKind::Summary, &first.id, "summary")
        .await
        .unwrap();
    let found = store
        .first_patient_document(kind, &org.id, &patient.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, original, "the oldest document of the kind wins");

    // Another patient, or the same ids seen from another organization, find nothing.
    let other_conv = conversation(store, &org, &user).await;
    let other_patient = store
        .get_conversation(&org.id, &other_conv)
        .await
        .unwrap()
        .patient;
    assert_eq!(
        store
            .first_patient_document(kind, &org.id, &other_patient.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .first_patient_document(kind, &other_org.id, &patient.id)
            .await
            .unwrap(),
        None,
        "tenant-scoped"
    );
}

async fn insert_prescription(store: &dyn Store, conversation_id: &str) -> Action {
    store
        .insert_action(NewAction {
            conversation_id: conversation_id.into(),
            kind: "prescription".into(),
            status: "pending_review".into(),
            data: json!({"medicationName": "Ibuprofen", "dosage": "400 mg",
                         "frequency": "every 8 hours", "details": null}),
        })
        .await
        .unwrap()
}

/// The change that confirms `action`, queueing `action.confirmed` under `key`.
fn confirm(action: &Action, key: &str) -> ActionChange {
    ActionChange {
        expected_updated_at: action.updated_at,
        status: "confirmed".into(),
        data: action.data.clone(),
        updated_at: next_updated_at(action.updated_at),
        delivery: Some(NewDelivery {
            event: "action.confirmed".into(),
            idempotency_key: key.into(),
            payload: json!({"event": "action.confirmed", "actionId": action.id}),
        }),
    }
}

async fn action_review(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    let (other, _) = tenant(store).await;
    let conv = conversation(store, &org, &user).await;
    let rx = insert_prescription(store, &conv).await;

    assert_eq!(store.get_action(&org.id, &rx.id).await.unwrap(), rx);
    assert_not_found(
        store.get_action(&other.id, &rx.id).await,
        "other org's action",
    );
    assert_not_found(store.get_action(&org.id, &new_id()).await, "unknown action");

    let edit = ActionChange {
        expected_updated_at: rx.updated_at,
        status: rx.status.clone(),
        data: json!({"medicationName": "Ibuprofen", "dosage": "200 mg",
                     "frequency": "every 8 hours", "details": "with food"}),
        // Same millisecond as the insert is the case the strictly-later rule exists for.
        updated_at: next_updated_at(rx.updated_at),
        delivery: None,
    };
    assert_not_found(
        store.update_action(&other.id, &rx.id, edit.clone()).await,
        "update through another organization",
    );
    let (edited, queued) = store
        .update_action(&org.id, &rx.id, edit.clone())
        .await
        .unwrap();
    assert_eq!(queued, None);
    assert_eq!(edited.data["dosage"], "200 mg");
    assert!(edited.updated_at > rx.updated_at);
    assert_eq!(
        (edited.id.as_str(), edited.created_at),
        (rx.id.as_str(), rx.created_at)
    );
    assert_eq!(store.get_action(&org.id, &rx.id).await.unwrap(), edited);

    // A change computed from a stale read is refused and changes nothing.
    let stale = store.update_action(&org.id, &rx.id, edit).await;
    assert!(
        matches!(stale, Err(Error::Conflict(_))),
        "stale write: {stale:?}"
    );
    assert_eq!(store.get_action(&org.id, &rx.id).await.unwrap(), edited);

    // Without a webhook the change applies and nothing is queued.
    let (confirmed, queued) = store
        .update_action(&org.id, &rx.id, confirm(&edited, &format!("{}:c", rx.id)))
        .await
        .unwrap();
    assert_eq!(confirmed.status, "confirmed");
    assert_eq!(queued, None);
    assert!(store
        .list_deliveries(&org.id, None, &Page::default())
        .await
        .unwrap()
        .is_empty());
}

async fn webhook_outbox(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    let (other, _) = tenant(store).await;
    let conv = conversation(store, &org, &user).await;

    assert_not_found(store.get_webhook(&org.id).await, "no webhook yet");
    let first = store
        .put_webhook(&org.id, "http://127.0.0.1:9/a", "s1")
        .await
        .unwrap();
    let hook = store
        .put_webhook(&org.id, "https://clinic.example/hook", "s2")
        .await
        .unwrap();
    assert_eq!(
        hook.created_at, first.created_at,
        "put replaces, keeps the row"
    );
    assert_eq!(
        (hook.url.as_str(), hook.secret.as_str()),
        ("https://clinic.example/hook", "s2")
    );
    assert_eq!(store.get_webhook(&org.id).await.unwrap(), hook);
    assert_not_found(store.get_webhook(&other.id).await, "other org's webhook");

    // Confirming queues the event in the same transaction as the status change.
    let rx = insert_prescription(store, &conv).await;
    let key = format!("{}:action.confirmed", rx.id);
    let (confirmed, queued) = store
        .update_action(&org.id, &rx.id, confirm(&rx, &key))
        .await
        .unwrap();
    let queued = queued.expect("a delivery is queued when a webhook exists");
    assert_eq!(confirmed.status, "confirmed");
    assert_eq!(
        (queued.status, queued.attempts),
        (DeliveryStatus::Pending, 0)
    );
    assert_eq!(queued.action_id, rx.id);
    assert_eq!(queued.idempotency_key, key);
    assert_eq!(queued.payload["actionId"], rx.id.as_str());

    // A second event with the same key is a conflict and rolls the status change back too.
    let rx2 = insert_prescription(store, &conv).await;
    let dup = store
        .update_action(&org.id, &rx2.id, confirm(&rx2, &key))
        .await;
    assert!(
        matches!(dup, Err(Error::Conflict(_))),
        "duplicate key: {dup:?}"
    );
    assert_eq!(store.get_action(&org.id, &rx2.id).await.unwrap(), rx2);

    let listed = store
        .list_deliveries(&org.id, None, &Page::default())
        .await
        .unwrap();
    assert_eq!(listed, vec![queued.clone()]);
    assert_eq!(
        store
            .list_deliveries(&org.id, Some(&rx.id), &Page::default())
            .await
            .unwrap(),
        vec![queued.clone()]
    );
    assert!(store
        .list_deliveries(&org.id, Some(&rx2.id), &Page::default())
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_deliveries(&other.id, None, &Page::default())
        .await
        .unwrap()
        .is_empty());

    // Claims and leases. Other runs' rows may be due too, so look for this row only.
    const ALL: u32 = 100_000;
    let t = queued.next_attempt_at;
    let mine = |claimed: Vec<super::ClaimedDelivery>| {
        claimed.into_iter().find(|c| c.delivery.id == queued.id)
    };
    assert!(mine(store.claim_deliveries(t - 1, t + 1_000, ALL).await.unwrap()).is_none());
    let c1 = mine(store.claim_deliveries(t, t + 1_000, ALL).await.unwrap()).expect("due");
    assert_eq!(c1.delivery.attempts, 1, "a claim counts the attempt");
    assert_eq!(
        (c1.url.as_str(), c1.secret.as_str()),
        (hook.url.as_str(), "s2")
    );
    assert!(
        mine(
            store
                .claim_deliveries(t + 500, t + 1_500, ALL)
                .await
                .unwrap()
        )
        .is_none(),
        "leased rows are not claimed twice"
    );
    // The first worker "crashed": its lease runs out and the row is due again.
    let c2 = mine(
        store
            .claim_deliveries(t + 1_000, t + 2_000, ALL)
            .await
            .unwrap(),
    )
    .expect("an expired lease makes the row due again");
    assert_eq!(c2.delivery.attempts, 2);
    assert_ne!(c2.lease_token, c1.lease_token);

    let attempt = |claim: &super::ClaimedDelivery, token: &str, outcome| NewDeliveryAttempt {
        delivery_id: claim.delivery.id.clone(),
        lease_token: token.to_owned(),
        attempt: claim.delivery.attempts,
        started_at: t,
        duration_ms: 12,
        status_code: Some(500),
        error: Some("HTTP 500".into()),
        outcome,
    };
    // The dead worker's late report is logged but does not touch the row the new lease holds.
    store
        .record_delivery_attempt(attempt(&c1, &c1.lease_token, DeliveryOutcome::GiveUp))
        .await
        .unwrap();
    let row = &store
        .list_deliveries(&org.id, None, &Page::default())
        .await
        .unwrap()[0];
    assert_eq!((row.status, row.attempts), (DeliveryStatus::Pending, 2));
    store
        .record_delivery_attempt(attempt(
            &c2,
            &c2.lease_token,
            DeliveryOutcome::Retry {
                next_attempt_at: t + 5_000,
            },
        ))
        .await
        .unwrap();
    let row = &store
        .list_deliveries(&org.id, None, &Page::default())
        .await
        .unwrap()[0];
    assert_eq!(
        (row.status, row.next_attempt_at),
        (DeliveryStatus::Pending, t + 5_000)
    );
    assert_eq!(row.last_error.as_deref(), Some("HTTP 500"));
    assert!(mine(
        store
            .claim_deliveries(t + 4_999, t + 9_000, ALL)
            .await
            .unwrap()
    )
    .is_none());
    let c3 = mine(
        store
            .claim_deliveries(t + 5_000, t + 9_000, ALL)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(c3.delivery.attempts, 3);
    store
        .record_delivery_attempt(attempt(&c3, &c3.lease_token, DeliveryOutcome::GiveUp))
        .await
        .unwrap();
    let row = &store
        .list_deliveries(&org.id, None, &Page::default())
        .await
        .unwrap()[0];
    assert_eq!(row.status, DeliveryStatus::Failed);
    assert!(mine(
        store
            .claim_deliveries(t + 60_000, t + 61_000, ALL)
            .await
            .unwrap()
    )
    .is_none());

    let log = store
        .list_delivery_attempts(&org.id, &[queued.id.clone(), new_id()])
        .await
        .unwrap();
    assert_eq!(log.len(), 3, "every reported attempt is logged");
    assert!(log
        .iter()
        .all(|a| a.delivery_id == queued.id && a.status_code == Some(500) && a.duration_ms == 12));
    assert!(store
        .list_delivery_attempts(&other.id, std::slice::from_ref(&queued.id))
        .await
        .unwrap()
        .is_empty());

    // An admin retry makes it pending again with a fresh budget; only failed rows qualify.
    assert_not_found(
        store
            .retry_delivery(&other.id, &queued.id, t + 70_000)
            .await,
        "retry through another organization",
    );
    let retried = store
        .retry_delivery(&org.id, &queued.id, t + 70_000)
        .await
        .unwrap();
    assert_eq!(
        (retried.status, retried.attempts),
        (DeliveryStatus::Pending, 0)
    );
    assert!(matches!(
        store.retry_delivery(&org.id, &queued.id, t + 70_000).await,
        Err(Error::Conflict(_))
    ));
    let c4 = mine(
        store
            .claim_deliveries(t + 70_000, t + 71_000, ALL)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(c4.delivery.attempts, 1);
    // A 2xx wins even when reported under a lost lease: the receiver has it.
    store
        .record_delivery_attempt(NewDeliveryAttempt {
            status_code: Some(204),
            error: None,
            ..attempt(&c4, "an-expired-lease", DeliveryOutcome::Delivered)
        })
        .await
        .unwrap();
    let row = &store
        .list_deliveries(&org.id, None, &Page::default())
        .await
        .unwrap()[0];
    assert_eq!(row.status, DeliveryStatus::Delivered);
    assert!(row.delivered_at.is_some());
    assert_eq!(row.last_error, None);
    assert!(
        mine(
            store
                .claim_deliveries(t + 99_000, t + 99_500, ALL)
                .await
                .unwrap()
        )
        .is_none(),
        "a delivered row is never claimed again"
    );
    assert!(matches!(
        store.retry_delivery(&org.id, &queued.id, t + 99_000).await,
        Err(Error::Conflict(_))
    ));

    // Pagination, newest first.
    let (_, second) = store
        .update_action(&org.id, &rx2.id, confirm(&rx2, &format!("{}:c", rx2.id)))
        .await
        .unwrap();
    let second = second.unwrap();
    let page1 = store
        .list_deliveries(
            &org.id,
            None,
            &Page {
                after: None,
                limit: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page1.iter().map(|d| &d.id).collect::<Vec<_>>(),
        [&second.id]
    );
    let page2 = store
        .list_deliveries(
            &org.id,
            None,
            &Page {
                after: Some(second.id.clone()),
                limit: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|d| &d.id).collect::<Vec<_>>(),
        [&queued.id]
    );
    assert_not_found(
        store
            .list_deliveries(
                &org.id,
                None,
                &Page {
                    after: Some(new_id()),
                    limit: 1,
                },
            )
            .await,
        "unknown delivery cursor",
    );
    assert_not_found(
        store
            .list_deliveries(
                &org.id,
                Some(&queued.action_id),
                &Page {
                    after: Some(second.id.clone()),
                    limit: 1,
                },
            )
            .await,
        "cursor of another action's delivery",
    );

    // Removing the webhook fails what is still pending and stops claims for it.
    store.delete_webhook(&org.id).await.unwrap();
    assert_not_found(store.get_webhook(&org.id).await, "deleted webhook");
    assert_not_found(store.delete_webhook(&org.id).await, "deleting twice");
    let rows = store
        .list_deliveries(&org.id, None, &Page::default())
        .await
        .unwrap();
    let pending = rows.iter().find(|d| d.id == second.id).unwrap();
    assert_eq!(pending.status, DeliveryStatus::Failed);
    assert_eq!(pending.last_error.as_deref(), Some("webhook removed"));
    let delivered = rows.iter().find(|d| d.id == queued.id).unwrap();
    assert_eq!(
        delivered.status,
        DeliveryStatus::Delivered,
        "history is kept"
    );
    // A 2xx that arrives after the row was failed (the request was in flight) still counts.
    store
        .record_delivery_attempt(NewDeliveryAttempt {
            delivery_id: second.id.clone(),
            lease_token: "the-lease-of-the-in-flight-request".into(),
            attempt: 1,
            started_at: t,
            duration_ms: 5,
            status_code: Some(200),
            error: None,
            outcome: DeliveryOutcome::Delivered,
        })
        .await
        .unwrap();
    let rows = store
        .list_deliveries(&org.id, None, &Page::default())
        .await
        .unwrap();
    let late = rows.iter().find(|d| d.id == second.id).unwrap();
    assert_eq!(late.status, DeliveryStatus::Delivered);
    assert!(matches!(
        store.retry_delivery(&org.id, &second.id, t).await,
        Err(Error::Conflict(_))
    ));
}

async fn audit(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    let (other, _) = tenant(store).await;
    let entry = |action: &str, user_id: Option<&str>| NewAuditEntry {
        organization_id: org.id.clone(),
        user_id: user_id.map(str::to_owned),
        action: action.into(),
        entity_type: "conversation".into(),
        entity_id: "c1".into(),
        ..NewAuditEntry::default()
    };
    for action in ["create", "read", "update", "export"] {
        store
            .record_audit(entry(action, Some(&user.id)))
            .await
            .unwrap();
    }
    store.record_audit(entry("login", None)).await.unwrap();

    let all = store.list_audit(&org.id, 100).await.unwrap();
    let actions: Vec<_> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["login", "export", "update", "read", "create"],
        "newest first"
    );
    assert_eq!(all[0].user_id, None);
    assert_eq!(all[1].user_id.as_deref(), Some(user.id.as_str()));
    assert!(all.windows(2).all(|w| w[0].at >= w[1].at));
    assert!(all
        .iter()
        .all(|e| e.record_ids.is_empty() && e.remote_addr.is_none()));
    let two = store.list_audit(&org.id, 2).await.unwrap();
    assert_eq!(two, all[..2].to_vec());
    assert!(store.list_audit(&other.id, 100).await.unwrap().is_empty());
}

/// The admin search: filters combine, a record id matches `entity_id` or `record_ids`, the
/// `before` cursor pages without repeats, and another organization's entries never match.
async fn audit_search(store: &dyn Store) {
    let (org, alice) = tenant(store).await;
    let (other, stranger) = tenant(store).await;
    let read =
        |org: &Organization, user: &User, action: &str, entity: &str, ids: &[&str]| NewAuditEntry {
            organization_id: org.id.clone(),
            user_id: Some(user.id.clone()),
            action: action.into(),
            entity_type: "conversation".into(),
            entity_id: entity.into(),
            record_ids: ids.iter().map(|s| s.to_string()).collect(),
            remote_addr: Some("127.0.0.1".into()),
        };
    let bob = store
        .create_user(NewUser {
            organization_id: org.id.clone(),
            username: format!("bob-{}", new_id()),
            password_hash: "x".into(),
            preferred_language: "en".into(),
            role: UserRole::Clinician,
        })
        .await
        .unwrap();
    let rows = [
        read(&org, &alice, "conversation.read", "c1", &["p1"]),
        read(&org, &bob, "conversation.messages.read", "c1", &["p1"]),
        read(&org, &alice, "patient.list", "*", &["p1", "p2"]),
        read(&org, &alice, "patient.read", "p2", &[]),
        // Ids that look like JSON or SQL are matched as whole values, never as patterns.
        read(&org, &bob, "patient.list", "*", &["p%", "\"p1\"", "p1,p2"]),
        read(&other, &stranger, "patient.read", "p1", &["p1"]),
    ];
    for row in rows {
        store.record_audit(row).await.unwrap();
    }
    let org_id = org.id.as_str();
    let search = |q: AuditQuery| async move { store.search_audit(org_id, &q).await.unwrap() };
    let shape = |rows: Vec<AuditEntry>| -> Vec<(String, String)> {
        rows.into_iter().map(|e| (e.action, e.entity_id)).collect()
    };
    let pair = |a: &str, e: &str| (a.to_owned(), e.to_owned());

    let all = search(AuditQuery::default()).await;
    assert_eq!(all.len(), 5, "the other organization's entry never appears");
    assert_eq!(all[0].record_ids, ["p%", "\"p1\"", "p1,p2"]);
    assert_eq!(all[0].remote_addr.as_deref(), Some("127.0.0.1"));

    let p1 = search(AuditQuery {
        record_id: Some("p1".into()),
        ..AuditQuery::default()
    })
    .await;
    assert_eq!(
        shape(p1),
        [
            pair("patient.list", "*"),
            pair("conversation.messages.read", "c1"),
            pair("conversation.read", "c1"),
        ]
    );
    let p2 = search(AuditQuery {
        record_id: Some("p2".into()),
        user_id: Some(alice.id.clone()),
        ..AuditQuery::default()
    })
    .await;
    assert_eq!(
        shape(p2),
        [pair("patient.read", "p2"), pair("patient.list", "*")]
    );
    let bobs_lists = search(AuditQuery {
        user_id: Some(bob.id.clone()),
        action: Some("patient.list".into()),
        ..AuditQuery::default()
    })
    .await;
    assert_eq!(bobs_lists.len(), 1);
    for missing in ["p", "%", "p1,p2,"] {
        let none = search(AuditQuery {
            record_id: Some(missing.into()),
            ..AuditQuery::default()
        })
        .await;
        assert!(none.is_empty(), "{missing:?} matched {none:?}");
    }

    // Paging with `before` walks the same rows, newest first, without repeats.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = search(AuditQuery {
            before: before.clone(),
            limit: 2,
            ..AuditQuery::default()
        })
        .await;
        if page.is_empty() {
            break;
        }
        before = page.last().map(|e| e.id.clone());
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let stranger_cursor = store.list_audit(&other.id, 1).await.unwrap().remove(0).id;
    for cursor in [stranger_cursor, "nope".to_owned()] {
        let q = AuditQuery {
            before: Some(cursor),
            ..AuditQuery::default()
        };
        assert!(matches!(
            store.search_audit(&org.id, &q).await,
            Err(Error::NotFound)
        ));
    }
}

async fn verbatim_strings(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    for (i, s) in NASTY.iter().enumerate() {
        let username = format!("{s}-{}", new_id());
        let u = store
            .create_user(NewUser {
                organization_id: org.id.clone(),
                username: username.clone(),
                password_hash: s.to_string(),
                preferred_language: "en".into(),
                role: UserRole::Clinician,
            })
            .await
            .unwrap();
        assert_eq!(store.user_by_username(&username).await.unwrap(), u);
        assert_eq!(u.password_hash, *s);

        let (p, created) = store
            .find_or_create_patient(new_patient(&org.id, s, &format!("{s}{i}")))
            .await
            .unwrap();
        assert!(created);
        assert_eq!(
            store.get_patient(&org.id, &p.id).await.unwrap().first_name,
            *s
        );
        let found = store
            .list_patients(&org.id, Some(&format!("{s}{i}")), &Page::default())
            .await
            .unwrap();
        assert!(found.iter().any(|x| x.id == p.id), "search by {s:?}");

        let conv = conversation(store, &org, &user).await;
        let mut m = new_message(&conv, SenderType::Patient, s);
        m.translated_text = Some(s.to_string());
        m.stt_item_id = Some(s.to_string());
        m.speaker_source = Some(s.to_string());
        let mut timings = serde_json::Map::new();
        timings.insert(s.to_string(), json!(s));
        m.timings = Some(timings.into());
        let stored = store.insert_message(m).await.unwrap().into_inner();
        let listed = store.list_messages(&conv, &Page::default()).await.unwrap();
        assert_eq!(listed, vec![stored]);
        assert_eq!(listed[0].original_text, *s);

        let doc = store
            .upsert_document(DocumentKind::Summary, &conv, s)
            .await
            .unwrap();
        assert_eq!(doc.content, *s);
        store
            .record_audit(NewAuditEntry {
                organization_id: org.id.clone(),
                user_id: Some(s.to_string()),
                action: s.to_string(),
                entity_type: s.to_string(),
                entity_id: s.to_string(),
                record_ids: vec![s.to_string()],
                remote_addr: Some(s.to_string()),
            })
            .await
            .unwrap();
        let last = store.list_audit(&org.id, 1).await.unwrap();
        assert_eq!(last[0].entity_id, *s);
        assert_eq!(last[0].record_ids, [*s]);
        assert_eq!(last[0].remote_addr.as_deref(), Some(*s));
    }
    // The tables the strings aimed at are still there.
    assert!(store.count_users().await.unwrap() > 0);
    store.user_by_id(&user.id).await.unwrap();
}

fn command(name: &str, produces: CommandProduces) -> CommandDefinition {
    CommandDefinition {
        name: name.into(),
        description: "Refer the patient to a specialist.".into(),
        examples: vec!["refer to cardiology".into(), NASTY[0].into()],
        parameters: json!({"type": "object", "properties": {"specialty": {"type": "string"}},
            "required": ["specialty"]}),
        produces,
    }
}

async fn clinic_commands(store: &dyn Store) {
    let (org, _) = tenant(store).await;
    let (other, _) = tenant(store).await;
    let referral = CommandProduces::Action {
        action_type: "referral".into(),
    };
    let refer = store
        .create_command(&org.id, command("refer_patient", referral.clone()))
        .await
        .unwrap();
    assert_eq!(refer.organization_id, org.id);
    assert_eq!(refer.created_at, refer.updated_at);
    assert_eq!(store.get_command(&org.id, &refer.id).await.unwrap(), refer);
    let hook = store
        .create_command(&org.id, command("Notify-Billing", CommandProduces::Webhook))
        .await
        .unwrap();
    assert_eq!(hook.definition.produces, CommandProduces::Webhook);

    // Unique per organization, case-insensitively; other organizations may reuse a name.
    for dup in ["refer_patient", "REFER_PATIENT"] {
        let r = store
            .create_command(&org.id, command(dup, CommandProduces::Webhook))
            .await;
        assert!(matches!(r, Err(Error::Conflict(_))), "{dup}: {r:?}");
    }
    let elsewhere = store
        .create_command(&other.id, command("refer_patient", referral.clone()))
        .await
        .unwrap();

    // Listed by name (byte order: upper case first), scoped to the organization.
    let listed = store.list_commands(&org.id).await.unwrap();
    assert_eq!(listed, vec![hook.clone(), refer.clone()]);
    assert_eq!(
        store.list_commands(&other.id).await.unwrap(),
        vec![elsewhere.clone()]
    );
    assert_not_found(store.get_command(&other.id, &refer.id).await, "foreign get");

    // A full replacement keeps the id and creation time.
    let mut changed = command("refer_to_specialist", CommandProduces::Webhook);
    changed.examples = vec![];
    changed.parameters = json!({"type": "object", "properties": {}});
    let updated = store
        .update_command(&org.id, &refer.id, changed.clone())
        .await
        .unwrap();
    assert_eq!(updated.id, refer.id);
    assert_eq!(updated.created_at, refer.created_at);
    assert!(updated.updated_at >= refer.updated_at);
    assert_eq!(updated.definition, changed);
    assert_eq!(
        store.get_command(&org.id, &refer.id).await.unwrap(),
        updated
    );
    let renamed_onto = store
        .update_command(
            &org.id,
            &refer.id,
            command("notify-billing", referral.clone()),
        )
        .await;
    assert!(
        matches!(renamed_onto, Err(Error::Conflict(_))),
        "{renamed_onto:?}"
    );
    assert_not_found(
        store.update_command(&other.id, &refer.id, changed).await,
        "foreign update",
    );

    assert_not_found(
        store.delete_command(&other.id, &refer.id).await,
        "foreign delete",
    );
    store.delete_command(&org.id, &refer.id).await.unwrap();
    assert_not_found(
        store.delete_command(&org.id, &refer.id).await,
        "second delete",
    );
    assert_not_found(store.get_command(&org.id, &refer.id).await, "deleted get");
    assert_eq!(store.list_commands(&org.id).await.unwrap(), vec![hook]);
    // The freed name can be taken again.
    store
        .create_command(&org.id, command("refer_patient", referral))
        .await
        .unwrap();
}

async fn user_settings(store: &dyn Store) {
    let (_, user) = tenant(store).await;
    let (_, other) = tenant(store).await;
    assert_eq!(
        store.user_settings(&user.id).await.unwrap(),
        UserSettings::default(),
        "defaults without a stored row"
    );
    assert!(UserSettings::default().builtin_commands);
    let quiet = UserSettings {
        builtin_commands: false,
        wake_phrase: Some("hey tandem".into()),
    };
    store.set_user_settings(&user.id, &quiet).await.unwrap();
    assert_eq!(store.user_settings(&user.id).await.unwrap(), quiet);
    assert_eq!(
        store.user_settings(&other.id).await.unwrap(),
        UserSettings::default(),
        "per user"
    );
    let loud = UserSettings {
        builtin_commands: true,
        wake_phrase: None,
    };
    store.set_user_settings(&user.id, &loud).await.unwrap();
    assert_eq!(store.user_settings(&user.id).await.unwrap(), loud);
    assert_not_found(
        store.set_user_settings(&new_id(), &quiet).await,
        "unknown user",
    );
}

/// What [`clinical_record`] wrote for one conversation, to check it is gone or kept whole.
struct Record {
    org: String,
    conversation: String,
    action: String,
}

/// A conversation of the patient with a row in every table keyed by it: messages, an action
/// with a queued webhook delivery, a summary and a medical history. Ended unless `active`.
async fn clinical_record(
    store: &dyn Store,
    org: &Organization,
    user: &User,
    patient_id: &str,
    active: bool,
) -> Record {
    let conversation = store
        .create_conversation(NewConversation {
            organization_id: org.id.clone(),
            user_id: user.id.clone(),
            patient_id: patient_id.into(),
            clinician_language: "en".into(),
            patient_language: "es".into(),
        })
        .await
        .unwrap()
        .id;
    let original = store
        .insert_message(new_message(&conversation, SenderType::Patient, "me duele"))
        .await
        .unwrap()
        .into_inner();
    store
        .insert_message(NewMessage {
            original_message_id: Some(original.id),
            ..new_message(&conversation, SenderType::Translation, "it hurts")
        })
        .await
        .unwrap();
    store
        .put_webhook(&org.id, "http://127.0.0.1:9/hook", "secret")
        .await
        .unwrap();
    let rx = insert_prescription(store, &conversation).await;
    let (_, queued) = store
        .update_action(&org.id, &rx.id, confirm(&rx, &format!("{}:c", rx.id)))
        .await
        .unwrap();
    assert!(queued.is_some(), "the action's delivery is queued");
    for kind in [DocumentKind::Summary, DocumentKind::MedicalHistory] {
        store
            .upsert_document(kind, &conversation, "history of pain")
            .await
            .unwrap();
    }
    if !active {
        store
            .set_conversation_status(
                &org.id,
                &conversation,
                ConversationStatus::Ended,
                Some(now_millis()),
            )
            .await
            .unwrap();
    }
    Record {
        org: org.id.clone(),
        conversation,
        action: rx.id,
    }
}

impl Record {
    async fn assert_gone(&self, store: &dyn Store) {
        assert_not_found(
            store.get_conversation(&self.org, &self.conversation).await,
            "deleted conversation",
        );
        let id = &self.conversation;
        assert!(store
            .list_messages(id, &Page::default())
            .await
            .unwrap()
            .is_empty());
        assert!(store.list_actions(id).await.unwrap().is_empty());
        assert_not_found(
            store.get_action(&self.org, &self.action).await,
            "its action",
        );
        assert!(store
            .list_deliveries(&self.org, Some(&self.action), &Page::default())
            .await
            .unwrap()
            .is_empty());
        for kind in [DocumentKind::Summary, DocumentKind::MedicalHistory] {
            assert_eq!(store.get_document(kind, id).await.unwrap(), None);
        }
    }

    async fn assert_kept(&self, store: &dyn Store) {
        store
            .get_conversation(&self.org, &self.conversation)
            .await
            .unwrap();
        let id = &self.conversation;
        assert_eq!(
            store
                .list_messages(id, &Page::default())
                .await
                .unwrap()
                .len(),
            2
        );
        store.get_action(&self.org, &self.action).await.unwrap();
        assert_eq!(
            store
                .list_deliveries(&self.org, Some(&self.action), &Page::default())
                .await
                .unwrap()
                .len(),
            1
        );
        for kind in [DocumentKind::Summary, DocumentKind::MedicalHistory] {
            assert!(store.get_document(kind, id).await.unwrap().is_some());
        }
    }
}

async fn patient_erasure(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    let (other, _) = tenant(store).await;
    let (patient, _) = store
        .find_or_create_patient(new_patient(&org.id, "Erased", &new_id()))
        .await
        .unwrap();
    let (neighbour, _) = store
        .find_or_create_patient(new_patient(&org.id, "Kept", &new_id()))
        .await
        .unwrap();
    let ended = clinical_record(store, &org, &user, &patient.id, false).await;
    let live = clinical_record(store, &org, &user, &patient.id, true).await;
    let kept = clinical_record(store, &org, &user, &neighbour.id, false).await;
    let audit = || NewAuditEntry {
        organization_id: org.id.clone(),
        user_id: Some(user.id.clone()),
        action: "delete".into(),
        entity_type: "patient".into(),
        entity_id: patient.id.clone(),
        record_ids: Vec::new(),
        remote_addr: Some("192.0.2.7".into()),
    };
    let audit_rows = store.list_audit(&org.id, 100).await.unwrap().len();

    assert_not_found(
        store
            .delete_patient(
                &other.id,
                &patient.id,
                NewAuditEntry {
                    organization_id: other.id.clone(),
                    ..audit()
                },
            )
            .await,
        "another organization's patient",
    );
    assert_not_found(
        store.delete_patient(&org.id, &new_id(), audit()).await,
        "unknown patient",
    );
    let refused = store.delete_patient(&org.id, &patient.id, audit()).await;
    assert!(
        matches!(refused, Err(Error::Conflict(_))),
        "active conversation: {refused:?}"
    );
    ended.assert_kept(store).await;
    live.assert_kept(store).await;
    assert_eq!(
        store.list_audit(&org.id, 100).await.unwrap().len(),
        audit_rows,
        "a refused delete is not audited"
    );

    store
        .set_conversation_status(
            &org.id,
            &live.conversation,
            ConversationStatus::Ended,
            Some(now_millis()),
        )
        .await
        .unwrap();
    let mut deleted = store
        .delete_patient(&org.id, &patient.id, audit())
        .await
        .unwrap();
    deleted.sort();
    let mut expected = vec![ended.conversation.clone(), live.conversation.clone()];
    expected.sort();
    assert_eq!(deleted, expected);
    assert_not_found(store.get_patient(&org.id, &patient.id).await, "deleted");
    ended.assert_gone(store).await;
    live.assert_gone(store).await;
    kept.assert_kept(store).await;
    assert_eq!(
        store.get_patient(&org.id, &neighbour.id).await.unwrap(),
        neighbour
    );
    let trail = store.list_audit(&org.id, 1).await.unwrap();
    assert_eq!(
        (
            trail[0].action.as_str(),
            trail[0].entity_type.as_str(),
            trail[0].entity_id.as_str(),
            trail[0].user_id.as_deref(),
            trail[0].remote_addr.as_deref()
        ),
        (
            "delete",
            "patient",
            patient.id.as_str(),
            Some(user.id.as_str()),
            Some("192.0.2.7")
        )
    );
    assert_not_found(
        store.delete_patient(&org.id, &patient.id, audit()).await,
        "deleted twice",
    );
}

/// Sleeps past the current millisecond, so rows written before and after compare strictly.
async fn next_millisecond() {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
}

async fn retention(store: &dyn Store) {
    let (org, user) = tenant(store).await;
    let patient = |last: String| new_patient(&org.id, "Old", &last);
    let mut records = Vec::new();
    for active in [false, true, false, false] {
        let (p, _) = store
            .find_or_create_patient(patient(new_id()))
            .await
            .unwrap();
        records.push(clinical_record(store, &org, &user, &p.id, active).await);
    }
    let [ended, abandoned, live, spoken_since] = <[Record; 4]>::try_from(records).ok().unwrap();
    next_millisecond().await;
    let cutoff = now_millis();
    next_millisecond().await;
    // Activity after the cutoff keeps an old conversation.
    store
        .insert_message(new_message(
            &spoken_since.conversation,
            SenderType::Clinician,
            "still here",
        ))
        .await
        .unwrap();
    let (p, _) = store
        .find_or_create_patient(patient(new_id()))
        .await
        .unwrap();
    let recent = clinical_record(store, &org, &user, &p.id, false).await;

    let keep = vec![live.conversation.clone()];
    let mut deleted = Vec::new();
    loop {
        // A small batch, to check that batches continue where the last one stopped.
        let batch = store
            .delete_conversations_inactive_since(cutoff, &keep, 2)
            .await
            .unwrap();
        assert!(batch.len() <= 2);
        if batch.is_empty() {
            break;
        }
        deleted.extend(batch);
    }
    assert!(deleted.contains(&ended.conversation));
    assert!(
        deleted.contains(&abandoned.conversation),
        "a never-ended conversation expires by its last activity"
    );
    for kept in [&live, &spoken_since, &recent] {
        assert!(!deleted.contains(&kept.conversation));
    }
    ended.assert_gone(store).await;
    abandoned.assert_gone(store).await;
    live.assert_kept(store).await;
    recent.assert_kept(store).await;
    store
        .get_conversation(&org.id, &spoken_since.conversation)
        .await
        .unwrap();
    assert_eq!(
        store
            .list_messages(&spoken_since.conversation, &Page::default())
            .await
            .unwrap()
            .len(),
        3
    );
    // The clinician and the patients are not conversation rows: they stay.
    store.user_by_id(&user.id).await.unwrap();
    assert!(store
        .delete_conversations_inactive_since(cutoff, &keep, 100)
        .await
        .unwrap()
        .is_empty());
}

/// Text stored by [`store_sealed_texts`], each containing its marker.
#[derive(Debug, Clone)]
pub struct SealedTexts {
    pub organization_id: String,
    pub conversation_id: String,
    pub message_id: String,
    pub action_id: String,
    pub delivery_id: String,
    /// The marker that every sealed value contains in plaintext.
    pub marker: String,
}

/// Stores one value in every sealed column, each containing a fresh marker, so a backend test
/// can look at the raw database for the marker (it must not be there).
///
/// # Panics
/// If a store call fails.
pub async fn store_sealed_texts(store: &dyn Store) -> SealedTexts {
    let marker = format!("chest-pain-{}", new_id());
    let (org, user) = tenant(store).await;
    let conv = conversation(store, &org, &user).await;
    let mut new = new_message(&conv, SenderType::Patient, &format!("{marker} original"));
    new.translated_text = Some(format!("{marker} translated"));
    let message = store.insert_message(new).await.unwrap().into_inner();
    let action = store
        .insert_action(NewAction {
            conversation_id: conv.clone(),
            kind: "note".into(),
            status: "pending_review".into(),
            data: json!({"content": format!("{marker} draft")}),
        })
        .await
        .unwrap();
    store
        .put_webhook(&org.id, "https://clinic.example/hook", "secret")
        .await
        .unwrap();
    let (action, delivery) = store
        .update_action(
            &org.id,
            &action.id,
            ActionChange {
                expected_updated_at: action.updated_at,
                status: "confirmed".into(),
                data: json!({"content": format!("{marker} note")}),
                updated_at: next_updated_at(action.updated_at),
                delivery: Some(NewDelivery {
                    event: "action.confirmed".into(),
                    idempotency_key: format!("{}:action.confirmed", action.id),
                    payload: json!({"action": {"content": format!("{marker} event")}}),
                }),
            },
        )
        .await
        .unwrap();
    store
        .upsert_document(DocumentKind::Summary, &conv, &format!("{marker} summary"))
        .await
        .unwrap();
    SealedTexts {
        organization_id: org.id,
        conversation_id: conv,
        message_id: message.id,
        action_id: action.id,
        delivery_id: delivery.unwrap().id,
        marker,
    }
}

/// Reads every value [`store_sealed_texts`] stored through `store` and checks the text.
///
/// # Errors
/// The first store error (e.g. [`Error::Crypto`] when a key is missing).
///
/// # Panics
/// If a value reads back as a different text.
pub async fn read_sealed_texts(store: &dyn Store, texts: &SealedTexts) -> Result<(), Error> {
    let m = &texts.marker;
    let messages = store
        .list_messages(&texts.conversation_id, &Page::default())
        .await?;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].original_text, format!("{m} original"));
    assert_eq!(
        messages[0].translated_text.as_deref(),
        Some(format!("{m} translated").as_str())
    );
    let action = store
        .get_action(&texts.organization_id, &texts.action_id)
        .await?;
    assert_eq!(action.data, json!({"content": format!("{m} note")}));
    let summary = store
        .get_document(DocumentKind::Summary, &texts.conversation_id)
        .await?
        .unwrap();
    assert_eq!(summary.content, format!("{m} summary"));
    let deliveries = store
        .list_deliveries(
            &texts.organization_id,
            Some(&texts.action_id),
            &Page::default(),
        )
        .await?;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].id, texts.delivery_id);
    assert_eq!(
        deliveries[0].payload,
        json!({"action": {"content": format!("{m} event")}})
    );
    Ok(())
}

/// What re-encryption reports when every value is already under the active key.
pub const NOTHING_LEFT: Reencrypted = Reencrypted {
    values: 0,
    plaintext: 0,
    done: true,
};

/// Re-encrypts until nothing is left under another key; returns how many values changed.
async fn reencrypt_all(store: &dyn Store) -> Reencrypted {
    let mut total = Reencrypted::default();
    while !total.done {
        let batch = store.reencrypt_batch(7).await.unwrap();
        total.values += batch.values;
        total.plaintext += batch.plaintext;
        total.done = batch.done;
    }
    total
}

/// Values written by this store are already under its active key: re-encryption finds nothing
/// of them to do, however often it runs, and they read back unchanged.
async fn reencryption_is_idempotent(store: &dyn Store) {
    let texts = store_sealed_texts(store).await;
    // The database may hold earlier runs' values under other keys (a rotated test database);
    // a first pass brings them to this store's key.
    reencrypt_all(store).await;
    assert_eq!(store.reencrypt_batch(100).await.unwrap().values, 0);
    assert_eq!(reencrypt_all(store).await, NOTHING_LEFT);
    read_sealed_texts(store, &texts).await.unwrap();
}

/// Key rotation across three handles on one database: `old` has only key A, `rotating` has B
/// (active) then A, `new` has only B.
///
/// # Panics
/// If rotation loses a value, a removed key still reads, or a missing key is not a clear
/// [`Error::Crypto`].
pub async fn key_rotation(old: &dyn Store, rotating: &dyn Store, new: &dyn Store) {
    let texts = store_sealed_texts(old).await;
    read_sealed_texts(rotating, &texts).await.unwrap();
    match read_sealed_texts(new, &texts).await {
        Err(Error::Crypto(crypto::Error::UnknownKey(_))) => {}
        other => panic!("a value under a key that is not configured: got {other:?}"),
    }
    // Five sealed values at least (two message texts, the action, its event, the summary).
    let rotated = reencrypt_all(rotating).await;
    assert!(rotated.values >= 5);
    assert_eq!(
        rotated.plaintext, 0,
        "sealed values are not counted as plaintext"
    );
    assert_eq!(
        rotating.reencrypt_batch(100).await.unwrap(),
        NOTHING_LEFT,
        "re-run"
    );
    read_sealed_texts(new, &texts).await.unwrap();
    read_sealed_texts(rotating, &texts).await.unwrap();
    match read_sealed_texts(old, &texts).await {
        Err(e @ Error::Crypto(crypto::Error::UnknownKey(_))) => {
            assert_eq!(e.code(), "internal");
        }
        other => panic!("the old key alone no longer reads rotated values: got {other:?}"),
    }
}

/// A plaintext value written into the database around Tandem: refused while the store requires
/// sealed values, read otherwise, and which one applies by default. Needs a database of its
/// own (it counts the plaintext rotation finds).
///
/// - `open(setting)` opens another handle on the database with `TANDEM_REQUIRE_SEALED` set
///   to `setting`;
/// - `put_plaintext(message_id, text)` writes `text` as that message's raw `original_text`, as
///   someone with write access to the database would;
/// - `execute(sql)` runs a statement on the database directly.
///
/// # Panics
/// If a plaintext value is shown under the switch or refused with another error than a value
/// that fails to open; if it is refused without the switch; if the default is not "refuse" for
/// a new database, "read" for one upgraded with plaintext rows, and "refuse" once rotation
/// has sealed them; or if rotation does not count the plaintext it sealed.
pub async fn unsealed_values(
    open: impl AsyncFn(Option<bool>) -> Box<dyn Store>,
    put_plaintext: impl AsyncFn(&str, &str),
    execute: impl AsyncFn(&str),
) {
    let refused = async |store: &dyn Store, texts: &SealedTexts, why: &str| {
        match read_sealed_texts(store, texts).await {
            // The class a tampered value has, so clients see the same 500 `internal`.
            Err(e @ Error::Crypto(crypto::Error::Unsealed)) => assert_eq!(e.code(), "internal"),
            other => panic!("{why}: a plaintext value must be refused, got {other:?}"),
        }
    };
    // A new database holds no plaintext, so the default refuses it from the start.
    let new = open(None).await;
    let texts = store_sealed_texts(new.as_ref()).await;
    read_sealed_texts(new.as_ref(), &texts).await.unwrap();
    // The forgery carries the text the real row had, so only the envelope check can tell.
    let forged = format!("{} original", texts.marker);
    put_plaintext(&texts.message_id, &forged).await;
    refused(new.as_ref(), &texts, "a new database").await;
    let lenient = open(Some(false)).await;
    read_sealed_texts(lenient.as_ref(), &texts).await.unwrap();

    // The same database as an older version left it: schema version 7, a plaintext row.
    execute("DROP TABLE encryption_state").await;
    execute("DELETE FROM schema_migrations WHERE version = 8").await;
    let upgraded = open(None).await;
    read_sealed_texts(upgraded.as_ref(), &texts).await.unwrap();
    refused(open(Some(true)).await.as_ref(), &texts, "the switch on").await;

    let rotated = reencrypt_all(upgraded.as_ref()).await;
    assert_eq!(
        rotated.plaintext, 1,
        "rotation counts the plaintext it sealed"
    );
    assert_eq!(
        rotated.values, 1,
        "everything else was under the active key"
    );
    read_sealed_texts(new.as_ref(), &texts).await.unwrap();

    // Rotation found none left, so the database says so: handles opened from now on refuse.
    put_plaintext(&texts.message_id, &forged).await;
    refused(open(None).await.as_ref(), &texts, "a rotated database").await;
    read_sealed_texts(open(Some(false)).await.as_ref(), &texts)
        .await
        .unwrap();
}
