//! How long to wait before trying again: shared by everything that retries
//! (forwarding to HubSpot, fetching from a platform's API).

use std::time::Duration;

pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(900);

/// Exponential in the attempts made so far (the first failure waits about
/// [`RETRY_FIRST`]), with jitter so what failed together spreads out.
pub fn backoff(attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    let full = RETRY_FIRST.saturating_mul(1 << exponent).min(RETRY_MAX);
    full.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempts in 1..30 {
            let wait = backoff(attempts);
            let full = RETRY_FIRST
                .saturating_mul(1 << (attempts - 1).min(16))
                .min(RETRY_MAX);
            assert!(
                wait >= full / 2 && wait <= full,
                "attempt {attempts}: {wait:?}"
            );
        }
    }
}
