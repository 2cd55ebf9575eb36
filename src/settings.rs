//! Every environment variable the gateway reads, with its default.
//! The field docs are the configuration reference (README mirrors them).

use std::{fmt, str::FromStr, time::Duration};

use envconfig::Envconfig;
use secrecy::{ExposeSecret, SecretString};

#[derive(Envconfig, Debug, Clone)]
pub struct Settings {
    /// Public listener: webhooks, `/healthz`, `/readyz`.
    #[envconfig(from = "RELAY_LISTEN_ADDR", default = "0.0.0.0:8080")]
    pub listen_addr: String,

    /// Admin listener: `/metrics` (and later `/admin/*`). Never exposed by the ingress.
    #[envconfig(from = "RELAY_ADMIN_ADDR", default = "0.0.0.0:9090")]
    pub admin_addr: String,

    /// Store: `sqlite://path` (embedded, created on first start).
    #[envconfig(from = "RELAY_DATABASE_URL", default = "sqlite://data/relay.db")]
    pub database_url: String,

    /// Request bodies larger than this are answered 413.
    #[envconfig(from = "RELAY_MAX_BODY_BYTES", default = "262144")]
    pub max_body_bytes: usize,

    /// Request bodies held in memory at once (being read or waiting for the
    /// store); past it new deliveries get 503 with Retry-After.
    #[envconfig(from = "RELAY_MAX_INFLIGHT_BYTES", default = "67108864")]
    pub max_inflight_bytes: usize,

    /// Settled records and dedupe keys are kept this long (seconds).
    #[envconfig(from = "RELAY_RETENTION_SECS", default = "604800")]
    pub retention_secs: u64,

    /// HTTP worker threads per listener; unset means one per CPU core.
    #[envconfig(from = "RELAY_WORKERS")]
    pub workers: Option<usize>,

    /// Longest wait (ms) for more records to fill a batch before it is sent.
    #[envconfig(from = "RELAY_BATCH_LINGER_MS", default = "250")]
    pub batch_linger_ms: u64,

    /// Undelivered records older than this (seconds) stop being retried and
    /// become dead letters.
    #[envconfig(from = "RELAY_MAX_RECORD_AGE_SECS", default = "259200")]
    pub max_record_age_secs: u64,

    /// Create contacts missing in HubSpot (batch upsert by email); when false
    /// their records become dead letters.
    #[envconfig(from = "RELAY_CREATE_CONTACTS", default = "true")]
    pub create_contacts: bool,

    /// Create marketing events missing in HubSpot from what the platform sent;
    /// when false their records become dead letters.
    #[envconfig(from = "RELAY_UPSERT_EVENTS", default = "false")]
    pub upsert_events: bool,

    /// `json` for structured logs, anything else for human-readable text.
    #[envconfig(from = "RELAY_LOG_FORMAT", default = "text")]
    pub log_format: String,

    /// HubSpot API root.
    #[envconfig(from = "HUBSPOT_BASE_URL", default = "https://api.hubapi.com")]
    pub hubspot_base_url: String,

    /// Static HubSpot token (private app). Without a credential webhooks are
    /// still stored; forwarding waits and says why.
    #[envconfig(from = "HUBSPOT_ACCESS_TOKEN")]
    pub hubspot_access_token: Option<Secret>,

    /// OAuth: the HubSpot public app's client id. With the client secret and
    /// a refresh token the gateway holds the credential itself.
    #[envconfig(from = "HUBSPOT_CLIENT_ID")]
    pub hubspot_client_id: Option<String>,

    /// OAuth: the public app's client secret.
    #[envconfig(from = "HUBSPOT_CLIENT_SECRET")]
    pub hubspot_client_secret: Option<Secret>,

    /// OAuth: the refresh token of the app's installation in the HubSpot
    /// account. Newer ones HubSpot hands out are kept in the store.
    #[envconfig(from = "HUBSPOT_REFRESH_TOKEN")]
    pub hubspot_refresh_token: Option<Secret>,

    /// OAuth token endpoint; unset means `{HUBSPOT_BASE_URL}/oauth/2026-03/token`.
    #[envconfig(from = "HUBSPOT_TOKEN_URL")]
    pub hubspot_token_url: Option<String>,

    /// Inputs per attendance `create` call.
    #[envconfig(from = "HUBSPOT_BATCH_SIZE", default = "100")]
    pub hubspot_batch_size: usize,

    /// HubSpot API calls allowed in any 10-second window, all calls together.
    #[envconfig(from = "HUBSPOT_RATE_LIMIT_PER_10S", default = "100")]
    pub hubspot_rate_limit_per_10s: u32,

    /// A HubSpot call that has not answered after this long (ms) is retried later.
    #[envconfig(from = "HUBSPOT_REQUEST_TIMEOUT_MS", default = "15000")]
    pub hubspot_request_timeout_ms: u64,

