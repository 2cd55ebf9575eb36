//! Bearer tokens (JWTs), for the admin API and the generic route alike: the
//! token of an `Authorization` header, its check, and a refusal's reason in
//! words that never repeat the token.

use jsonwebtoken::{DecodingKey, Validation, errors::ErrorKind};

/// A key and what a token checked with it must carry.
pub struct JwtCheck {
    key: DecodingKey,
    validation: Validation,
}

impl JwtCheck {
    pub fn new(key: DecodingKey, validation: Validation) -> Self {
        Self { key, validation }
    }

    /// `Err`: what is wrong with `token`.
    pub fn verify(&self, token: &str) -> Result<(), String> {
        jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &self.key, &self.validation)
            .map(drop)
            .map_err(|err| problem(err.kind(), &self.validation))
    }
}

/// The token of an `Authorization: Bearer …` value (the scheme in any case).
pub fn bearer(authorization: &[u8]) -> Option<&str> {
    std::str::from_utf8(authorization)
        .ok()?
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

fn problem(kind: &ErrorKind, validation: &Validation) -> String {
    let algorithm = validation.algorithms[0];
    match kind {
        ErrorKind::ExpiredSignature => "bearer token has expired".into(),
        ErrorKind::ImmatureSignature => "bearer token is not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "bearer token signature does not match".into(),
        ErrorKind::InvalidAudience => "bearer token is for another audience (aud)".into(),
        ErrorKind::InvalidIssuer => "bearer token is from another issuer (iss)".into(),
        ErrorKind::MissingRequiredClaim(claim) => {
            format!("bearer token lacks the required {claim} claim")
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            format!("bearer token has a malformed {claim} claim")
        }
        ErrorKind::InvalidAlgorithm => format!("bearer token is not signed with {algorithm:?}"),
        _ => format!("bearer token is malformed or not signed with {algorithm:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn the_token_follows_a_bearer_scheme_in_any_case() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bEaReR  abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer \xff"), None);
    }
}
