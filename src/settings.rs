//! Every environment variable the gateway reads, declared once in the
//! `settings!` list below: it yields the [`Settings`] struct (read by
//! envconfig) and [`TABLE`], which `--help` prints and
//! docs/configuration.md mirrors (a test holds the page to it).
//!
//! An empty variable counts as unset, decided here alone: empty variables are
//! dropped before envconfig reads the rest. A value that cannot work stops the
//! start with the variable's name, the value (never a secret's) and what is
//! expected.

use std::{
    collections::HashMap,
    fmt,
    num::{NonZeroU32, NonZeroUsize},
    str::FromStr,
    time::Duration,
};

use envconfig::Envconfig;
use secrecy::{ExposeSecret, SecretString};

/// One variable as `--help` and errors describe it.
pub struct Setting {
    pub name: &'static str,
    pub when_unset: WhenUnset,
    /// What a value must look like, after "expected".
    pub form: &'static str,
    /// The field's doc comment, line by line.
    pub meaning: &'static [&'static str],
    /// How a value of this variable may appear in an error message.
    shown: fn(&str) -> String,
}

/// What an unset variable means.
pub enum WhenUnset {
    /// This value.
    Default(&'static str),
    /// No value; the text says what follows.
    Means(&'static str),
}

impl fmt::Display for WhenUnset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WhenUnset::Default(value) => write!(f, "default: {value}"),
            WhenUnset::Means(what) => write!(f, "unset: {what}"),
        }
    }
}

