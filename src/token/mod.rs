//! The HubSpot credential, held in one place. The client asks it for a token
//! before every call and tells it when HubSpot refused one; whether the token
//! is a private app's static token or an OAuth access token refreshed ahead of
//! its expiry stays behind [`TokenSource`].

mod oauth;

use std::{rc::Rc, sync::Arc};

use async_trait::async_trait;

pub use oauth::OAuth;

use crate::{
    metrics::Metrics,
    settings::{Secret, Settings},
    store::Credentials,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    /// Nothing to authenticate with; forwarding waits for configuration.
    #[error(
        "no HubSpot credential is configured (set HUBSPOT_ACCESS_TOKEN, or HUBSPOT_CLIENT_ID, \
         HUBSPOT_CLIENT_SECRET and HUBSPOT_REFRESH_TOKEN)"
    )]
    Missing,
    /// HubSpot refused the credential; someone has to fix it.
    #[error("{0}")]
    Refused(String),
    /// The token endpoint could not be asked now (network, 5xx); try later.
    #[error("{0}")]
    Unavailable(String),
}

#[async_trait(?Send)]
pub trait TokenSource {
    /// A token to put in `Authorization: Bearer`.
    async fn access_token(&self) -> Result<Secret, CredentialError>;

    /// HubSpot answered 401 to `token`. `Ok` when a fresh token is available
    /// and the call is worth one retry.
    async fn rejected(&self, token: &Secret) -> Result<(), CredentialError>;
}

/// `HUBSPOT_ACCESS_TOKEN`: a private app's token, or none at all.
#[derive(Debug)]
pub struct StaticToken(Option<Secret>);

impl StaticToken {
    pub fn new(token: Option<Secret>) -> Self {
        Self(token)
    }
}

#[async_trait(?Send)]
impl TokenSource for StaticToken {
    async fn access_token(&self) -> Result<Secret, CredentialError> {
        self.0.clone().ok_or(CredentialError::Missing)
    }

    /// A static token cannot be renewed: the operator has to replace it.
    async fn rejected(&self, _token: &Secret) -> Result<(), CredentialError> {
        Err(CredentialError::Refused(
            "HubSpot refused HUBSPOT_ACCESS_TOKEN (401): replace the token".into(),
        ))
    }
}

/// Settings that name a credential in two ways, or half of the OAuth one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CredentialConfigError(&'static str);

/// The credential the settings name: OAuth when its three variables are set,
/// else the static token (possibly none).
pub fn from_settings(
    settings: &Settings,
    store: Arc<dyn Credentials>,
    metrics: Arc<Metrics>,
) -> Result<Rc<dyn TokenSource>, CredentialConfigError> {
    let client_id = settings.hubspot_client_id.as_deref();
    let secret = settings.hubspot_client_secret.as_ref();
    let refresh = settings.hubspot_refresh_token.as_ref();
    let static_token = settings.hubspot_access_token.as_ref();
    match (client_id, secret, refresh, static_token) {
        (None, None, None, token) => Ok(Rc::new(StaticToken::new(token.cloned()))),
        (Some(_), Some(_), Some(_), Some(_)) => Err(CredentialConfigError(
            "set either HUBSPOT_ACCESS_TOKEN or the OAuth credential, not both",
        )),
        (Some(client_id), Some(secret), Some(refresh), None) => Ok(Rc::new(OAuth::new(
            client_id,
            secret.clone(),
            refresh.clone(),
            &settings.token_url(),
            store,
            metrics,
        ))),
        _ => Err(CredentialConfigError(
            "HUBSPOT_CLIENT_ID, HUBSPOT_CLIENT_SECRET and HUBSPOT_REFRESH_TOKEN go together",
        )),
    }
}
