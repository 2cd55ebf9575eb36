//! `attendance-relay demo` works end to end on a fresh machine.

use std::process::Command;

#[test]
fn the_demo_forwards_the_sample_webhooks_and_exits_cleanly() {
    let output = Command::new(env!("CARGO_BIN_EXE_attendance-relay"))
        .arg("demo")
        .env_remove("RUST_LOG")
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let recorded: Vec<&str> = stdout
        .lines()
        .skip_while(|line| !line.starts_with("3. "))
        .skip(1)
        .take_while(|line| !line.is_empty())
        .collect();
    assert_eq!(recorded.len(), 11, "{stdout}");
    for expected in [
        "register ada@example.com",
        "register grace.hopper@example.com",
        "cancel   linus@example.com",
        "attend   grace.hopper@example.com",
        "kept, not forwarded: attend unmappable",
        // Ada's second session, after she dropped out and came back.
        r#"{"joinedAt":"2026-03-10T16:50:00Z","leftAt":"2026-03-10T17:00:00Z"}"#,
    ] {
        assert!(
            recorded.iter().any(|line| line.contains(expected)),
            "{expected} missing:\n{stdout}"
        );
    }
    assert!(stdout.contains("200 {\"accepted\":0,\"duplicates\":1,\"ignored\":0}"));
    assert!(stdout.contains("200 POST /marketing/marketing-events/2026-03/events/upsert"));
    let completed = stdout
        .find("200 POST /marketing/marketing-events/2026-03/events/86012345678/complete")
        .expect("the event was completed");
    assert!(
        stdout.rfind("/attend/create").unwrap() < completed,
        "after the attendance"
    );
    assert!(stdout.contains(
        "\"Product launch webinar\" was completed (2026-03-10T16:00:00Z to 2026-03-10T17:00:00Z, 1 time)"
    ));
    assert!(stdout.contains("relay_records_total{outcome=\"delivered\",state=\"attend\"} 6"));
}
