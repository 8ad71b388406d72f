//! Runs the store contract (`tandem::store::contract`) against every backend.
//!
//! SQLite always runs, on a temp file that is reopened afterwards to prove a restart keeps the
//! data. Postgres runs with `--features postgres`, and then *requires*
//! `TANDEM_TEST_DATABASE_URL`: a feature-enabled run that silently skipped it would report a
//! green build that tested nothing.

use std::sync::Arc;

use tandem::store::sqlite::{SqliteStore, BUSY_TIMEOUT};
use tandem::store::{contract, crypto, Error, Keyring, NewUser, Reencrypted, Store, UserRole};

/// A keyring from fresh keys with these ids, and the entries to build other rings from.
fn keys(entries: &[&str]) -> Arc<Keyring> {
    Arc::new(Keyring::parse(&entries.join(",")).expect("generated entries parse"))
}

fn entry(id: &str) -> String {
    Keyring::generate_entry(id).expect("valid key id")
}

#[tokio::test]
async fn sqlite_contract_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");

    let store = SqliteStore::open(&path).unwrap();
    let migrations = store.applied_migrations().await.unwrap();
    assert_eq!(
        migrations.iter().map(|m| m.version).collect::<Vec<_>>(),
        [1, 2, 3, 6, 7, 8]
    );
    contract::run(&store).await;
    // After the suite: its retention step deletes every conversation older than its run.
    let sealed = contract::store_sealed_texts(&store).await;
    let org = store.create_organization("survives restart").await.unwrap();
    let user = store
        .create_user(NewUser {
            organization_id: org.id.clone(),
            username: "persisted-user".into(),
            password_hash: "h".into(),
            preferred_language: "en".into(),
            role: UserRole::Admin,
        })
        .await
        .unwrap();
    let users_before = store.count_users().await.unwrap();
    drop(store);

    let reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(
        reopened.applied_migrations().await.unwrap(),
        migrations,
        "reopening does not re-apply migrations"
    );
    assert_eq!(
        reopened.user_by_username("persisted-user").await.unwrap(),
        user
    );
    assert_eq!(reopened.get_organization(&org.id).await.unwrap(), org);
    assert_eq!(reopened.count_users().await.unwrap(), users_before);
    // The key generated next to the database on first open is reused, not replaced.
    contract::read_sealed_texts(&reopened, &sealed)
        .await
        .unwrap();
    // The suite is repeatable on a database that already holds its earlier run.
    contract::run(&reopened).await;
}

#[tokio::test]
async fn sqlite_second_handle_on_same_file_sees_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    let org = a.create_organization("shared").await.unwrap();
    assert_eq!(b.get_organization(&org.id).await.unwrap(), org);
    assert_eq!(
        a.default_organization().await.unwrap(),
        b.default_organization().await.unwrap()
    );
}

/// Every file of the database (main file, WAL, shared memory), concatenated.
fn database_bytes(path: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(b) = std::fs::read(&name) {
            bytes.extend(b);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn sqlite_file_holds_envelopes_not_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");
    let store = SqliteStore::open(&path).unwrap();
    let texts = contract::store_sealed_texts(&store).await;
    contract::read_sealed_texts(&store, &texts).await.unwrap();
    drop(store);
    let bytes = database_bytes(&path);
    assert!(!contains(&bytes, &texts.marker), "plaintext in the file");
    assert!(contains(&bytes, "tdm1:local-"), "no envelope in the file");

    let key_file = crypto::key_file_for(&path);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the generated key is owner-only");
    }
    // The key file is what opens the data: without it (a copy of the database alone), the
    // text stays sealed and reads fail clearly.
    std::fs::remove_file(&key_file).unwrap();
    let without_key = SqliteStore::open(&path).unwrap();
    assert!(matches!(
        contract::read_sealed_texts(&without_key, &texts).await,
        Err(Error::Crypto(crypto::Error::UnknownKey(_)))
    ));
}

#[tokio::test]
async fn sqlite_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");
    let (a, b) = (entry("a"), entry("b"));
    let open = |ring| SqliteStore::open_with_keys(&path, BUSY_TIMEOUT, ring).unwrap();
    let old = open(keys(&[&a]));
    let rotating = open(keys(&[&b, &a]));
    let new = open(keys(&[&b]));
    contract::key_rotation(&old, &rotating, &new).await;
    drop((old, rotating, new));
    let bytes = database_bytes(&path);
    assert!(
        !contains(&bytes, "tdm1:a:"),
        "a value still under the removed key"
    );
}

