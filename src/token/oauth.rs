//! OAuth credential of a HubSpot public app: access tokens refreshed with the
//! refresh token ahead of their expiry (HubSpot says a 401 is not a reliable
//! sign of expiry), one refresh at a time whose outcome every waiting call
//! shares, the result kept in the store so a restart or another replica
//! reuses it instead of refreshing again. A failed refresh is remembered for
//! a backoff, so the token endpoint is never asked in a tight loop.

use std::{
    cell::RefCell,
    sync::Arc,
    time::{Duration, Instant},
};

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
    status::LiveStatus,
    store::{Credentials, StoredCredential},
};

/// A token is refreshed once less than this, or than half its lifetime, is
/// left of it (HubSpot's live 30 minutes; a short-lived one is still used for
/// half its life).
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a failed refresh is remembered: doubling from the first to the
/// last while refreshes keep failing.
const FAILURE_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(60);

pub struct OAuth {
    client_id: String,
    client_secret: Secret,
    configured_refresh_token: Secret,
    /// Which installation a stored credential must descend from to be used.
    origin: String,
    token_url: String,
    http: awc::Client,
    store: Arc<dyn Credentials>,
    metrics: Arc<Metrics>,
    status: Arc<LiveStatus>,
    held: RefCell<Option<Held>>,
    /// The last refresh failed: its error, until when it stands.
    failure: RefCell<Option<Failure>>,
    /// Callers that find the token stale queue here; the first refreshes,
    /// the others find its outcome.
    refreshing: tokio::sync::Mutex<()>,
}

/// The credential in use.
struct Held {
    credential: StoredCredential,
}

impl Held {
    fn new(credential: StoredCredential) -> Self {
        Self { credential }
    }

    /// When to refresh: [`REFRESH_AHEAD`] before expiry, or half the lifetime
    /// before it if that is shorter — the lifetime it was issued with, not
    /// what is left when this process took it up, so replicas agree.
    fn refresh_at_ms(&self) -> i64 {
        let lifetime = self.credential.expires_at_ms - self.credential.refreshed_ms;
        let ahead = (REFRESH_AHEAD.as_millis() as i64).min(lifetime / 2);
        self.credential.expires_at_ms - ahead
    }

    fn expires_at_ms(&self) -> i64 {
        self.credential.expires_at_ms
    }
}