/// Declares each setting once: doc comment (its meaning), field, type,
/// variable, `default "value"` or `unset "what then"`, and the expected form.
macro_rules! settings {
    (@unset default $value:tt) => { WhenUnset::Default($value) };
    (@unset unset $what:tt) => { WhenUnset::Means($what) };
    ($(
        $(#[doc = $doc:tt])+
        $field:ident: $ty:ty = $name:tt,
            $(default $value:tt,)? $(unset $what:tt,)? form $form:tt;
    )+) => {
        /// Secrets are [`Secret`]s and the database URL a [`DatabaseUrl`]:
        /// `Debug` shows neither.
        #[derive(Envconfig, Debug, Clone)]
        pub struct Settings {
            $(
                $(#[doc = $doc])+
                #[envconfig(from = $name $(, default = $value)?)]
                pub $field: $ty,
            )+
        }

        /// Every setting, in the order of [`Settings`].
        pub const TABLE: &[Setting] = &[$(
            Setting {
                name: $name,
                when_unset: settings!(@unset $(default $value)? $(unset $what)?),
                form: $form,
                meaning: &[$($doc),+],
                shown: <$ty as Shown>::shown,
            },
        )+];
    };
}

settings! {
    /// Public listener: webhooks, `/healthz`, `/readyz`.
    listen_addr: String = "RELAY_LISTEN_ADDR", default "0.0.0.0:8080", form "host:port";

    /// Admin listener: `/metrics`, `/openapi.json`, `/admin/*`. Never exposed by the ingress.
    admin_addr: String = "RELAY_ADMIN_ADDR", default "0.0.0.0:9090", form "host:port";

    /// HS256 secret of admin API bearer tokens, which must carry `exp` and
    /// `aud` = `attendance-relay-admin`.
    admin_jwt_secret: Option<Secret> = "RELAY_ADMIN_JWT_SECRET",
        unset "the admin API answers 404", form "text";

    /// Store: `sqlite://path` (embedded; the file and its folder are created
    /// on first start), or `postgres://…` for several replicas sharing one
    /// queue, with libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`
    /// in the query.
    database_url: DatabaseUrl = "RELAY_DATABASE_URL", default "sqlite://data/relay.db",
        form "sqlite://path or postgres://user:password@host:port/database";

    /// PostgreSQL: connections each process opens at most.
    store_pool_size: NonZeroUsize = "RELAY_STORE_POOL_SIZE", default "8",
        form "a positive whole number of connections";

    /// PostgreSQL: how long the start waits for a server that is not up yet
    /// (trying every second) before it exits with the last reason.
    store_connect_timeout_secs: u64 = "RELAY_STORE_CONNECT_TIMEOUT_SECS", default "60",
        form "a whole number of seconds";

    /// PostgreSQL: the server stops a statement that runs longer (0: never).
    store_statement_timeout_ms: u64 = "RELAY_STORE_STATEMENT_TIMEOUT_MS", default "30000",
        form "a whole number of milliseconds";

    /// Request bodies larger than this are answered 413.
    max_body_bytes: NonZeroUsize = "RELAY_MAX_BODY_BYTES", default "262144",
        form "a positive whole number of bytes";

    /// Request bodies held in memory at once (being read or waiting for the
    /// store); past it new deliveries get 503 with Retry-After.
    max_inflight_bytes: usize = "RELAY_MAX_INFLIGHT_BYTES", default "67108864",
        form "a whole number of bytes";

    /// Settled records and dedupe keys are kept this long.
    retention_secs: u64 = "RELAY_RETENTION_SECS", default "604800",
        form "a whole number of seconds";

    /// HTTP worker threads of the public listener.
    workers: Option<NonZeroUsize> = "RELAY_WORKERS", unset "one per CPU core",
        form "a positive whole number of threads";

    /// Longest wait for more records to fill a batch before it is sent.
    batch_linger_ms: u64 = "RELAY_BATCH_LINGER_MS", default "250",
        form "a whole number of milliseconds";

    /// Undelivered records older than this stop being retried and become dead
    /// letters.
    max_record_age_secs: u64 = "RELAY_MAX_RECORD_AGE_SECS", default "259200",
        form "a whole number of seconds";

    /// Create contacts missing in HubSpot (batch upsert by email); when false
    /// their records become dead letters.
    create_contacts: bool = "RELAY_CREATE_CONTACTS", default "true", form "true or false";

    /// Create marketing events missing in HubSpot from what the platform sent;
    /// when false their records become dead letters.
    upsert_events: bool = "RELAY_UPSERT_EVENTS", default "false", form "true or false";

    /// Wait after a webinar's end (for late leaves) before completing its
    /// marketing event, so HubSpot computes durations from every session.
    complete_delay_secs: u64 = "RELAY_COMPLETE_DELAY_SECS", default "600",
        form "a whole number of seconds";

    /// Log lines as human-readable text or as JSON objects; the level comes
    /// from `RUST_LOG` (default `info`).
    log_format: LogFormat = "RELAY_LOG_FORMAT", default "text", form "text or json";

    /// HubSpot API root.
    hubspot_base_url: HttpUrl = "HUBSPOT_BASE_URL", default "https://api.hubapi.com",
        form "an absolute http(s) URL";

    /// Static HubSpot token (private app). Without a credential webhooks are
    /// still stored; forwarding waits and says why.
    hubspot_access_token: Option<Secret> = "HUBSPOT_ACCESS_TOKEN", unset "no static token",
        form "a token";

    /// OAuth: the HubSpot public app's client id. With the client secret and
    /// a refresh token the gateway holds the credential itself (not together
    /// with `HUBSPOT_ACCESS_TOKEN`).
    hubspot_client_id: Option<String> = "HUBSPOT_CLIENT_ID", unset "no OAuth", form "text";

    /// OAuth: the public app's client secret.
    hubspot_client_secret: Option<Secret> = "HUBSPOT_CLIENT_SECRET", unset "no OAuth",
        form "text";

    /// OAuth: the refresh token of the app's installation in the HubSpot
    /// account. Newer ones HubSpot hands out are kept in the store.
    hubspot_refresh_token: Option<Secret> = "HUBSPOT_REFRESH_TOKEN", unset "no OAuth",
        form "a token";

    /// OAuth token endpoint.
    hubspot_token_url: Option<HttpUrl> = "HUBSPOT_TOKEN_URL",
        unset "`{HUBSPOT_BASE_URL}/oauth/2026-03/token`", form "an absolute http(s) URL";

    /// Inputs per attendance `create` call.
    hubspot_batch_size: NonZeroUsize = "HUBSPOT_BATCH_SIZE", default "100",
        form "a positive whole number";

    /// HubSpot API calls allowed in any 10-second window, all calls together.
    hubspot_rate_limit_per_10s: NonZeroU32 = "HUBSPOT_RATE_LIMIT_PER_10S", default "100",
        form "a positive whole number";

    /// A HubSpot call that has not answered after this long is retried later.
    hubspot_request_timeout_ms: u64 = "HUBSPOT_REQUEST_TIMEOUT_MS", default "15000",
        form "a whole number of milliseconds";

    /// Zoom app's secret token.
    zoom_webhook_secret_token: Option<Secret> = "ZOOM_WEBHOOK_SECRET_TOKEN",
        unset "the Zoom route answers 404", form "a token";

    /// How old `x-zm-request-timestamp` may be. Zoom retries for about 85 minutes,
    /// and replays are harmless because deliveries are deduplicated.
    zoom_signature_tolerance_secs: u64 = "ZOOM_SIGNATURE_TOLERANCE_SECS", default "5400",
        form "a whole number of seconds";

    /// externalAccountId for Zoom records.
    zoom_external_account_id: Option<String> = "ZOOM_EXTERNAL_ACCOUNT_ID",
        unset "the payload's `account_id`", form "text";

    /// Secret path segment of the Eventbrite route (`/webhooks/eventbrite/{token}`).
    eventbrite_webhook_token: Option<Secret> = "EVENTBRITE_WEBHOOK_TOKEN",
        unset "the Eventbrite route answers 404", form "a token";

    /// Eventbrite private token the gateway fetches orders and attendees with.
    eventbrite_api_token: Option<Secret> = "EVENTBRITE_API_TOKEN",
        unset "Eventbrite deliveries are stored and wait for it", form "a token";

    /// The only URL prefix the gateway ever fetches from for Eventbrite.
    eventbrite_api_base_url: HttpUrl = "EVENTBRITE_API_BASE_URL",
        default "https://www.eventbriteapi.com/v3/", form "an absolute http(s) URL";

    /// externalAccountId for Eventbrite records.
    eventbrite_external_account_id: Option<String> = "EVENTBRITE_EXTERNAL_ACCOUNT_ID",
        unset "the webhook's `config.user_id`", form "text";

    /// HS256 secret for bearer tokens on the generic route. The route answers
    /// 404 while neither a JWT key nor `GENERIC_WEBHOOK_SECRET` is set.
    generic_jwt_secret: Option<Secret> = "GENERIC_JWT_SECRET", unset "no HS256 tokens",
        form "text";

    /// RSA (RS256) or P-256 (ES256) public key for bearer tokens on the
    /// generic route; the key's type fixes the algorithm. Not together with
    /// `GENERIC_JWT_SECRET`. A plain string: a public key is no secret, and
    /// seeing it in a `Debug` print tells which key is deployed.
    generic_jwt_public_key_pem: Option<String> = "GENERIC_JWT_PUBLIC_KEY_PEM",
        unset "no RS256/ES256 tokens", form "a public key in PEM form";

    /// The `iss` generic bearer tokens must carry.
    generic_jwt_issuer: Option<String> = "GENERIC_JWT_ISSUER", unset "not checked",
        form "text";

    /// The `aud` generic bearer tokens must carry.
    generic_jwt_audience: Option<String> = "GENERIC_JWT_AUDIENCE", unset "not checked",
        form "text";

    /// Standard Webhooks secret for signed deliveries on the generic route.
    generic_webhook_secret: Option<Secret> = "GENERIC_WEBHOOK_SECRET",
        unset "no signed deliveries", form "whsec_ and base64";

    /// externalAccountId for generic records that do not name one.
    generic_external_account_id: Option<String> = "GENERIC_EXTERNAL_ACCOUNT_ID",
        unset "records must name one", form "text";
}

/// A variable whose value cannot work; the start stops with exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{name}={value}: expected {form}")]
    Invalid {
        name: &'static str,
        /// As [`Setting`] may show it: quoted, or `<redacted>` for a secret.
        value: String,
        form: &'static str,
    },
    #[error("{0} is not valid UTF-8")]
    NotUnicode(&'static str),
}

impl Settings {
    /// The settings the process environment names.
    pub fn from_env() -> Result<Self, SettingsError> {
        let mut env = HashMap::new();
        for setting in TABLE {
            match std::env::var(setting.name) {
                Ok(value) => {
                    env.insert(setting.name.to_owned(), value);
                }
                Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(SettingsError::NotUnicode(setting.name));
                }
            }
        }
        Self::init_from_hashmap(&env)
    }

    /// envconfig's reading of `env` without its empty variables (so they take
    /// the default, or none), with errors that say what was expected.
    /// Shadows the trait's method, which would take `FOO=` as a value.
    pub fn init_from_hashmap(env: &HashMap<String, String>) -> Result<Self, SettingsError> {
        let set: HashMap<String, String> = env
            .iter()
            .filter(|(_, value)| !value.trim().is_empty())
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        <Self as Envconfig>::init_from_hashmap(&set).map_err(|err| {
            // Every field is optional or has a default: only a value can fail.
            let (envconfig::Error::ParseError { name } | envconfig::Error::EnvVarMissing { name }) =
                err;
            let setting = TABLE
                .iter()
                .find(|setting| setting.name == name)
                .expect("envconfig reads only the variables of TABLE");
            SettingsError::Invalid {
                name,
                value: (setting.shown)(set.get(name).map_or("", String::as_str)),
                form: setting.form,
            }
        })
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_secs)
    }

    pub fn token_url(&self) -> String {
        match &self.hubspot_token_url {
            Some(url) => url.as_str().to_owned(),
            None => format!(
                "{}/oauth/2026-03/token",
                self.hubspot_base_url.as_str().trim_end_matches('/')
            ),
        }
    }
}

