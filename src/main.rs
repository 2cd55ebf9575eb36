use std::process::ExitCode;

use attendance_relay::{
    app::Application,
    cli::{self, Command},
    settings::Settings,
    telemetry,
};

/// Exit status for settings that cannot work (as for refused arguments).
const CONFIGURATION_ERROR: u8 = 2;

#[actix_web::main]
async fn main() -> ExitCode {
    let command = cli::parse();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("attendance-relay: invalid configuration: {err}");
            return ExitCode::from(CONFIGURATION_ERROR);
        }
    };
    match command {
        Command::Serve => serve(settings).await,
        Command::Operator(operator) => {
            // Quiet: the answer is the output; problems go to stderr.
            telemetry::init(settings.log_format, "warn");
            cli::run_operator(&operator, &settings).await
        }
        Command::Demo => {
            // Quiet by default: the demo's own report is the output.
            telemetry::init(settings.log_format, "warn");
            demo().await
        }
    }
}

#[cfg(feature = "demo")]
async fn demo() -> ExitCode {
    match attendance_relay::demo::run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("attendance-relay demo failed: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "demo"))]
async fn demo() -> ExitCode {
    eprintln!("attendance-relay: the demo is not built in (build with the `demo` feature)");
    ExitCode::from(CONFIGURATION_ERROR)
}

async fn serve(settings: Settings) -> ExitCode {
    telemetry::init(settings.log_format, "info");
    let app = match Application::build(settings) {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            return if err.is_configuration() {
                ExitCode::from(CONFIGURATION_ERROR)
            } else {
                ExitCode::FAILURE
            };
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
