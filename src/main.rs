//! The `navcast` binary: parse flags, set up logging, bind, run until
//! SIGTERM or ctrl-c, then drain.

use clap::Parser;
use navcast::cli::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.load_config()?;
    if cli.print_config {
        let mut shown = config.clone();
        if shown.jwt.secret.is_some() {
            shown.jwt.secret = Some("<redacted>".into());
        }
        println!("{}", toml::to_string_pretty(&shown)?);
        return Ok(());
    }
    navcast::telemetry::init(config.log_format, &config.log_level);
    // Every connection is a file; take all the operator allows.
    navcast::files::raise_soft_limit();
    let listener = navcast::bind(config.listen, config.http.listen_backlog)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    navcast::run(listener, config, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!(event = "shutdown_signal", "shutdown requested");
}
