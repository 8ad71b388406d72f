//! The test database of the `postgres` feature: a fresh, migrated schema per test, so runs
//! never see each other's rows.

use std::sync::Arc;

use tandem::store::postgres::PostgresStore;
use tandem::store::{new_id, Keyring};

/// A store on a new schema of `TANDEM_TEST_DATABASE_URL` named `<prefix>_<random>`, migrated,
/// with a freshly generated data key; and the schema's name.
pub async fn fresh_store(prefix: &str) -> (PostgresStore, String) {
    let url = database_url();
    let schema = format!("{prefix}_{}", new_id().replace('-', ""));
    let entry = Keyring::generate_entry("k1").expect("a fresh data key");
    let keys = Keyring::parse(&entry).expect("a generated key parses");
    let store = PostgresStore::connect_with_schema(&url, &schema, Arc::new(keys))
        .await
        .expect("a fresh schema on TANDEM_TEST_DATABASE_URL");
    (store, schema)
}

/// `TANDEM_TEST_DATABASE_URL`, or a panic that says how to start the database.
pub fn database_url() -> String {
    std::env::var("TANDEM_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "the `postgres` feature is on but TANDEM_TEST_DATABASE_URL is unset; start one with \
             eval \"$(.ci/postgres.sh start)\""
        )
    })
}
