//! How the PostgreSQL store reaches its server: libpq's TLS parameters read
//! from the URL, the first connection waited for while the server comes up,
//! a pooler in transaction mode refused, and every start-up failure said as
//! what failed and what to do.

use std::{sync::Arc, time::Duration};

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts,
};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};
use tokio_postgres::{Client, Config, SimpleQueryMessage, config::Host, error::SqlState};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{OPERATION_TIMEOUT, schema};
use crate::store::{OpenError, StoreOptions};

/// Pause between attempts while the server is not up yet.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// libpq's `sslmode`, with its meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// TLS when the server offers it, plaintext when it does not.
    Prefer,
    Require,
    /// The certificate must chain to `sslrootcert`, for any host name.
    VerifyCa,
    /// ... and be issued for the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, OpenError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // libpq's `allow` tries plaintext first: no managed service wants that.
            other => {
                return Err(OpenError::Setting(format!(
                    "sslmode={other} is not supported: use disable, prefer, require, verify-ca \
                     or verify-full"
                )));
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// The server the URL names, and how to talk to it.
pub struct Target {
    config: Config,
    tls: MakeRustlsConnect,
    mode: SslMode,
    /// `sslrootcert` as written, for messages.
    roots: Option<String>,
}

impl Target {
    /// Reads `url`; the TLS parameters are taken out of its query (tokio-postgres
    /// knows only some of them) and the rest is tokio-postgres's to read.
    pub fn parse(url: &str) -> Result<Self, OpenError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = SslMode::Prefer;
        let (mut roots, mut cert, mut key) = (None, None, None);
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| OpenError::Setting(format!("{name}: not UTF-8")))?
                .into_owned();
            match name {
                "sslmode" => mode = SslMode::parse(&decoded)?,
                "sslrootcert" => roots = Some(decoded),
                "sslcert" => cert = Some(decoded),
                "sslkey" => key = Some(decoded),
                _ => rest.push(pair),
            }
        }
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config: Config = url
            .parse()
            .map_err(|err| OpenError::Setting(format!("not a PostgreSQL URL: {err}")))?;
        config
            .ssl_mode(match mode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            })
            .connect_timeout(OPERATION_TIMEOUT);
        let tls = tls_config(mode, roots.as_deref(), cert.as_deref(), key.as_deref())?;
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(tls),
            mode,
            roots,
        })
    }

    /// The servers as `host:port`, for messages.
    fn servers(&self) -> String {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match host {
                    Host::Tcp(name) => format!("{name}:{port}"),
                    Host::Unix(path) => format!("{}:{port}", path.display()),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        // Ends when the client is dropped.
        tokio::spawn(connection);
        Ok(client)
    }

    /// What `err`, met while connecting, means for an operator, and whether
    /// waiting may cure it (the server is not up yet).
    fn explain(&self, err: &tokio_postgres::Error) -> (String, bool) {
        let servers = self.servers();
        if let Some(db) = err.as_db_error() {
            let role = self.config.get_user().unwrap_or("(none)");
            let database = self.config.get_dbname().unwrap_or(role);
            let code = db.code();
            return if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            {
                (
                    format!(
                        "{servers} refused role {role:?}: {}; check the user and password in \
                         RELAY_DATABASE_URL and the server's pg_hba.conf",
                        db.message()
                    ),
                    false,
                )
            } else if *code == SqlState::INVALID_CATALOG_NAME {
                (
                    format!(
                        "database {database:?} does not exist on {servers}: create it \
                         (CREATE DATABASE {database} OWNER {role}) or name another in \
                         RELAY_DATABASE_URL"
                    ),
                    false,
                )
            } else if *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
            {
                (
                    format!("{servers} cannot take connections now: {}", db.message()),
                    true,
                )
            } else {
                (
                    format!("{servers} refused the connection: {}", db.message()),
                    false,
                )
            };
        }
        if let Some(tls) = find::<rustls::Error>(err) {
            return (self.explain_tls(tls, &servers), false);
        }
        let text = chain(err);
        if text.contains("server does not support TLS") {
            return (
                format!(
                    "sslmode={} requires TLS, and {servers} does not offer it: turn ssl on in \
                     the server, or (only on a private network) use sslmode=prefer",
                    self.mode.as_str()
                ),
                false,
            );
        }
        if let Some(io) = find::<std::io::Error>(err) {
            return (
                format!(
                    "cannot reach {servers}: {io}; check that the server is up and that \
                     RELAY_DATABASE_URL names its host and port"
                ),
                true,
            );
        }
        if text.starts_with("timeout") {
            return (
                format!(
                    "{servers} did not answer within {} s; check the host, the port and the \
                     network policy between the gateway and the server",
                    OPERATION_TIMEOUT.as_secs()
                ),
                true,
            );
        }
        // Cut off mid-start-up (the server is going down or coming up).
        (format!("{servers}: {text}"), err.is_closed())
    }

    fn explain_tls(&self, err: &rustls::Error, servers: &str) -> String {
        let roots = self.roots.as_deref().unwrap_or("(none)");
        match err {
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "the certificate of {servers} is not issued for that host name \
                 (sslmode=verify-full): connect by a name the certificate names, or use \
                 sslmode=verify-ca"
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => format!("the certificate of {servers} has expired"),
            rustls::Error::InvalidCertificate(other) => format!(
                "the certificate of {servers} is not trusted ({other:?}) by sslrootcert={roots}: \
                 give the CA bundle of the server's provider"
            ),
            rustls::Error::AlertReceived(alert) => format!(
                "{servers} ended the TLS handshake ({alert:?}): if it requires a client \
                 certificate, give sslcert and sslkey one its CA signed"
            ),
            other => format!("TLS with {servers} failed: {other}"),
        }
    }
}

