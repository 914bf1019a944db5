//! The store a test runs against: SQLite (a file in the test's folder) or PostgreSQL (a
//! fresh schema of the server `CORDON_TEST_POSTGRES_URL` names, dropped afterwards).

use crate::harness::Env;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database prepared for one test. PostgreSQL's schema is dropped when this is dropped.
pub struct Database {
    pub backend: Backend,
    /// The SQLite file, or the PostgreSQL URL with the test's schema.
    location: String,
    /// PostgreSQL: the server's URL and the schema to drop.
    schema: Option<(String, String)>,
}

impl Database {
    pub fn label(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl Database {
    /// SIGSTOP `node` at a moment when it holds no write transaction open (else the other
    /// node would wait for the database, not for the lease): stop it, check that another
    /// writer gets in, and if not let it go on a moment and stop it again.
    pub fn stop_cleanly(&self, node: &crate::common::Node, ctx: &str) -> std::time::Instant {
        for _ in 0..50 {
            node.signal(libc::SIGSTOP);
            let at = std::time::Instant::now();
            match self.writable() {
                Ok(true) => return at,
                Ok(false) => {}
                Err(e) => panic!("{ctx}: cannot probe the database: {e}"),
            }
            node.signal(libc::SIGCONT);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!(
            "{ctx}: {} always held a write transaction when stopped",
            node.name
        );
    }

    /// Whether a writer gets in now (within 300 ms).
    fn writable(&self) -> Result<bool, String> {
        use sqlx::Connection;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            match self.backend {
                Backend::Sqlite => {
                    let opts = sqlx::sqlite::SqliteConnectOptions::new()
                        .filename(&self.location)
                        .busy_timeout(std::time::Duration::from_millis(300));
                    let mut conn = sqlx::SqliteConnection::connect_with(&opts)
                        .await
                        .map_err(|e| e.to_string())?;
                    let got = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await.is_ok();
                    if got {
                        sqlx::raw_sql("ROLLBACK")
                            .execute(&mut conn)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    let _ = conn.close().await;
                    Ok(got)
                }
                Backend::Postgres => {
                    let mut conn = sqlx::PgConnection::connect(&self.location)
                        .await
                        .map_err(|e| e.to_string())?;
                    // Rows a stopped node's open transaction holds would block this.
                    let r = sqlx::raw_sql(
                        "BEGIN; SET LOCAL lock_timeout = '300ms'; SELECT id FROM runs FOR UPDATE; ROLLBACK;",
                    )
                    .execute(&mut conn)
                    .await;
                    let _ = conn.close().await;
                    match r {
                        Ok(_) => Ok(true),
                        Err(e) if e.to_string().contains("lock") => Ok(false),
                        Err(e) => Err(e.to_string()),
                    }
                }
            }
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some((admin, schema)) = self.schema.take() {
            if let Err(e) = pg_exec(
                &admin,
                &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
            ) {
                eprintln!("could not drop test schema {schema}: {e}");
            }
        }
    }
}

/// Written to the process's stderr itself, which the test harness does not capture: a
/// skip shows even when the test passes.
fn loud_skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n==================== SKIPPED ====================\n\
         {test} on PostgreSQL: {why}\n\
         ================================================="
    );
}

impl Backend {
    /// Point `env` (every command and server it starts) at this backend. None: the test is
    /// skipped, and says so loudly.
    pub fn prepare(self, test: &str, env: &mut Env) -> Option<Database> {
        match self {
            Backend::Sqlite => Some(Database {
                backend: self,
                location: env.db().display().to_string(),
                schema: None,
            }),
            Backend::Postgres => {
                let Some(admin) = std::env::var("CORDON_TEST_POSTGRES_URL")
                    .ok()
                    .filter(|s| !s.is_empty())
                else {
                    if std::env::var("CI").as_deref() == Ok("true") {
                        panic!("{test}: CORDON_TEST_POSTGRES_URL is not set; CI does not skip the PostgreSQL fault tests");
                    }
                    loud_skip(test, "CORDON_TEST_POSTGRES_URL is not set");
                    return None;
                };
                let schema = format!(
                    "cordon_fault_{}",
                    ulid::Ulid::new().to_string().to_ascii_lowercase()
                );
                pg_exec(&admin, &format!("CREATE SCHEMA \"{schema}\""))
                    .unwrap_or_else(|e| panic!("{test}: cannot create schema {schema}: {e}"));
                let sep = if admin.contains('?') { '&' } else { '?' };
                let url = format!("{admin}{sep}options=-c%20search_path%3D{schema}");
                let db = Database {
                    backend: self,
                    location: url.clone(),
                    schema: Some((admin.clone(), schema.clone())),
                };
                env.extra_env.push(("CORDON_DATABASE_URL".into(), url));
                // Until the PostgreSQL store exists the binary refuses such URLs; then (and
                // only then) the test is skipped, so it runs as soon as the store lands.
                let probe = env.run(&["runs", "list", "--json"]);
                if probe.code != 0 {
                    if probe.stderr.contains("not available in this build") {
                        loud_skip(
                            test,
                            "this build refuses postgres:// URLs (\"not available in this build\"); the test runs once the PostgreSQL store lands",
                        );
                        return None;
                    }
                    panic!("{test}: cordon cannot open the PostgreSQL test schema: {probe:?}");
                }
                Some(db)
            }
        }
    }
}

/// Run one statement on PostgreSQL.
fn pg_exec(url: &str, sql: &str) -> Result<(), String> {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query(sql)
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        conn.close().await.map_err(|e| e.to_string())
    })
}
