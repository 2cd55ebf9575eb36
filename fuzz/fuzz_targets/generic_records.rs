//! A generic delivery's body: one record or a batch in the gateway's schema.
#![no_main]

use std::collections::HashMap;

use attendance_relay::{
    settings::Settings,
    sources::generic::{Generic, MAX_RECORDS},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let env = HashMap::from([("GENERIC_JWT_SECRET".to_owned(), "fuzz".to_owned())]);
    let settings = Settings::init_from_hashmap(&env).unwrap();
    let generic = Generic::from_settings(&settings).unwrap().unwrap();
    if let Ok(records) = generic.map(body) {
        assert!((1..=MAX_RECORDS).contains(&records.len()));
        for record in records {
            assert!(record.email.contains('@') || record.email.is_empty() && record.vid.is_some());
            // Ids the refusals call missing when empty.
            assert!(!record.external_account_id.is_empty() && !record.external_event_id.is_empty());
            assert!(record.sender_id.is_some_and(|id| !id.is_empty()));
        }
    }
});
