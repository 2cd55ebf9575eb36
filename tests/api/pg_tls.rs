//! libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` in
//! `RELAY_DATABASE_URL`, against a TLS-only and a plaintext-only server.

use std::time::Duration;

use attendance_relay::store::{OpenError, PostgresStore, StoreOptions};

use crate::cluster::{CERT_DATABASE, Cluster};

/// Opens (and migrates) the store at `url` at once: `Ok(())` or the error's text.
fn open(url: &str) -> Result<(), String> {
    let options = StoreOptions {
        connect_wait: Duration::ZERO,
        ..StoreOptions::default()
    };
    match PostgresStore::open(url, &options) {
        Ok(_) => Ok(()),
        Err(err @ OpenError::Setting(_)) => Err(format!("setting: {err}")),
        Err(err) => Err(err.to_string()),
    }
}

#[track_caller]
fn refused(url: &str, saying: &str) {
    match open(url) {
        Ok(()) => panic!("{url} was accepted"),
        Err(err) => assert!(
            err.contains(saying),
            "{url}: {err:?} does not say {saying:?}"
        ),
    }
}

#[test]
#[ignore = "needs PostgreSQL 15, openssl and root or the postgres user: cargo test --test api -- --include-ignored pg_tls"]
fn each_sslmode_means_what_it_means_to_libpq() {
    let tls = Cluster::start(true);
    let plain = Cluster::start(false);
    let certs = tls.certs.as_ref().unwrap();
    let (ca, other_ca) = (certs.path("ca.crt"), certs.path("other-ca.crt"));

    // The TLS server refuses plaintext (pg_hba: hostnossl reject), so every
    // store that opens there spoke TLS.
    refused(&tls.url("relay", "sslmode=disable"), "no encryption");
    for query in [
        "sslmode=prefer".to_owned(),
        "sslmode=require".to_owned(),
        // libpq's default.
        String::new(),
        format!("sslmode=verify-ca&sslrootcert={ca}"),
        format!("sslmode=verify-full&sslrootcert={ca}"),
    ] {
        open(&tls.url("relay", &query)).unwrap_or_else(|err| panic!("{query}: {err}"));
    }
    // verify-ca does not compare the name; verify-full does.
    open(&tls.url_by_address("relay", &format!("sslmode=verify-ca&sslrootcert={ca}"))).unwrap();
    refused(
        &tls.url_by_address("relay", &format!("sslmode=verify-full&sslrootcert={ca}")),
        "is not issued for that host name",
    );
    // A CA that did not sign the server's certificate; `require` with a
    // root certificate verifies the chain, as libpq does.
    for mode in ["verify-full", "verify-ca", "require"] {
        refused(
            &tls.url("relay", &format!("sslmode={mode}&sslrootcert={other_ca}")),
            "is not trusted",
        );
    }
    refused(
        &tls.url("relay", "sslmode=verify-full"),
        "setting: RELAY_DATABASE_URL: sslmode=verify-full needs sslrootcert",
    );
    refused(
        &tls.url("relay", "sslmode=require&sslrootcert=system"),
        "setting: RELAY_DATABASE_URL: weak sslmode=require may not be used with sslrootcert=system",
    );
    refused(
        &tls.url(
            "relay",
            &format!(
                "sslmode=verify-full&sslrootcert={}",
                certs.path("missing.crt")
            ),
        ),
        "setting: RELAY_DATABASE_URL: sslrootcert=",
    );
    refused(
        &tls.url("relay", "sslmode=allow"),
        "setting: RELAY_DATABASE_URL: sslmode=allow is not supported",
    );

    // A server that requires a client certificate takes one its CA signed.
    let verified = tls.verified_url(CERT_DATABASE);
    refused(&verified, "certificate");
    refused(
        &format!("{verified}&sslcert={}", certs.path("client.crt")),
        "sslcert and sslkey go together",
    );
    open(&format!(
        "{verified}&sslcert={}&sslkey={}",
        certs.path("client.crt"),
        certs.path("client.key")
    ))
    .unwrap();

    // Against a server without TLS, `prefer` (and `disable`) speak plaintext;
    // `require` and stricter refuse.
    for query in ["sslmode=disable", "sslmode=prefer", ""] {
        open(&plain.url("relay", query)).unwrap_or_else(|err| panic!("{query}: {err}"));
    }
    refused(
        &plain.url("relay", "sslmode=require"),
        "sslmode=require requires TLS, and localhost:",
    );
    refused(
        &plain.url("relay", &format!("sslmode=verify-full&sslrootcert={ca}")),
        "does not offer it",
    );
}
