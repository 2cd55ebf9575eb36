//! OAuth credential of a HubSpot public app: access tokens refreshed with the
//! refresh token ahead of their expiry (HubSpot says a 401 is not a reliable
//! sign of expiry), one refresh at a time, the result kept in the store so a
//! restart or another replica reuses it instead of refreshing again.

use std::{cell::RefCell, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{CredentialError, TokenSource};
use crate::{
    metrics::Metrics,
    outbound,
    record::now_ms,
    settings::Secret,
    store::{Store, StoredCredential},
};

/// A token is refreshed once less than this is left of its life (HubSpot's
/// live 30 minutes).
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);

pub struct OAuth {
    client_id: String,
    client_secret: Secret,
    configured_refresh_token: Secret,
    /// Which installation a stored credential must descend from to be used.
    origin: String,
    token_url: String,
    http: awc::Client,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    held: RefCell<Option<StoredCredential>>,
    /// Callers that find the token stale queue here; the first refreshes,
    /// the others find its result.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: i64,
}

impl OAuth {
    pub fn new(
        client_id: &str,
        client_secret: Secret,
        refresh_token: Secret,
        token_url: &str,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret,
            origin: hex::encode(Sha256::digest(refresh_token.expose().as_bytes())),
            configured_refresh_token: refresh_token,
            token_url: token_url.to_owned(),
            http: outbound::client(TOKEN_TIMEOUT, true),
            store,
            metrics,
            held: RefCell::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn store_key(&self) -> String {
        format!("hubspot-oauth:{}", self.client_id)
    }

    /// The held access token while it has more than [`REFRESH_AHEAD`] to live.
    fn fresh(&self) -> Option<Secret> {
        let held = self.held.borrow();
        let held = held.as_ref()?;
        let ahead = REFRESH_AHEAD.as_millis() as i64;
        (held.expires_at_ms - ahead > now_ms()).then(|| held.access_token.clone())
    }

    /// Takes up what the store holds (another replica's or an earlier run's
    /// refresh) when it descends from the configured installation.
    async fn adopt_stored(&self) {
        match self.store.load_credential(&self.store_key()).await {
            Ok(Some(stored)) if stored.origin == self.origin => {
                let newer = self
                    .held
                    .borrow()
                    .as_ref()
                    .is_none_or(|held| stored.expires_at_ms > held.expires_at_ms);
                if newer {
                    self.metrics.set_token_expiry(stored.expires_at_ms);
                    *self.held.borrow_mut() = Some(stored);
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "cannot read the stored HubSpot credential"),
        }
    }

    /// Refreshes unless a fresh token is available by the time it is our turn.
    async fn fresh_or_refresh(&self, stale: Option<&Secret>) -> Result<Secret, CredentialError> {
        let _turn = self.refreshing.lock().await;
        self.adopt_stored().await;
        if let Some(token) = self.fresh() {
            let same_as_refused = stale.is_some_and(|s| s.expose() == token.expose());
            if !same_as_refused {
                return Ok(token);
            }
        }
        self.refresh().await
    }

    async fn refresh(&self) -> Result<Secret, CredentialError> {
        let refresh_token = self.held.borrow().as_ref().map_or_else(
            || self.configured_refresh_token.clone(),
            |held| held.refresh_token.clone(),
        );
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("refresh_token", refresh_token.expose()),
        ];
        let outcome = match self.http.post(&self.token_url).send_form(&form).await {
            Err(err) => Err(CredentialError::Unavailable(format!(
                "HubSpot's token endpoint cannot be reached: {err}"
            ))),
            Ok(mut response) => {
                let status = response.status().as_u16();
                let body = response.body().limit(64 * 1024).await.unwrap_or_default();
                match status {
                    200..=299 => serde_json::from_slice::<TokenAnswer>(&body).map_err(|err| {
                        CredentialError::Unavailable(format!(
                            "HubSpot's token answer is unreadable: {err}"
                        ))
                    }),
                    400..=499 if status != 429 => Err(CredentialError::Refused(format!(
                        "HubSpot refused the OAuth refresh ({status} {}); forwarding waits for a working \
                         HUBSPOT_REFRESH_TOKEN / client credentials",
                        refusal(&body)
                    ))),
                    _ => Err(CredentialError::Unavailable(format!(
                        "HubSpot's token endpoint answered {status}"
                    ))),
                }
            }
        };
        let label = match &outcome {
            Ok(_) => "success",
            Err(CredentialError::Refused(_)) => "refused",
            Err(_) => "error",
        };
        self.metrics
            .token_refreshes
            .with_label_values(&[label])
            .inc();
        let answer = outcome?;

        let credential = StoredCredential {
            origin: self.origin.clone(),
            refresh_token: answer.refresh_token.map_or(refresh_token, Secret::from),
            access_token: Secret::from(answer.access_token),
            expires_at_ms: now_ms() + answer.expires_in.max(0) * 1000,
        };
        let token = credential.access_token.clone();
        self.metrics.set_token_expiry(credential.expires_at_ms);
        tracing::info!(
            expires_in_secs = answer.expires_in,
            "refreshed the HubSpot access token"
        );
        if let Err(err) = self
            .store
            .save_credential(&self.store_key(), &credential)
            .await
        {
            // The token works for this process; others will refresh for themselves.
            tracing::warn!(error = %err, "cannot store the refreshed HubSpot credential");
        }
        *self.held.borrow_mut() = Some(credential);
        Ok(token)
    }
}

/// HubSpot's own words for a refusal (`status` such as BAD_REFRESH_TOKEN, and
/// `message`): never the raw body, which might echo what was sent.
fn refusal(body: &[u8]) -> String {
    let answer: Value = serde_json::from_slice(body).unwrap_or_default();
    let field = |name: &str| {
        answer
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    format!("{} {}", field("status"), field("message"))
        .trim()
        .to_owned()
}

#[async_trait(?Send)]
impl TokenSource for OAuth {
    async fn access_token(&self) -> Result<Secret, CredentialError> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        self.fresh_or_refresh(None).await
    }

    async fn rejected(&self, token: &Secret) -> Result<(), CredentialError> {
        self.fresh_or_refresh(Some(token)).await.map(drop)
    }
}