struct Failure {
    error: CredentialError,
    until: Instant,
    backoff: Duration,
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
        store: Arc<dyn Credentials>,
        metrics: Arc<Metrics>,
        status: Arc<LiveStatus>,
    ) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret,
            origin: hex::encode(Sha256::digest(refresh_token.expose().as_bytes())),
            configured_refresh_token: refresh_token,
            token_url: token_url.to_owned(),
            // A redirect would send the client secret and refresh token elsewhere.
            http: outbound::client(TOKEN_TIMEOUT, false),
            store,
            metrics,
            status,
            held: RefCell::new(None),
            failure: RefCell::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn store_key(&self) -> String {
        format!("hubspot-oauth:{}", self.client_id)
    }

    /// The held access token while `now` is before `until(held)`, unless it
    /// is the one HubSpot refused.
    fn held_token(&self, until: fn(&Held) -> i64, refused: Option<&Secret>) -> Option<Secret> {
        let held = self.held.borrow();
        let held = held.as_ref()?;
        let token = &held.credential.access_token;
        let refused = refused.is_some_and(|refused| refused.expose() == token.expose());
        (until(held) > now_ms() && !refused).then(|| token.clone())
    }

    /// The held access token while it need not be refreshed yet.
    fn fresh(&self, refused: Option<&Secret>) -> Option<Secret> {
        self.held_token(Held::refresh_at_ms, refused)
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
                    .is_none_or(|held| stored.expires_at_ms > held.expires_at_ms());
                if newer {
                    self.status.set_token_expiry(stored.expires_at_ms);
                    *self.held.borrow_mut() = Some(Held::new(stored));
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "cannot read the stored HubSpot credential"),
        }
    }

    /// Refreshes unless, by the time it is our turn, a fresh token is there
    /// or the refresh before ours failed within its backoff. While refreshing
    /// fails, a token that has not expired yet is still handed out.
    async fn fresh_or_refresh(&self, refused: Option<&Secret>) -> Result<Secret, CredentialError> {
        let _turn = self.refreshing.lock().await;
        // One refresh for the deployment: another replica's may have just
        // landed in the store, which is read again under the lock.
        let _deployment_turn = match self.store.lock_credential(&self.store_key()).await {
            Ok(lock) => Some(lock),
            Err(err) => {
                tracing::warn!(error = %err, "cannot take the shared credential lock");
                None
            }
        };
        self.adopt_stored().await;
        if let Some(token) = self.fresh(refused) {
            return Ok(token);
        }
        let outcome = match self.remembered_failure() {
            Some(error) => Err(error),
            None => {
                let outcome = self.refresh().await;
                self.remember(&outcome);
                outcome
            }
        };
        outcome.or_else(|error| self.held_token(Held::expires_at_ms, refused).ok_or(error))
    }

    fn remembered_failure(&self) -> Option<CredentialError> {
        let failure = self.failure.borrow();
        let failure = failure.as_ref().filter(|f| Instant::now() < f.until)?;
        Some(failure.error.clone())
    }

    /// A failure stands for a backoff that doubles while refreshes keep
    /// failing; a success forgets it.
    fn remember(&self, outcome: &Result<Secret, CredentialError>) {
        let mut failure = self.failure.borrow_mut();
        *failure = match outcome {
            Ok(_) => None,
            Err(error) => {
                let backoff = failure.as_ref().map_or(FAILURE_BACKOFF_FIRST, |last| {
                    (last.backoff * 2).min(FAILURE_BACKOFF_MAX)
                });
                tracing::warn!(%error, retry_in = ?backoff, "HubSpot token refresh failed");
                Some(Failure {
                    error: error.clone(),
                    until: Instant::now() + backoff,
                    backoff,
                })
            }
        };
    }

    async fn refresh(&self) -> Result<Secret, CredentialError> {
        let refresh_token = self.held.borrow().as_ref().map_or_else(
            || self.configured_refresh_token.clone(),
            |held| held.credential.refresh_token.clone(),
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
                    300..=399 => Err(CredentialError::Refused(format!(
                        "HubSpot's token endpoint answered {status}, a redirect, which is not \
                         followed (it would carry the client secret): HUBSPOT_TOKEN_URL must \
                         name the endpoint itself"
                    ))),
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
        self.status.record_token_refresh(label);
        let answer = outcome?;

        let credential = StoredCredential {
            origin: self.origin.clone(),
            refresh_token: answer.refresh_token.map_or(refresh_token, Secret::from),
            access_token: Secret::from(answer.access_token),
            expires_at_ms: now_ms() + answer.expires_in.max(0) * 1000,
            refreshed_ms: now_ms(),
        };
        let token = credential.access_token.clone();
        self.status.set_token_expiry(credential.expires_at_ms);
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
        *self.held.borrow_mut() = Some(Held::new(credential));
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
        if let Some(token) = self.fresh(None) {
            return Ok(token);
        }
        self.fresh_or_refresh(None).await
    }

    async fn rejected(&self, token: &Secret) -> Result<(), CredentialError> {
        self.fresh_or_refresh(Some(token)).await.map(drop)
    }
}

#[cfg(all(test, feature = "demo"))]
mod tests {
    use futures_util::future::join_all;

    use super::*;
    use crate::demo::simulator::{Fault, OAuthOptions, Options, Simulator};

    const REFRESH_TOKEN: &str = "refresh-token";

    async fn endpoint(expires_in_secs: u64) -> Simulator {
        let oauth = OAuthOptions {
            client_id: "client".into(),
            client_secret: "secret".into(),
            refresh_token: REFRESH_TOKEN.into(),
            expires_in_secs,
        };
        Simulator::start(Options {
            oauth: Some(oauth),
            ..Options::default()
        })
        .await
        .unwrap()
    }

    fn oauth(endpoint: &Simulator, dir: &tempfile::TempDir) -> OAuth {
        let db = format!("sqlite://{}", dir.path().join("relay.db").display());
        OAuth::new(
            "client",
            Secret::from("secret".to_owned()),
            Secret::from(REFRESH_TOKEN.to_owned()),
            &format!("{}/oauth/2026-03/token", endpoint.url()),
            crate::store::open(&db, &Default::default()).unwrap(),
            Arc::new(Metrics::new()),
            Arc::default(),
        )
    }

