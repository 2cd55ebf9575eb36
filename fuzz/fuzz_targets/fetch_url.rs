//! The check that keeps the gateway from fetching anything but Eventbrite's
//! API (server-side request forgery): a URL it lets through is on the API's
//! scheme, host and port, under its path, without credentials, and is the
//! URL that would be requested.
#![no_main]

use attendance_relay::sources::eventbrite::{api_base, fuzzing::fetchable};
use libfuzzer_sys::fuzz_target;
use url::Url;

fuzz_target!(|api_url: &[u8]| {
    let Ok(api_url) = std::str::from_utf8(api_url) else {
        return;
    };
    for base in [
        "https://www.eventbriteapi.com/v3/",
        "http://127.0.0.1:8080/eb/v3",
    ] {
        let base = api_base(base).unwrap();
        let Ok(url) = fetchable(api_url, &base) else {
            continue;
        };
        assert_eq!(url.scheme(), base.scheme());
        assert_eq!(url.host_str(), base.host_str());
        assert_eq!(url.port_or_known_default(), base.port_or_known_default());
        assert!(url.path().starts_with(base.path()));
        assert!(url.username().is_empty() && url.password().is_none());
        assert_eq!(Url::parse(url.as_str()).as_ref(), Ok(&url));
    }
});
