//! The generic route's Standard Webhooks headers (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature`, one a line, then the body):
//! nothing but a signature made with the configured secret passes.
#![no_main]

use std::collections::HashMap;

use actix_web::{http::header::HeaderValue, test::TestRequest};
use attendance_relay::{
    settings::Settings,
    sources::{Source, generic::Generic},
};
use libfuzzer_sys::fuzz_target;

const HEADERS: [&str; 3] = ["webhook-id", "webhook-timestamp", "webhook-signature"];

fuzz_target!(|input: &[u8]| {
    let mut parts = input.splitn(4, |b| *b == b'\n');
    let mut request = TestRequest::default();
    for name in HEADERS {
        if let Some(Ok(value)) = parts.next().map(HeaderValue::from_bytes) {
            request = request.insert_header((name, value));
        }
    }
    let body = parts.next().unwrap_or_default();
    let env = HashMap::from([(
        "GENERIC_WEBHOOK_SECRET".to_owned(),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
    )]);
    let generic = Generic::from_settings(&Settings::init_from_hashmap(&env).unwrap())
        .unwrap()
        .unwrap();
    assert!(
        generic
            .authenticate(&request.to_http_request(), body)
            .is_err()
    );
});