    /// Secret path segment of the Eventbrite route
    /// (`/webhooks/eventbrite/{token}`); the route answers 404 while unset.
    #[envconfig(from = "EVENTBRITE_WEBHOOK_TOKEN")]
    pub eventbrite_webhook_token: Option<Secret>,

    /// Eventbrite private token the gateway fetches orders and attendees with.
    /// Unset: Eventbrite deliveries are stored and wait for it.
    #[envconfig(from = "EVENTBRITE_API_TOKEN")]
    pub eventbrite_api_token: Option<Secret>,

    /// The only URL prefix the gateway ever fetches from for Eventbrite.
    #[envconfig(
        from = "EVENTBRITE_API_BASE_URL",
        default = "https://www.eventbriteapi.com/v3/"
    )]
    pub eventbrite_api_base_url: String,

    /// externalAccountId for Eventbrite records; unset means `config.user_id`.
    #[envconfig(from = "EVENTBRITE_EXTERNAL_ACCOUNT_ID")]
    pub eventbrite_external_account_id: Option<String>,

    /// Zoom app's secret token; the Zoom route answers 404 while unset.
    #[envconfig(from = "ZOOM_WEBHOOK_SECRET_TOKEN")]
    pub zoom_webhook_secret_token: Option<Secret>,

    /// How old `x-zm-request-timestamp` may be. Zoom retries for about 85 minutes,
    /// and replays are harmless because deliveries are deduplicated.
    #[envconfig(from = "ZOOM_SIGNATURE_TOLERANCE_SECS", default = "5400")]
    pub zoom_signature_tolerance_secs: u64,

    /// externalAccountId for Zoom records; unset means the payload's `account_id`.
    #[envconfig(from = "ZOOM_EXTERNAL_ACCOUNT_ID")]
    pub zoom_external_account_id: Option<String>,

    /// HS256 secret for bearer tokens on the generic route. The route answers
    /// 404 while neither a JWT key nor `GENERIC_WEBHOOK_SECRET` is set.
    #[envconfig(from = "GENERIC_JWT_SECRET")]
    pub generic_jwt_secret: Option<Secret>,

    /// RSA (RS256) or P-256 (ES256) public key, PEM, for bearer tokens on the
    /// generic route; the key's type fixes the algorithm. Not together with
    /// `GENERIC_JWT_SECRET`. A plain string: a public key is no secret, and
    /// seeing it in a `Debug` print tells which key is deployed.
    #[envconfig(from = "GENERIC_JWT_PUBLIC_KEY_PEM")]
    pub generic_jwt_public_key_pem: Option<String>,

    /// Required `iss` of generic bearer tokens; unset means not checked.
    #[envconfig(from = "GENERIC_JWT_ISSUER")]
    pub generic_jwt_issuer: Option<String>,

    /// Required `aud` of generic bearer tokens; unset means not checked.
    #[envconfig(from = "GENERIC_JWT_AUDIENCE")]
    pub generic_jwt_audience: Option<String>,

    /// Standard Webhooks secret (`whsec_…`) for signed deliveries on the generic route.
    #[envconfig(from = "GENERIC_WEBHOOK_SECRET")]
    pub generic_webhook_secret: Option<Secret>,

    /// externalAccountId for generic records that do not name one.
    #[envconfig(from = "GENERIC_EXTERNAL_ACCOUNT_ID")]
    pub generic_external_account_id: Option<String>,
}

impl Settings {
    pub fn from_env() -> Result<Self, envconfig::Error> {
        Self::init_from_env()
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_secs)
    }

    pub fn token_url(&self) -> String {
        match self
            .hubspot_token_url
            .as_deref()
            .filter(|url| !url.is_empty())
        {
            Some(url) => url.to_owned(),
            None => format!(
                "{}/oauth/2026-03/token",
                self.hubspot_base_url.trim_end_matches('/')
            ),
        }
    }
}

/// A secret read from the environment: never printed by `Debug`, and an empty
/// value counts as unset so `FOO=` in a manifest switches a feature off.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
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

/// Treats an empty variable as unset.
pub fn configured(secret: &Option<Secret>) -> Option<&Secret> {
    secret.as_ref().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn debug_output_never_shows_a_secret() {
        let secrets = [
            ("ZOOM_WEBHOOK_SECRET_TOKEN", "zoom-secret-1"),
            ("HUBSPOT_ACCESS_TOKEN", "access-token-2"),
            ("HUBSPOT_CLIENT_SECRET", "client-secret-3"),
            ("HUBSPOT_REFRESH_TOKEN", "refresh-token-4"),
            ("GENERIC_JWT_SECRET", "jwt-secret-5"),
            ("GENERIC_WEBHOOK_SECRET", "whsec_c2VjcmV0LTY="),
        ];
        let env: HashMap<String, String> = secrets
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let printed = format!("{:?}", Settings::init_from_hashmap(&env).unwrap());
        assert!(printed.contains("REDACTED"));
        for (_, secret) in secrets {
            assert!(!printed.contains(secret), "{secret} printed");
        }
    }
}