/// Raw edits through a second connection: an altered envelope, an envelope copied into
/// another row, and a plaintext row from before encryption.
#[tokio::test]
async fn sqlite_tampered_moved_and_legacy_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");
    let store = SqliteStore::open(&path).unwrap();
    let first = contract::store_sealed_texts(&store).await;
    let second = contract::store_sealed_texts(&store).await;
    let raw = rusqlite::Connection::open(&path).unwrap();
    let stored = |id: &str| -> String {
        raw.query_row(
            "SELECT original_text FROM messages WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    };
    let set = |id: &str, value: &str| {
        raw.execute(
            "UPDATE messages SET original_text = ?2 WHERE id = ?1",
            [id, value],
        )
        .unwrap();
    };

    let original = stored(&first.message_id);
    set(&first.message_id, &flip_last_body_byte(&original));
    assert!(matches!(
        contract::read_sealed_texts(&store, &first).await,
        Err(Error::Crypto(crypto::Error::Tampered(_)))
    ));
    set(&first.message_id, &original);
    contract::read_sealed_texts(&store, &first).await.unwrap();

    set(&second.message_id, &original);
    assert!(
        matches!(
            contract::read_sealed_texts(&store, &second).await,
            Err(Error::Crypto(crypto::Error::Tampered(_)))
        ),
        "a ciphertext moved to another row must not read as that row's text"
    );

    // A row from before encryption reads as it is where unsealed values are not refused
    // (`sqlite_unsealed_values` covers the switch), and rotation seals it.
    let lenient = SqliteStore::open(&path)
        .unwrap()
        .require_sealed(Some(false));
    set(&second.message_id, &format!("{} original", second.marker));
    contract::read_sealed_texts(&lenient, &second)
        .await
        .unwrap();
    assert_eq!(
        lenient.reencrypt_batch(100).await.unwrap(),
        Reencrypted {
            values: 1,
            plaintext: 1,
            done: false
        }
    );
    assert!(stored(&second.message_id).starts_with("tdm1:"));
    contract::read_sealed_texts(&store, &second).await.unwrap();
}

#[tokio::test]
async fn sqlite_unsealed_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");
    let open = async |setting| {
        let store = SqliteStore::open(&path).unwrap().require_sealed(setting);
        Box::new(store) as Box<dyn Store>
    };
    let execute = async |sql: &str| {
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(sql, [])
            .unwrap();
    };
    let put_plaintext = async |id: &str, text: &str| {
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE messages SET original_text = ?2 WHERE id = ?1",
                [id, text],
            )
            .unwrap();
    };
    assert!(SqliteStore::open(&path).unwrap().requires_sealed());
    contract::unsealed_values(open, put_plaintext, execute).await;
}

/// The envelope with one base64 character of its body changed (still valid base64).
fn flip_last_body_byte(envelope: &str) -> String {
    let mut bytes = envelope.as_bytes().to_vec();
    let i = bytes.len() - 3;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("an ASCII envelope stays ASCII")
}

