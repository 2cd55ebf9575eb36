//! The HTTP client for every call the gateway makes out (HubSpot's API, its
//! token endpoint, platform APIs): awc on rustls, which needs a process-wide
//! crypto provider before the first client is built.

use std::time::Duration;

/// A client with `timeout` for every request; `follow_redirects: false` for
/// URLs that were checked before the call (a redirect could lead anywhere).
pub fn client(timeout: Duration, follow_redirects: bool) -> awc::Client {
    // A second install (another client in the same process) is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = awc::Client::builder().timeout(timeout);
    if follow_redirects {
        builder.finish()
    } else {
        builder.disable_redirects().finish()
    }
}
