//! navcast-load: the companion WebSocket load client of navcast (issue 5).
//!
//! It follows `shared/LOADTEST.md`: riders that log in, connect, start
//! navigations and send timed location updates, guardians that watch them
//! and check every fan-out event, profiles as files, exact HDR latencies
//! measured from scheduled send times, Locust-compatible CSVs, a
//! self-contained HTML report and JSON summaries that merge exactly across
//! segments, processes and machines.
//!
//! `main.rs` only parses the command line and calls [`run`], so tests run
//! the real CLI in-process (`Cli::parse_from` + `run`).
//!
//! Code map: [`cli`] (flags) → [`runner`] (plan, spawn, report each
//! second) → [`rider`] (one rider and its guardian) using [`net`]
//! (HTTP/WebSocket/TLS, source addresses), [`accounts`] and [`motion`];
//! [`recorder`] (live samples) → [`summary`] (the additive result) →
//! [`criteria`] (pass/fail) → [`report`] (CSV, text) and [`html`].
//! [`profile`] and [`schedule`] turn a profile file into start/stop times;
//! [`usage`] measures what the client itself costs.

pub mod accounts;
pub mod cli;
pub mod criteria;
pub mod hist;
pub mod html;
pub mod motion;
pub mod net;
pub mod procs;
pub mod profile;
pub mod recorder;
pub mod report;
pub mod rider;
pub mod rng;
pub mod runner;
pub mod schedule;
pub mod summary;
pub mod usage;

use std::process::ExitCode;
use std::sync::Arc;

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
        Command::Run(args) => runner::run(&args).await.map(Some),
        Command::Merge(args) => merge(&args).map(Some),
        Command::Provision(args) => provision(&args).await.map(|_| None),
    }
}

fn merge(args: &cli::MergeArgs) -> anyhow::Result<Outcome> {
    let mut it = args.inputs.iter();
    let first = it.next().expect("clap requires an input");
    let mut s = Summary::read(first)?;
    for p in it {
        s.merge(&Summary::read(p)?)?;
    }
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
    let tls = net::TlsOptions {
        ca_file: args.tls.ca_file.clone(),
        insecure: args.tls.insecure,
    };
    let transport =
        Arc::new(net::Transport::new(&args.host, args.source_ips.as_deref(), &tls).await?);
    let gen_ = accounts::Accounts::Generated {
        prefix: args.account.prefix.clone(),
        password: args.account.password.clone(),
    };
    let mut list = Vec::new();
    let mut guardians = Vec::new();
    for k in 0..users {
        list.extend(gen_.rider(k));
        if schedule::in_share(k, share, 0) {
            guardians.push(k);
            list.extend(gen_.guardian(k));
        }
    }
    let done = accounts::provision(
        transport,
        list,
        args.account.provision_concurrency,
        !args.account.no_provision,
        args.quiet,
    )
    .await?;
    let mut it = done.into_iter();
    let mut entries = Vec::new();
    for k in 0..users {
        let rider = it.next().expect("one per rider");
        let guardian = guardians
            .contains(&k)
            .then(|| it.next().expect("one per guardian"));
        entries.push(accounts::AccountEntry {
            index: k,
            rider,
            guardian,
        });
    }
    accounts::AccountsFile { accounts: entries }.write(&args.out)?;
    if !args.quiet {
        eprintln!(
            "navcast-load: wrote {} riders and {} guardians to {}",
            users,
            guardians.len(),
            args.out.display()
        );
    }
    Ok(())
}
