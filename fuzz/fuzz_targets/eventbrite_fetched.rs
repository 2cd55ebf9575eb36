//! What Eventbrite answers for an order or an attendee, mapped for each
//! action a delivery can carry.
#![no_main]

use attendance_relay::{record::normalize_email, sources::eventbrite::fuzzing::records_of};
use libfuzzer_sys::fuzz_target;

const ACTIONS: [&str; 5] = [
    "order.placed",
    "order.refunded",
    "order.updated",
    "barcode.checked_in",
    "attendee.updated",
];

fuzz_target!(|answer: &[u8]| {
    let Ok(object) = serde_json::from_slice::<serde_json::Value>(answer) else {
        return;
    };
    for action in ACTIONS {
        let Ok(records) = records_of(action, &object, "account").expect("an attendance action")
        else {
            continue;
        };
        for record in records.into_iter().flatten() {
            assert_eq!(record.external_account_id, "account");
            // Stored emails are the dedupe key: normalizing again changes nothing.
            assert_eq!(normalize_email(&record.email), record.email);
        }
    }
});
