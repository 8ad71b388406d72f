//! Runs the store contract (`tandem::store::contract`) against every backend.
//!
//! SQLite always runs, on a temp file that is reopened afterwards to prove a restart keeps the
//! data. Postgres runs with `--features postgres`, and then *requires*
//! `TANDEM_TEST_DATABASE_URL`: a feature-enabled run that silently skipped it would report a
//! green build that tested nothing.

use tandem::store::sqlite::SqliteStore;
use tandem::store::{contract, NewUser, Store, UserRole};

#[tokio::test]
async fn sqlite_contract_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tandem.db");

    let store = SqliteStore::open(&path).unwrap();
    let migrations = store.applied_migrations().await.unwrap();
    assert_eq!(
        migrations.iter().map(|m| m.version).collect::<Vec<_>>(),
        [1, 2, 3, 6, 7]
    );
    contract::run(&store).await;
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

#[cfg(feature = "postgres")]
mod postgres {
    use tandem::store::postgres::PostgresStore;
    use tandem::store::{contract, new_id, Error, Store};

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
        let store = PostgresStore::connect_with_schema(&url, &schema)
            .await
            .unwrap();
        let migrations = store.applied_migrations().await.unwrap();
        assert_eq!(
            migrations.iter().map(|m| m.version).collect::<Vec<_>>(),
            [1, 2, 3, 6, 7]
        );
        contract::run(&store).await;

        // A second store on the same schema neither re-applies migrations nor loses data.
        let again = PostgresStore::connect_with_schema(&url, &schema)
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
    async fn postgres_unreachable_is_unavailable() {
        // Port 1 on loopback: nothing listens there.
        let r = PostgresStore::connect("postgres://postgres@127.0.0.1:1/tandem_test").await;
        assert!(
            matches!(r, Err(Error::Unavailable(_))),
            "connection refused must be Unavailable, got {r:?}"
        );
    }
}
