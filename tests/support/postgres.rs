//! A PostgreSQL schema of its own for an end-to-end or fault test, on the server named by
//! `CORDON_TEST_POSTGRES_URL` (the engine's unit tests have the same helper in
//! `store/postgres.rs`; an integration test cannot reach test-only code of the library).
//! Shared by the `e2e` and `fault` test targets (`#[path]` modules).

use sqlx::{Connection, PgConnection};

/// The variable naming the test server (CI sets it; see `.ci/run`).
pub const ENV: &str = "CORDON_TEST_POSTGRES_URL";

/// A schema on the test server, dropped with everything in it when this is dropped.
pub struct Schema {
    pub name: String,
    /// The server URL with `search_path` set to the schema (`options=-c search_path=…`).
    pub url: String,
    server: String,
}

/// Written to the process's stderr itself, which the test harness does not capture: the
/// skip shows even when the test passes.
pub fn loud_skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n==================== SKIPPED ====================\n\
         {test} on PostgreSQL: {why}\n\
         ================================================="
    );
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

impl Schema {
    /// A fresh schema, or None after a loud SKIPPED line when the server is not configured;
    /// under CI a missing server fails the test instead.
    pub fn create() -> Option<Schema> {
        Schema::create_for("this end-to-end test")
    }

    /// [`Schema::create`], naming `test` in the SKIPPED line or the failure.
    pub fn create_for(test: &str) -> Option<Schema> {
        let server = match std::env::var(ENV) {
            Ok(url) if !url.trim().is_empty() => url,
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{test}: CI must run the PostgreSQL tests: set {ENV} (see .ci/run)"
                );
                loud_skip(test, &format!("{ENV} is not set"));
                return None;
            }
        };
        let name = format!(
            "cordon_test_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        block_on(async {
            let mut conn = PgConnection::connect(&server)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {ENV}: {e}"));
            sqlx::query(&format!("CREATE SCHEMA \"{name}\""))
                .execute(&mut conn)
                .await
                .expect("create schema");
            conn.close().await.ok();
        });
        let mut url = url::Url::parse(&server).expect("the test server URL parses");
        url.query_pairs_mut()
            .append_pair("options", &format!("-c search_path={name}"));
        Some(Schema {
            name,
            url: url.to_string(),
            server,
        })
    }

    /// One query's rows on the schema, each column read as text.
    pub fn query_text(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        use sqlx::Row;
        block_on(async {
            let mut conn = PgConnection::connect(&self.url).await.expect("connect");
            let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect(sql);
            conn.close().await.ok();
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.try_get::<Option<String>, _>(i).expect("a text column"))
                        .collect()
                })
                .collect()
        })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let dropped = block_on(async {
            let mut conn = PgConnection::connect(&self.server).await?;
            sqlx::query("SET lock_timeout = '20s'")
                .execute(&mut conn)
                .await?;
            sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
                .execute(&mut conn)
                .await?;
            conn.close().await
        });
        if let Err(e) = dropped {
            eprintln!("could not drop test schema {}: {e}", self.name);
        }
    }
}
