use std::process::ExitCode;

use attendance_relay::{app::Application, demo, settings::Settings, telemetry};

#[actix_web::main]
async fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("attendance-relay: invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => telemetry::init(&settings.log_format, "info"),
        Some("demo") => {
            // Quiet by default: the demo's own report is the output.
            telemetry::init(&settings.log_format, "warn");
            return match demo::run().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("attendance-relay demo failed: {err}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(other) => {
            eprintln!("attendance-relay: unknown command {other:?} (expected `serve` or `demo`)");
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