#[tokio::test]
async fn rotate_data_key_command_reports_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");
    let (a, b) = (entry("a"), entry("b"));
    let old = SqliteStore::open_with_keys(&path, BUSY_TIMEOUT, keys(&[&a])).unwrap();
    let texts = contract::store_sealed_texts(&old).await;
    let rotating = SqliteStore::open_with_keys(&path, BUSY_TIMEOUT, keys(&[&b, &a])).unwrap();
    let mut seen = Vec::new();
    let total = tandem::cli::rotate_data_key(&rotating, 2, |n| seen.push(n))
        .await
        .unwrap();
    assert_eq!(
        total,
        Reencrypted {
            values: 5,
            plaintext: 0,
            done: true
        },
        "two message texts, the action data, its webhook event, the summary; none plaintext"
    );
    assert_eq!(seen, [2, 4, 5], "progress after each batch");
    assert_eq!(
        tandem::cli::rotate_data_key(&rotating, 2, |_| {})
            .await
            .unwrap(),
        contract::NOTHING_LEFT
    );
    let new = SqliteStore::open_with_keys(&path, BUSY_TIMEOUT, keys(&[&b])).unwrap();
    contract::read_sealed_texts(&new, &texts).await.unwrap();
    assert!(matches!(
        tandem::cli::rotate_data_key(&rotating, 0, |_| {}).await,
        Err(tandem::cli::Error::Input(_))
    ));
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::Arc;

    use tandem::store::postgres::PostgresStore;
    use tandem::store::{
        contract, crypto, new_id, Error, Keyring, NewAuditEntry, NewConversation, NewPatient,
        NewUser, Store, UserRole,
    };

    fn keys(entries: &[&str]) -> Arc<Keyring> {
        super::keys(entries)
    }

    fn database_url() -> String {
        std::env::var("TANDEM_TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!(
                "the `postgres` feature is on but TANDEM_TEST_DATABASE_URL is unset.\n\
                 Start a throwaway PostgreSQL and export its URL with:\n    \
                 eval \"$(.ci/postgres.sh start)\"\n\
                 (stop it with `.ci/postgres.sh stop`), or run without `--features postgres`."
            )
        })
    }

    /// A fresh schema per test, so runs never see each other's rows.
    fn random_schema() -> String {
        format!("test_{}", new_id().replace('-', ""))
    }

    async fn raw_client(url: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("admin connection to TANDEM_TEST_DATABASE_URL");
        tokio::spawn(conn);
        client
    }

    #[tokio::test]
    async fn postgres_contract() {
        let url = database_url();
        let schema = random_schema();
        let ring = keys(&[&super::entry("k1")]);
        let store = PostgresStore::connect_with_schema(&url, &schema, ring.clone())
            .await
            .unwrap();
        let migrations = store.applied_migrations().await.unwrap();
        assert_eq!(
            migrations.iter().map(|m| m.version).collect::<Vec<_>>(),
            [1, 2, 3, 6, 7, 8]
        );
        contract::run(&store).await;

        // A second store on the same schema neither re-applies migrations nor loses data.
        let again = PostgresStore::connect_with_schema(&url, &schema, ring)
            .await
            .unwrap();
        assert_eq!(again.applied_migrations().await.unwrap(), migrations);
        contract::run(&again).await;

        // The connection is dropped under the store: one call may fail as Unavailable, then
        // the store reconnects on its own.
        let admin = raw_client(&url).await;
        let killed = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1",
                &[&store.application_name()],
            )
            .await
            .unwrap();
        assert_eq!(killed, 1, "exactly the store's own connection");
        // Wait until the backend has really exited, so the next call meets a dead connection.
        for _ in 0..100 {
            let alive: i64 = admin
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&store.application_name()],
                )
                .await
                .unwrap()
                .get(0);
            if alive == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let mut recovered = false;
        for _ in 0..3 {
            match store.ping().await {
                Ok(()) => {
                    recovered = true;
                    break;
                }
                Err(Error::Unavailable(_)) => {}
                Err(e) => panic!("a dropped connection must be Unavailable, got {e:?}"),
            }
        }
        assert!(
            recovered,
            "the store reconnects after its connection dropped"
        );
        contract::run(&store).await;

        admin
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn postgres_unsealed_values() {
        let url = database_url();
        let schema = random_schema();
        let ring = keys(&[&super::entry("k1")]);
        let admin = raw_client(&url).await;
        let open = async |setting| {
            let store = PostgresStore::connect_with_schema(&url, &schema, ring.clone())
                .await
                .unwrap()
                .require_sealed(setting);
            Box::new(store) as Box<dyn Store>
        };
        admin
            .batch_execute(&format!("SET search_path TO \"{schema}\""))
            .await
            .unwrap();
        let execute = async |sql: &str| {
            admin.batch_execute(sql).await.unwrap();
        };
        let put_plaintext = async |id: &str, text: &str| {
            admin
                .execute(
                    "UPDATE messages SET original_text = $2 WHERE id = $1",
                    &[&id, &text],
                )
                .await
                .unwrap();
        };
        assert!(
            PostgresStore::connect_with_schema(&url, &schema, ring.clone())
                .await
                .unwrap()
                .requires_sealed()
        );
        contract::unsealed_values(open, put_plaintext, execute).await;
        admin
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn postgres_unreachable_is_unavailable() {
        // Port 1 on loopback: nothing listens there.
        let r = PostgresStore::connect(
            "postgres://postgres@127.0.0.1:1/tandem_test",
            keys(&[&super::entry("k1")]),
        )
        .await;
        assert!(
            matches!(r, Err(Error::Unavailable(_))),
            "connection refused must be Unavailable, got {r:?}"
        );
    }

    /// A raw `SELECT` sees envelopes, never the text; a value moved to another row or altered
    /// fails; rotation across three handles; Postgres without keys refuses to open.
    #[tokio::test]
    async fn postgres_encryption_at_rest() {
        let url = database_url();
        let schema = random_schema();
        let (a, b) = (super::entry("a"), super::entry("b"));
        let connect = |ring| PostgresStore::connect_with_schema(&url, &schema, ring);
        let old = connect(keys(&[&a])).await.unwrap();
        let admin = raw_client(&url).await;
        admin
            .batch_execute(&format!("SET search_path TO \"{schema}\""))
            .await
            .unwrap();

        let first = contract::store_sealed_texts(&old).await;
        let second = contract::store_sealed_texts(&old).await;
        let dump: Vec<String> = admin
            .query(
                "SELECT original_text FROM messages UNION ALL SELECT translated_text FROM messages \
                 UNION ALL SELECT data FROM actions UNION ALL SELECT content FROM documents \
                 UNION ALL SELECT payload FROM webhook_outbox",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(dump.len(), 10);
        for value in &dump {
            assert!(value.starts_with("tdm1:a:"), "{value}");
            assert!(!value.contains(&first.marker) && !value.contains(&second.marker));
        }

        let stored: String = admin
            .query_one(
                "SELECT original_text FROM messages WHERE id = $1",
                &[&first.message_id],
            )
            .await
            .unwrap()
            .get(0);
        let set = |id: String, value: String| {
            let admin = &admin;
            async move {
                admin
                    .execute(
                        "UPDATE messages SET original_text = $2 WHERE id = $1",
                        &[&id, &value],
                    )
                    .await
                    .unwrap();
            }
        };
        set(
            first.message_id.clone(),
            super::flip_last_body_byte(&stored),
        )
        .await;
        assert!(matches!(
            contract::read_sealed_texts(&old, &first).await,
            Err(Error::Crypto(crypto::Error::Tampered(_)))
        ));
        set(first.message_id.clone(), stored.clone()).await;
        set(second.message_id.clone(), stored.clone()).await;
        assert!(matches!(
            contract::read_sealed_texts(&old, &second).await,
            Err(Error::Crypto(crypto::Error::Tampered(_)))
        ));
        // Back to a plaintext row from before encryption: it reads where unsealed values
        // are not refused (`postgres_unsealed_values` covers the switch), and rotation seals
        // it.
        let lenient = connect(keys(&[&a]))
            .await
            .unwrap()
            .require_sealed(Some(false));
        set(
            second.message_id.clone(),
            format!("{} original", second.marker),
        )
        .await;
        contract::read_sealed_texts(&lenient, &second)
            .await
            .unwrap();
        assert_eq!(
            lenient.reencrypt_batch(100).await.unwrap(),
            super::Reencrypted {
                values: 1,
                plaintext: 1,
                done: false
            }
        );

        let rotating = connect(keys(&[&b, &a])).await.unwrap();
        let new = connect(keys(&[&b])).await.unwrap();
        contract::key_rotation(&old, &rotating, &new).await;
        contract::read_sealed_texts(&new, &first).await.unwrap();
        let left: i64 = admin
            .query_one(
                "SELECT COUNT(*) FROM messages WHERE starts_with(original_text, 'tdm1:a:')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0);

        let refused = tandem::store::open(&url, None, None).await;
        match refused {
            Err(Error::Crypto(crypto::Error::InvalidKeys(msg))) => {
                assert!(msg.contains("TANDEM_DATA_KEYS"), "{msg}")
            }
            Err(e) => panic!("expected a missing-key refusal, got {e:?}"),
            Ok(_) => panic!("expected a missing-key refusal, got a store"),
        }

        admin
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .unwrap();
    }

    /// A store on a fresh schema, an organization with an admin and a patient, and a raw
    /// client on the store's schema to interleave with it.
    struct Erasure {
        store: Arc<PostgresStore>,
        schema: String,
        org: String,
        user: String,
        patient: String,
        raw: tokio_postgres::Client,
    }

    impl Erasure {
        fn delete(&self) -> tokio::task::JoinHandle<Result<Vec<String>, Error>> {
            let store = Arc::clone(&self.store);
            let (org, patient) = (self.org.clone(), self.patient.clone());
            let audit = NewAuditEntry {
                organization_id: org.clone(),
                user_id: Some(self.user.clone()),
                action: "delete".into(),
                entity_type: "patient".into(),
                entity_id: patient.clone(),
                record_ids: Vec::new(),
                remote_addr: None,
            };
            tokio::spawn(async move { store.delete_patient(&org, &patient, audit).await })
        }

        async fn conversations(&self) -> i64 {
            self.raw
                .query_one(
                    "SELECT COUNT(*) FROM conversations WHERE patient_id = $1",
                    &[&self.patient],
                )
                .await
                .expect("count the patient's conversations")
                .get(0)
        }

        async fn drop_schema(self) {
            self.raw
                .batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", self.schema))
                .await
                .expect("drop the test schema");
        }
    }

    async fn erasure_fixture() -> Erasure {
        let url = database_url();
        let schema = random_schema();
        let ring = keys(&[&super::entry("k1")]);
        let store = PostgresStore::connect_with_schema(&url, &schema, ring)
            .await
            .expect("store on a fresh schema");
        let org = store
            .create_organization("erasure race")
            .await
            .expect("organization");
        let user = store
            .create_user(NewUser {
                organization_id: org.id.clone(),
                username: format!("admin-{}", new_id()),
                password_hash: "h".into(),
                preferred_language: "en".into(),
                role: UserRole::Admin,
            })
            .await
            .expect("admin");
        let (patient, _) = store
            .find_or_create_patient(NewPatient {
                organization_id: org.id.clone(),
                first_name: "Ana".into(),
                last_name: "Race".into(),
                date_of_birth: "1970-01-31".into(),
                preferred_language: "es".into(),
            })
            .await
            .expect("patient");
        let raw = raw_client(&url).await;
        raw.batch_execute(&format!("SET search_path TO \"{schema}\""))
            .await
            .expect("raw client on the test schema");
        Erasure {
            store: Arc::new(store),
            schema,
            org: org.id,
            user: user.id,
            patient: patient.id,
            raw,
        }
    }

    /// Waits until `n` sessions of `store` are blocked on a lock, so the next step of a test
    /// happens while they wait (a deterministic interleaving, not a timing guess).
    async fn wait_for_lock_waiters(store: &PostgresStore, n: i64) {
        let observer = raw_client(&database_url()).await;
        for _ in 0..500 {
            let waiting: i64 = observer
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity \
                     WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    &[&store.application_name()],
                )
                .await
                .expect("read pg_stat_activity")
                .get(0);
            if waiting == n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{n} session(s) of the store never waited on a lock");
    }

    /// An active conversation committed after the delete started, but before it got the
    /// patient row, must still stop the delete. Its insert holds a KEY SHARE lock on the
    /// patient row, so the delete waits for it; once it commits, the delete must see it
    /// (a single statement reading conversations in its start snapshot did not, and
    /// cascaded the live conversation away without naming it).
    #[tokio::test]
    async fn postgres_delete_patient_sees_conversation_committed_while_waiting() {
        let t = erasure_fixture().await;
        t.raw.batch_execute("BEGIN").await.unwrap();
        t.raw
            .execute(
                "INSERT INTO conversations (id, organization_id, user_id, patient_id, \
             clinician_language, patient_language, status, start_time, end_time, \
             created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'en', 'es', 'active', 1, NULL, 1, 1)",
                &[&new_id(), &t.org, &t.user, &t.patient],
            )
            .await
            .unwrap();
        let deleting = t.delete();
        wait_for_lock_waiters(&t.store, 1).await;
        t.raw.batch_execute("COMMIT").await.unwrap();

        let refused = deleting.await.unwrap();
        assert!(
            matches!(refused, Err(Error::Conflict(_))),
            "the live conversation must refuse the delete: {refused:?}"
        );
        assert_eq!(
            t.store.get_patient(&t.org, &t.patient).await.unwrap().id,
            t.patient
        );
        assert_eq!(t.conversations().await, 1, "nothing cascaded away");
        t.drop_schema().await;
    }

    /// A conversation created while the delete holds the patient row waits for it, then is
    /// refused as `NotFound` (a 404 with a JSON body over HTTP, not a 500) and leaves no row.
    /// The delete is held after it locked the patient by an exclusive lock on the audit log,
    /// which its audit insert needs.
    #[tokio::test]
    async fn postgres_conversation_created_during_delete_patient_is_refused() {
        let t = erasure_fixture().await;
        t.raw
            .batch_execute("BEGIN; LOCK TABLE audit_log IN EXCLUSIVE MODE")
            .await
            .unwrap();
        let deleting = t.delete();
        wait_for_lock_waiters(&t.store, 1).await;
        let creating = tokio::spawn({
            let store = Arc::clone(&t.store);
            let conversation = NewConversation {
                organization_id: t.org.clone(),
                user_id: t.user.clone(),
                patient_id: t.patient.clone(),
                clinician_language: "en".into(),
                patient_language: "es".into(),
            };
            async move { store.create_conversation(conversation).await }
        });
        wait_for_lock_waiters(&t.store, 2).await;
        t.raw.batch_execute("COMMIT").await.unwrap();

        assert_eq!(deleting.await.unwrap().unwrap(), Vec::<String>::new());
        let refused = creating.await.unwrap();
        assert!(
            matches!(refused, Err(Error::NotFound)),
            "a conversation for the deleted patient must be refused: {refused:?}"
        );
        assert_eq!(t.conversations().await, 0, "no orphan conversation");
        assert!(matches!(
            t.store.get_patient(&t.org, &t.patient).await,
            Err(Error::NotFound)
        ));
        t.drop_schema().await;
    }
}
