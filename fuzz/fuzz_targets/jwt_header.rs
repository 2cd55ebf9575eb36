//! The generic route's `Authorization` header: nothing but a token signed
//! with the configured key passes.
#![no_main]

use std::collections::HashMap;

use actix_web::{http::header::HeaderValue, test::TestRequest};
use attendance_relay::{
    settings::Settings,
    sources::{Source, generic::Generic},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|authorization: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(authorization) else {
        return;
    };
    let env = HashMap::from([("GENERIC_JWT_SECRET".to_owned(), "fuzz".to_owned())]);
    let generic = Generic::from_settings(&Settings::init_from_hashmap(&env).unwrap())
        .unwrap()
        .unwrap();
    let request = TestRequest::default()
        .insert_header(("authorization", value))
        .to_http_request();
    assert!(generic.authenticate(&request, b"{}").is_err());
});
