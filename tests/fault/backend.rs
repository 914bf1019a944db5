//! The store a test runs against: SQLite (a file in the test's folder) or PostgreSQL (a
//! fresh schema of the server `CORDON_TEST_POSTGRES_URL` names, dropped afterwards).

use crate::harness::Env;
use crate::postgres_schema::Schema;

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
    /// PostgreSQL: the test's schema, dropped with this.
    _schema: Option<Schema>,
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

impl Backend {
    /// Point `env` (every command and server it starts) at this backend. None: the test is
    /// skipped, and says so loudly.
    pub fn prepare(self, test: &str, env: &mut Env) -> Option<Database> {
        match self {
            Backend::Sqlite => Some(Database {
                backend: self,
                location: env.db().display().to_string(),
                _schema: None,
            }),
            Backend::Postgres => {
                let schema = Schema::create_for(test)?;
                env.extra_env
                    .push(("CORDON_DATABASE_URL".into(), schema.url.clone()));
                Some(Database {
                    backend: self,
                    location: schema.url.clone(),
                    _schema: Some(schema),
                })
            }
        }
    }
}
