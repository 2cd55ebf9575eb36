//! A fresh PostgreSQL database per test, dropped after. The server is the
//! one every machine and CI run has on 127.0.0.1:5432
//! (`RELAY_TEST_POSTGRES_URL` names another). A test that needs it is
//! `#[ignore]`d by default and fails, never passes, without it.

/// The server's maintenance database, where test databases are created.
fn server_url() -> String {
    std::env::var("RELAY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Runs `sql` on the server's database `url`, on a thread of its own (tests
/// run on actix's runtime, and drops happen anywhere).
fn on_server(url: String, sql: String) -> Result<(), String> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            client.batch_execute(&sql).await.map_err(|e| e.to_string())
        })
    })
    .join()
    .expect("the PostgreSQL helper thread does not panic")
}

pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Fails the test when no server answers: a test that needs PostgreSQL
    /// is `#[ignore]`d by default and runs with `--include-ignored`.
    pub fn create() -> Self {
        let name = format!("relay_test_{}_{:x}", std::process::id(), fastrand::u64(..));
        if let Err(err) = on_server(server_url(), format!("CREATE DATABASE {name}")) {
            panic!(
                "PostgreSQL is needed at {} (RELAY_TEST_POSTGRES_URL): {err}",
                server_url()
            );
        }
        let url = match server_url().rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("RELAY_TEST_POSTGRES_URL names no database"),
        };
        Self { name, url }
    }

    /// Runs `sql` in this database.
    pub fn execute(&self, sql: &str) {
        on_server(self.url.clone(), sql.to_owned()).expect("the statements run");
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = on_server(
            server_url(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}
