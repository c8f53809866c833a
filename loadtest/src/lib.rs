//! navcast-load: the companion WebSocket load client of navcast (issue 5).
//!
//! It implements the load test specified in `loadtest/README.md`: riders
//! that log in, connect, start navigations and send timed location updates,
//! guardians that watch them and check every fan-out event, profiles as
//! files, exact HDR latencies measured from scheduled send times,
//! Locust-compatible CSVs, a self-contained HTML report and JSON summaries
//! that merge exactly across segments, processes and machines.
//!
//! `main.rs` only parses the command line and calls [`run`], so tests run
//! the real CLI in-process (`Cli::parse_from` + `run`).
//!
//! Code map: `cli` (flags, and the transport, accounts and profile they
//! make) → [`run`] routes each command: `runner` (one process: plan, spawn,
//! report each second) or `fleet` (`--processes N`: N child processes,
//! merged). `runner` starts `rider`s (one rider and its guardian), which use
//! `net` (HTTP/WebSocket/TLS, source addresses), [`accounts`] and `motion`;
//! `recorder` (live samples) → [`summary`] (the additive result) →
//! [`criteria`] (pass/fail) → [`report`] (CSV, text, HTML). `profile` and
//! `schedule` turn a profile file into start/stop times; `usage` measures
//! what the client itself costs; `signal` turns SIGINT/SIGTERM into an
//! orderly stop.
//!
//! Items are `pub(crate)` unless the binaries or the tests use them, so
//! rustc reports what nothing uses.

pub mod accounts;
mod cli;
pub mod criteria;
mod exporter;
mod fleet;
pub mod hist;
mod motion;
mod net;
mod profile;
mod recorder;
pub mod report;
mod rider;
mod rng;
mod runner;
mod schedule;
mod signal;
pub mod summary;
mod usage;

use std::process::ExitCode;

pub use cli::Cli;
use cli::Command;
pub use summary::Summary;

/// What a command concluded.
#[derive(Debug)]
pub struct Outcome {
    /// Every criterion passed (or was skipped).
    pub passed: bool,
    /// Names of the failed criteria.
    pub failed: Vec<String>,
    pub evaluation: criteria::Evaluation,
    pub summary: Summary,
}

impl Outcome {
    /// 0 when every criterion passed, 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        if self.passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

/// Runs a command. `Ok(None)` for commands without criteria (`provision`).
pub async fn run(cli: Cli) -> anyhow::Result<Option<Outcome>> {
    match cli.command {
        Command::Run(args) => {
            runner::warn_port_pressure(&args)?;
            let outcome = if args.processes > 1 {
                fleet::run(&args).await?
            } else {
                runner::run(&args).await?
            };
            Ok(Some(outcome))
        }
        Command::Merge(args) => merge(&args).map(Some),
        Command::Provision(args) => provision(&args).await.map(|_| None),
    }
}

fn merge(args: &cli::MergeArgs) -> anyhow::Result<Outcome> {
    let s = Summary::read_merged(&args.inputs)?;
    report::finish(s, &args.out, args.quiet)
}

async fn provision(args: &cli::ProvisionArgs) -> anyhow::Result<()> {
    let profile = args
        .profile
        .as_deref()
        .map(profile::Profile::load)
        .transpose()?;
    let users = match (args.users, &profile) {
        (Some(u), _) => u,
        (None, Some(p)) => schedule::user_count(&schedule::plan(&p.stages)),
        (None, None) => anyhow::bail!("provision needs --users or --profile"),
    };
    let share = args
        .guardian_share
        .or(profile.as_ref().map(|p| p.rider.guardian_share))
        .unwrap_or(0.1);
    let planned = accounts::plan(&args.account.generated(), users, share);
    let entries = accounts::provision(
        args.target.transport().await?,
        planned,
        args.account.provision_concurrency,
        !args.account.no_provision,
        args.quiet,
    )
    .await?;
    let guardians = entries.iter().filter(|e| e.guardian.is_some()).count();
    accounts::AccountsFile { accounts: entries }.write(&args.out)?;
    if !args.quiet {
        eprintln!(
            "navcast-load: wrote {} riders and {} guardians to {}",
            users,
            guardians,
            args.out.display()
        );
    }
    Ok(())
}