/// `err` and its causes, as one text (tokio-postgres's own shows only itself:
/// "db error", without the server's message).
pub(super) fn chain(err: &tokio_postgres::Error) -> String {
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(current) = cause {
        text.push_str(&format!(": {current}"));
        cause = current.source();
    }
    text
}

/// The first error of type `E` in `err`'s chain of causes.
fn find<E: std::error::Error + 'static>(err: &tokio_postgres::Error) -> Option<&E> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = cause {
        if let Some(found) = current.downcast_ref::<E>() {
            return Some(found);
        }
        // rustls's errors reach tokio-postgres inside an io::Error.
        if let Some(inner) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<E>())
        {
            return Some(inner);
        }
        cause = current.source();
    }
    None
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS client `mode` asks for; like libpq, `prefer` and `require` verify
/// the chain when `sslrootcert` is given, and `system` asks for verify-full.
fn tls_config(
    mode: SslMode,
    roots: Option<&str>,
    cert: Option<&str>,
    key: Option<&str>,
) -> Result<ClientConfig, OpenError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| OpenError::Setting(format!("TLS: {err}")))?;
    if roots == Some("system") && mode != SslMode::VerifyFull {
        return Err(OpenError::Setting(format!(
            "weak sslmode={} may not be used with sslrootcert=system (use verify-full)",
            mode.as_str()
        )));
    }
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(OpenError::Setting(format!(
                "sslmode={} needs sslrootcert: the path of the CA bundle (PEM), or system for \
                 the platform's roots",
                mode.as_str()
            )));
        }
        (SslMode::Disable | SslMode::Prefer | SslMode::Require, None) => Lenient::new(None),
        (_, Some(roots)) => {
            let chain = WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(roots)?),
                provider(),
            )
            .build()
            .map_err(|err| OpenError::Setting(format!("sslrootcert={roots}: {err}")))?;
            if mode == SslMode::VerifyFull {
                chain
            } else {
                Lenient::new(Some(chain))
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (cert, key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|err| OpenError::Setting(format!("sslcert={cert}: {err}")))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|err| OpenError::Setting(format!("sslkey={key}: {err}")))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|err| OpenError::Setting(format!("sslcert and sslkey: {err}")))
        }
        _ => Err(OpenError::Setting(
            "sslcert and sslkey go together: the client certificate and its key (PEM)".into(),
        )),
    }
}

fn root_store(roots: &str) -> Result<RootCertStore, OpenError> {
    let mut store = RootCertStore::empty();
    let certs = if roots == "system" {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            return Err(OpenError::Setting(format!(
                "sslrootcert=system: the platform has no CA certificates ({:?})",
                found.errors
            )));
        }
        found.certs
    } else {
        CertificateDer::pem_file_iter(roots)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|err| OpenError::Setting(format!("sslrootcert={roots}: {err}")))?
    };
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(OpenError::Setting(format!(
            "sslrootcert={roots}: no CA certificate in it"
        )));
    }
    Ok(store)
}

