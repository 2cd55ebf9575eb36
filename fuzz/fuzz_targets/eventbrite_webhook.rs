//! An Eventbrite delivery's body: accepted for fetching only when its
//! api_url is one the gateway may request.
#![no_main]

use attendance_relay::sources::{
    Inbound, Source,
    eventbrite::{self, Eventbrite, fuzzing::fetchable},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let base = eventbrite::api_base("https://www.eventbriteapi.com/v3/").unwrap();
    let source = Eventbrite::new("token".parse().unwrap(), base.clone(), None);
    if let Ok(Inbound::Deferred) = source.interpret(body) {
        let webhook: serde_json::Value = serde_json::from_slice(body).unwrap();
        let api_url = webhook["api_url"].as_str().unwrap();
        assert!(fetchable(api_url, &base).is_ok());
    }
});
