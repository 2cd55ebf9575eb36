//! Throwaway PostgreSQL 15 clusters (`initdb` + `pg_ctl`) on free ports,
//! with a CA and certificates made here, and PgBouncer in front of one:
//! servers a test may stop and start. The shared server on 127.0.0.1:5432
//! is not touched.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::helpers::free_port;

/// What a test of this file's servers needs, for its `#[ignore]`.
pub const NEEDS: &str = "needs PostgreSQL 15 (/usr/lib/postgresql/15/bin), psql, openssl and \
                         pgbouncer, as root (servers run as the postgres user) or that user: \
                         cargo test --test api -- --include-ignored";

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The role with a password (all others are trusted).
pub const PASSWORD_ROLE: &str = "relay_pw";
pub const PASSWORD: &str = "right-password";
/// The database whose connections need a client certificate (TLS clusters).
pub const CERT_DATABASE: &str = "certdb";

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{shown}: {err}"));
    assert!(
        output.status.success(),
        "{shown}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn is_root() -> bool {
    let id = run(Command::new("id").arg("-u"));
    String::from_utf8_lossy(&id.stdout).trim() == "0"
}

/// `program` as the postgres user when this is root (initdb and PgBouncer
/// refuse root).
fn as_server_user(program: &str) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

/// A folder the server user owns.
fn server_dir() -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    if is_root() {
        run(Command::new("chown").arg("postgres:").arg(dir.path()));
    }
    dir
}

fn chown_to_server(path: &Path) {
    if is_root() {
        run(Command::new("chown").arg("-R").arg("postgres:").arg(path));
    }
}

/// A CA, the server's certificate (for `localhost` only) signed by it, a
/// client certificate for `postgres`, and another CA that signed neither.
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(&dir).args(args));
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=relay test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ]);
        }
        std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost\n").unwrap();
        std::fs::write(dir.join("client.ext"), "basicConstraints=CA:FALSE\n").unwrap();
        for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=postgres")] {
            openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ]);
        }
        Self { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

/// One PostgreSQL 15 server of its own, stopped (`-m immediate`) when dropped.
pub struct Cluster {
    dir: TempDir,
    pub port: u16,
    pub certs: Option<Certs>,
}

impl Cluster {
    /// A server on a free port: with `tls`, TLS only (plaintext refused) and
    /// `certdb` needing a client certificate; else plaintext only. Both
    /// trust every role but [`PASSWORD_ROLE`], and have a database `relay`.
    pub fn start(tls: bool) -> Self {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "{BIN}/initdb is missing: {NEEDS}"
        );
        let dir = server_dir();
        let data = dir.path().join("data");
        run(as_server_user(&format!("{BIN}/initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
                "-D",
            ])
            .arg(&data));
        let certs = tls.then(|| {
            let certs = Certs::make(dir.path().join("tls"));
            chown_to_server(&certs.dir);
            run(Command::new("chmod")
                .arg("600")
                .arg(certs.path("server.key")));
            certs
        });
        let port = free_port();
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n\
             fsync = off\nmax_connections = 200\n"
        );
        let hba = match &certs {
            Some(certs) => {
                conf.push_str(&format!(
                    "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
                    certs.path("server.crt"),
                    certs.path("server.key"),
                    certs.path("ca.crt")
                ));
                format!(
                    "hostssl {CERT_DATABASE} all 127.0.0.1/32 cert\n\
                     host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n\
                     hostssl all all 127.0.0.1/32 trust\n\
                     hostnossl all all 127.0.0.1/32 reject\n"
                )
            }
            None => format!(
                "host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n\
                 host all all 127.0.0.1/32 trust\n"
            ),
        };
        let mut existing = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        existing.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), existing).unwrap();
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        let cluster = Self { dir, port, certs };
        cluster.start_again();
        cluster.sql(&format!(
            "CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'"
        ));
        cluster.sql("CREATE DATABASE relay");
        cluster.sql(&format!("CREATE DATABASE {CERT_DATABASE}"));
        cluster
    }

    pub fn start_again(&self) {
        run(as_server_user(&format!("{BIN}/pg_ctl"))
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir.path().join("server.log"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("start"));
    }

    /// `pg_ctl stop -m mode`: `fast` (sessions ended, a checkpoint) or
    /// `immediate` (killed; crash recovery at the next start).
    pub fn stop(&self, mode: &str) {
        run(as_server_user(&format!("{BIN}/pg_ctl"))
            .args(["-w", "-t", "60", "-m", mode, "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop"));
    }

    /// Runs `sql` (psql) in `database` as the superuser; its output.
    pub fn sql_in(&self, database: &str, sql: &str) -> String {
        let sslmode = if self.certs.is_some() {
            "require"
        } else {
            "disable"
        };
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode={sslmode}",
            self.port
        );
        let output =
            run(Command::new("psql").args(["-X", "-At", "-v", "ON_ERROR_STOP=1", &url, "-c", sql]));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    pub fn sql(&self, sql: &str) -> String {
        self.sql_in("postgres", sql)
    }

    /// The URL of `database` as `localhost` (the name the certificate
    /// carries), reached at 127.0.0.1, with `query` added.
    pub fn url(&self, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{database}?hostaddr=127.0.0.1&{query}",
            self.port
        )
    }

    /// The same by address, which the certificate does not name.
    pub fn url_by_address(&self, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?{query}",
            self.port
        )
    }

    /// `sslmode=verify-full` with the CA that signed the server's certificate.
    pub fn verified_url(&self, database: &str) -> String {
        let certs = self.certs.as_ref().expect("a TLS cluster");
        self.url(
            database,
            &format!("sslmode=verify-full&sslrootcert={}", certs.path("ca.crt")),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_server_user(&format!("{BIN}/pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .output();
    }
}

/// PgBouncer in `pool_mode` in front of a (plaintext) cluster, killed when dropped.
pub struct Bouncer {
    _dir: TempDir,
    pub port: u16,
    child: Child,
}

impl Bouncer {
    pub fn start(cluster: &Cluster, pool_mode: &str) -> Self {
        let dir = server_dir();
        let port = free_port();
        std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = {pool_mode}\n\
                 max_client_conn = 500\ndefault_pool_size = 40\n\
                 ignore_startup_parameters = extra_float_digits\n",
                cluster.port,
                dir.path().join("users.txt").display()
            ),
        )
        .unwrap();
        chown_to_server(dir.path());
        let child = as_server_user("pgbouncer")
            .arg(dir.path().join("pgbouncer.ini"))
            .spawn()
            .unwrap_or_else(|err| panic!("pgbouncer: {err}: {NEEDS}"));
        let mut bouncer = Self {
            _dir: dir,
            port,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                bouncer.child.try_wait().unwrap().is_none(),
                "pgbouncer exited"
            );
            assert!(Instant::now() < deadline, "pgbouncer does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // runuser passes the signal on to PgBouncer.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}
