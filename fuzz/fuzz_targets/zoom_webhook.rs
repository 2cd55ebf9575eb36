//! A Zoom delivery: its signature check and its body's interpretation.
#![no_main]

use attendance_relay::sources::{Inbound, Source, zoom::Zoom};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_767_261_600;

fuzz_target!(|body: &[u8]| {
    let zoom = Zoom::new("fuzz-secret".parse().unwrap(), 300, None);
    let timestamp = NOW.to_string();
    // Any body verifies under its own signature...
    let signature = zoom.sign(NOW, body);
    assert!(
        zoom.verify(Some(&signature), Some(&timestamp), body, NOW)
            .is_ok()
    );
    // ...and the same bytes as forged headers never verify an empty body.
    let text = String::from_utf8_lossy(body);
    let (forged, forged_at) = text.split_once('\n').unwrap_or((&text, &timestamp));
    assert!(
        zoom.verify(Some(forged), Some(forged_at), b"", NOW)
            .is_err()
    );

    if let Ok(Inbound::Reply(reply)) = zoom.interpret(body) {
        assert!(reply["plainToken"].is_string() && reply["encryptedToken"].is_string());
    }
});