/// The settings as `--help` prints them: each variable, the form of its
/// value, its default and its meaning.
pub fn help() -> String {
    let mut text = String::from(
        "Settings (environment variables; an empty variable counts as unset, and a value \
         that cannot work stops the start with exit status 2):\n",
    );
    for setting in TABLE {
        text.push_str(&format!(
            "\n  {}  ({}; {})\n",
            setting.name, setting.form, setting.when_unset
        ));
        for line in setting.meaning {
            text.push_str(&format!("      {}\n", line.trim()));
        }
    }
    text
}

/// How a value that failed to parse appears in the error: quoted, unless the
/// type says otherwise.
trait Shown {
    fn shown(raw: &str) -> String {
        format!("{raw:?}")
    }
}

impl Shown for String {}
impl Shown for usize {}
impl Shown for u64 {}
impl Shown for bool {}
impl Shown for NonZeroUsize {}
impl Shown for NonZeroU32 {}
impl Shown for LogFormat {}
impl Shown for HttpUrl {}

impl<T: Shown> Shown for Option<T> {
    fn shown(raw: &str) -> String {
        T::shown(raw)
    }
}

impl Shown for Secret {
    fn shown(_raw: &str) -> String {
        "<redacted>".into()
    }
}

impl Shown for DatabaseUrl {
    fn shown(raw: &str) -> String {
        format!("{:?}", redact_url(raw))
    }
}