    /// What twenty callers at once got.
    async fn twenty_callers(oauth: &OAuth) -> Vec<&'static str> {
        let outcomes = join_all((0..20).map(|_| oauth.access_token())).await;
        outcomes.iter().map(outcome).collect()
    }

    fn outcome(outcome: &Result<Secret, CredentialError>) -> &'static str {
        match outcome {
            Ok(_) => "token",
            Err(CredentialError::Refused(_)) => "refused",
            Err(CredentialError::Unavailable(_)) => "unavailable",
            Err(CredentialError::Missing) => "missing",
        }
    }

    fn backoff(oauth: &OAuth) -> Option<Duration> {
        oauth
            .failure
            .borrow()
            .as_ref()
            .map(|failure| failure.backoff)
    }

    /// The remembered failure's backoff runs out now, as it would once its
    /// time had passed.
    fn end_backoff(oauth: &OAuth) {
        let mut failure = oauth.failure.borrow_mut();
        failure.as_mut().expect("a failure is remembered").until = Instant::now();
    }

    /// The held token is due for its refresh and still valid for `left`, as
    /// it would be that long before its expiry; the store holds the same, so
    /// taking the stored one up again changes nothing.
    async fn age(oauth: &OAuth, left: Duration) {
        let mut credential = oauth
            .held
            .borrow()
            .as_ref()
            .expect("a token is held")
            .credential
            .clone();
        let lifetime = credential.expires_at_ms - credential.refreshed_ms;
        credential.expires_at_ms = now_ms() + left.as_millis() as i64;
        credential.refreshed_ms = credential.expires_at_ms - lifetime;
        oauth
            .store
            .save_credential(&oauth.store_key(), &credential)
            .await
            .unwrap();
        *oauth.held.borrow_mut() = Some(Held::new(credential));
    }

    #[actix_web::test]
    async fn waiting_callers_share_one_failed_refresh_which_stands_for_a_doubling_backoff() {
        let endpoint = endpoint(1800).await;
        endpoint.fail_next_token(Fault::status(400));
        endpoint.fail_next_token(Fault::status(503));
        let dir = tempfile::tempdir().unwrap();
        let oauth = oauth(&endpoint, &dir);

        assert_eq!(twenty_callers(&oauth).await, ["refused"; 20]);
        assert_eq!(endpoint.token_requests().len(), 1, "one refresh for all");
        // Within the backoff: the remembered refusal, no request.
        assert_eq!(outcome(&oauth.access_token().await), "refused");
        assert_eq!(endpoint.token_requests().len(), 1);
        assert_eq!(backoff(&oauth), Some(FAILURE_BACKOFF_FIRST));

        end_backoff(&oauth);
        assert_eq!(twenty_callers(&oauth).await, ["unavailable"; 20]);
        assert_eq!(endpoint.token_requests().len(), 2);
        assert_eq!(backoff(&oauth), Some(FAILURE_BACKOFF_FIRST * 2));
        // Within the doubled backoff: still no request.
        assert_eq!(outcome(&oauth.access_token().await), "unavailable");
        assert_eq!(endpoint.token_requests().len(), 2);

        end_backoff(&oauth);
        assert_eq!(twenty_callers(&oauth).await, ["token"; 20]);
        assert_eq!(endpoint.token_requests().len(), 3);
        assert_eq!(backoff(&oauth), None, "a success forgets the failure");
    }

    #[actix_web::test]
    async fn a_token_that_has_not_expired_is_still_used_while_its_refresh_fails() {
        let endpoint = endpoint(1800).await;
        let dir = tempfile::tempdir().unwrap();
        let oauth = oauth(&endpoint, &dir);
        let token = oauth.access_token().await.unwrap();
        // Due for its refresh five minutes ahead, valid for one more.
        age(&oauth, Duration::from_secs(60)).await;
        endpoint.fail_next_token(Fault::status(503));
        let again = oauth.access_token().await.unwrap();
        assert_eq!(again.expose(), token.expose());
        assert_eq!(endpoint.token_requests().len(), 2, "the refresh was tried");
        // HubSpot refusing that token leaves nothing to hand out.
        assert!(oauth.rejected(&token).await.is_err());
    }

    #[test]
    fn a_short_lived_token_is_refreshed_at_half_its_life_a_long_one_five_minutes_ahead() {
        let held = |lifetime_ms: i64| Held {
            credential: StoredCredential {
                origin: String::new(),
                refresh_token: Secret::from(String::new()),
                access_token: Secret::from(String::new()),
                expires_at_ms: 1_000_000 + lifetime_ms,
                refreshed_ms: 1_000_000,
            },
        };
        assert_eq!(held(5_000).refresh_at_ms(), 1_002_500);
        assert_eq!(held(1_800_000).refresh_at_ms(), 1_000_000 + 1_500_000);
        assert_eq!(held(0).refresh_at_ms(), 1_000_000);
    }
}