/// `require` and `prefer` without `sslrootcert` (`chain` none): encrypted,
/// the server not authenticated, libpq's meaning. `verify-ca`: the chain
/// must lead to a trusted root, the host name is not compared (webpki checks
/// the chain before the name). The handshake's signatures are checked either way.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Lenient {
    fn new(chain: Option<Arc<WebPkiServerVerifier>>) -> Arc<Self> {
        Arc::new(Self {
            chain,
            algorithms: provider().signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Waits for the server (up to `options.connect_wait`, a log line per
/// failed attempt), refuses a pooler in transaction mode, and migrates.
pub async fn prepare(target: &Target, options: &StoreOptions) -> Result<(), OpenError> {
    let deadline = tokio::time::Instant::now() + options.connect_wait;
    let mut attempt = 1;
    let mut client = loop {
        let err = match target.connect().await {
            Ok(client) => break client,
            Err(err) => err,
        };
        let (reason, passing) = target.explain(&err);
        let now = tokio::time::Instant::now();
        if !passing {
            return Err(OpenError::Failed(reason));
        }
        if now >= deadline {
            return Err(OpenError::Failed(format!(
                "{reason} (gave up after {attempt} attempts in {} s, RELAY_STORE_CONNECT_TIMEOUT_SECS)",
                options.connect_wait.as_secs()
            )));
        }
        tracing::warn!(attempt, error = %reason, "the database is not reachable yet; trying again");
        attempt += 1;
        tokio::time::sleep(RETRY_PAUSE.min(deadline - now)).await;
    };
    refuse_transaction_pooling(target, &client).await?;
    // Waiting for another replica's migration, or building an index, may
    // take longer than any statement the gateway runs later.
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .map_err(|err| failed(target, &err))?;
    schema::migrate(&mut client).await.map_err(OpenError::from)
}

fn failed(target: &Target, err: &tokio_postgres::Error) -> OpenError {
    OpenError::Failed(target.explain(err).0)
}

/// Transaction (or statement) pooling hands a server connection to another
/// client between transactions; the store holds session advisory locks and
/// named prepared statements, which that breaks. Seen by asking a second
/// connection for its server process while the first sits idle: only such a
/// pooler gives it the first one's.
async fn refuse_transaction_pooling(target: &Target, first: &Client) -> Result<(), OpenError> {
    let first_pid = backend_pid(first)
        .await
        .map_err(|err| failed(target, &err))?;
    let second = target.connect().await.map_err(|err| failed(target, &err))?;
    let second_pid = backend_pid(&second)
        .await
        .map_err(|err| failed(target, &err))?;
    if first_pid == second_pid {
        return Err(OpenError::Failed(format!(
            "{} is a connection pooler in transaction or statement mode (PgBouncer \
             pool_mode = transaction): the store needs session pooling; set pool_mode = session \
             for this database, or connect to the server directly",
            target.servers()
        )));
    }
    Ok(())
}

/// Unnamed (simple protocol), so a pooler that swaps server connections
/// meets no prepared statement of another client.
async fn backend_pid(client: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    let messages = client.simple_query("SELECT pg_backend_pid()").await?;
    Ok(messages.iter().find_map(|message| match message {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    }))
}

/// The pool the store works with; each new connection gets the statement
/// timeout, so a statement its caller gave up on stops on the server too.
pub fn pool(target: &Target, options: &StoreOptions) -> Result<Pool, OpenError> {
    let manager = Manager::from_config(
        target.config.clone(),
        target.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let timeouts = Timeouts {
        wait: Some(OPERATION_TIMEOUT),
        create: Some(OPERATION_TIMEOUT),
        recycle: Some(OPERATION_TIMEOUT),
    };
    let set_timeout = format!(
        "SET statement_timeout = {}",
        options.statement_timeout.as_millis()
    );
    Pool::builder(manager)
        .max_size(options.pool_size)
        .timeouts(timeouts)
        .runtime(Runtime::Tokio1)
        .post_create(Hook::async_fn(move |client, _| {
            let set_timeout = set_timeout.clone();
            Box::pin(async move {
                client
                    .batch_execute(&set_timeout)
                    .await
                    .map_err(HookError::Backend)
            })
        }))
        .build()
        .map_err(|err| OpenError::Failed(format!("cannot build the pool: {err}")))
}
