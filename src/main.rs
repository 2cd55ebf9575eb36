use std::process::ExitCode;

use attendance_relay::{app::Application, settings::Settings, telemetry};

#[actix_web::main]
async fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("attendance-relay: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log_format);

    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {}
        Some(other) => {
            eprintln!("attendance-relay: unknown command {other:?} (expected `serve`)");
            return ExitCode::from(2);
        }
    }

    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::FAILURE
        }
    }
}
