//! The HubSpot credential, held in one place. The client asks it for a token
//! before every call and tells it when HubSpot refused one; how a token is
//! obtained (static now, OAuth refresh later) stays behind this seam.

use async_trait::async_trait;

use crate::settings::Secret;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    /// Nothing to authenticate with; forwarding waits for configuration.
    #[error("no HubSpot credential is configured (set HUBSPOT_ACCESS_TOKEN)")]
    Missing,
    /// HubSpot refused the credential; a new one is needed.
    #[error("HubSpot refused the credential: {0}")]
    Refused(String),
}

#[async_trait(?Send)]
pub trait TokenSource {
    /// A token to put in `Authorization: Bearer`.
    async fn access_token(&self) -> Result<Secret, CredentialError>;

    /// HubSpot answered 401 to `token`. True when a fresh token is now
    /// available and the call is worth one retry.
    async fn rejected(&self, token: &Secret) -> bool;
}

/// `HUBSPOT_ACCESS_TOKEN`: a private app's token, or none at all.
#[derive(Debug)]
pub struct StaticToken(Option<Secret>);

impl StaticToken {
    pub fn new(token: Option<Secret>) -> Self {
        Self(token.filter(|t| !t.is_empty()))
    }
}

#[async_trait(?Send)]
impl TokenSource for StaticToken {
    async fn access_token(&self) -> Result<Secret, CredentialError> {
        self.0.clone().ok_or(CredentialError::Missing)
    }

    /// A static token cannot be renewed: the operator has to replace it.
    async fn rejected(&self, _token: &Secret) -> bool {
        false
    }
}
