//! `navcast-load`: parse the command line, run, map the outcome to an
//! exit code (0 every criterion passed, 1 a criterion failed, 2 an error).

use std::process::ExitCode;

use clap::Parser;
use navcast_load::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("navcast-load: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(navcast_load::run(cli)) {
        Ok(Some(outcome)) => outcome.exit_code(),
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("navcast-load: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