/// `RELAY_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected text or json"),
        }
    }
}

/// An absolute http(s) URL with a host, kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HttpUrl {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = url::Url::parse(s.trim()).map_err(|_| "not an absolute URL")?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err("not an http(s) URL with a host");
        }
        Ok(Self(s.trim().to_owned()))
    }
}

/// `RELAY_DATABASE_URL`, which may carry a password
/// (`postgres://user:pw@host/db`): `Debug` shows it without.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// For logs: what follows the `@` only.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

/// Hides whatever precedes the `@` (user and password).
fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
        _ => url.to_owned(),
    }
}

/// A secret read from the environment: never printed by `Debug`.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(SecretString::from(s))
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(SecretString::from(s)))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::init_from_hashmap(&env)
    }

    fn refusal(name: &str, value: &str) -> String {
        match settings(&[(name, value)]) {
            Err(err) => err.to_string(),
            Ok(_) => panic!("{name}={value:?} was accepted"),
        }
    }

    #[test]
    fn debug_output_never_shows_a_secret_or_the_database_password() {
        let secrets = [
            ("ZOOM_WEBHOOK_SECRET_TOKEN", "zoom-secret-1"),
            ("HUBSPOT_ACCESS_TOKEN", "access-token-2"),
            ("HUBSPOT_CLIENT_SECRET", "client-secret-3"),
            ("HUBSPOT_REFRESH_TOKEN", "refresh-token-4"),
            ("GENERIC_JWT_SECRET", "jwt-secret-5"),
            ("GENERIC_WEBHOOK_SECRET", "whsec_c2VjcmV0LTY="),
            ("RELAY_ADMIN_JWT_SECRET", "admin-secret-8"),
            (
                "RELAY_DATABASE_URL",
                "postgres://relay:db-password-7@db/relay",
            ),
        ];
        let printed = format!("{:?}", settings(&secrets).unwrap());
        assert!(printed.contains("REDACTED"));
        assert!(printed.contains("***@db/relay"), "{printed}");
        for (_, secret) in secrets {
            assert!(!printed.contains(secret), "{secret} printed");
        }
        assert!(!printed.contains("db-password-7"));
    }

    #[test]
    fn an_empty_variable_takes_the_default_or_none() {
        let set = settings(&[
            ("RELAY_MAX_BODY_BYTES", ""),
            ("RELAY_LOG_FORMAT", " "),
            ("HUBSPOT_ACCESS_TOKEN", ""),
            ("HUBSPOT_TOKEN_URL", ""),
            ("RELAY_WORKERS", ""),
        ])
        .unwrap();
        assert_eq!(set.max_body_bytes.get(), 262_144);
        assert_eq!(set.log_format, LogFormat::Text);
        assert!(set.hubspot_access_token.is_none());
        assert!(set.workers.is_none());
        assert_eq!(
            set.token_url(),
            "https://api.hubapi.com/oauth/2026-03/token"
        );
        assert_eq!(set.max_inflight_bytes, 67_108_864);
    }

    #[test]
    fn a_value_that_cannot_work_is_refused_with_its_name_value_and_expected_form() {
        let cases = [
            ("HUBSPOT_BASE_URL", "not a url", "an absolute http(s) URL"),
            (
                "HUBSPOT_BASE_URL",
                "ftp://api.hubapi.com",
                "an absolute http(s) URL",
            ),
            (
                "HUBSPOT_TOKEN_URL",
                "/oauth/token",
                "an absolute http(s) URL",
            ),
            (
                "EVENTBRITE_API_BASE_URL",
                "www.eventbriteapi.com",
                "an absolute http(s) URL",
            ),
            ("RELAY_LOG_FORMAT", "xml", "text or json"),
            (
                "RELAY_MAX_BODY_BYTES",
                "lots",
                "a positive whole number of bytes",
            ),
            (
                "RELAY_MAX_BODY_BYTES",
                "0",
                "a positive whole number of bytes",
            ),
            ("RELAY_WORKERS", "-1", "a positive whole number of threads"),
            ("RELAY_CREATE_CONTACTS", "yes", "true or false"),
            ("HUBSPOT_RATE_LIMIT_PER_10S", "0", "a positive whole number"),
        ];
        for (name, value, form) in cases {
            assert_eq!(
                refusal(name, value),
                format!("{name}={value:?}: expected {form}")
            );
        }
        assert_eq!(
            settings(&[("RELAY_LOG_FORMAT", "JSON")])
                .unwrap()
                .log_format,
            LogFormat::Json
        );
    }

    #[test]
    fn every_default_is_a_valid_value() {
        let defaults: Vec<(&str, &str)> = TABLE
            .iter()
            .filter_map(|setting| match setting.when_unset {
                WhenUnset::Default(value) => Some((setting.name, value)),
                WhenUnset::Means(_) => None,
            })
            .collect();
        assert!(settings(&defaults).is_ok());
    }

    /// docs/configuration.md's table row of `setting`: its cells as
    /// `--help` prints them (backticks aside, which the page may add).
    fn row(setting: &Setting) -> [String; 4] {
        let meaning: Vec<&str> = setting.meaning.iter().map(|line| line.trim()).collect();
        [
            format!("`{}`", setting.name),
            setting.form.to_owned(),
            setting.when_unset.to_string(),
            meaning.join(" "),
        ]
        .map(|cell| cell.replace('`', ""))
    }

    #[test]
    fn the_configuration_page_says_what_help_says_of_every_setting_and_names_no_other() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let page = std::fs::read_to_string(path).expect("docs/configuration.md");
        let rows: Vec<Vec<String>> = page
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                line.trim_matches('|')
                    .split(" | ")
                    .map(|cell| cell.trim().replace('`', ""))
                    .collect()
            })
            .collect();
        for setting in TABLE {
            let expected = row(setting);
            let found = rows.iter().find(|row| row[0] == expected[0]);
            assert_eq!(
                found.map(Vec::as_slice),
                Some(&expected[..]),
                "docs/configuration.md's row for {} should read:\n| {} |",
                setting.name,
                expected.join(" | ")
            );
        }
        // Every variable the page names, in its table or its prose, exists.
        let named = page
            .split('`')
            .skip(1)
            .step_by(2)
            .filter_map(|code| code.split('=').next())
            .filter(|code| {
                ["RELAY_", "HUBSPOT_", "ZOOM_", "EVENTBRITE_", "GENERIC_"]
                    .iter()
                    .any(|prefix| code.starts_with(prefix))
                    && code
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            });
        for name in named {
            assert!(
                TABLE.iter().any(|setting| setting.name == name),
                "docs/configuration.md names {name}, which is no setting"
            );
        }
    }
}
