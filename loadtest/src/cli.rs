//! The command line: every flag of `run`, `provision` and `merge`, and
//! what a flag set builds (its transport, its accounts, its profile, the
//! arguments of one `--processes` child), so no command assembles those
//! from the fields itself.

use std::path::PathBuf;

use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::accounts::Accounts;
use crate::net::Transport;
use crate::profile::Profile;
use crate::schedule::Segment;

/// navcast-load: the companion WebSocket load client of navcast.
#[derive(Debug, Clone, Parser)]
#[command(name = "navcast-load", version, about, long_about = None)]
pub struct Cli {
    /// Runtime worker threads. 1 (default) runs every rider on one thread:
    /// no cross-thread wake-ups, the cheapest per request; use more threads
    /// (or --processes) when one core is not enough.
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    #[command(subcommand)]
    pub(crate) command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Command {
    /// Run a load profile against one or more nodes.
    Run(RunArgs),
    /// Create (register-or-login) accounts for riders and guardians and
    /// write an accounts file for `run --accounts`.
    Provision(ProvisionArgs),
    /// Merge JSON summaries (segments of one test) into one report.
    Merge(MergeArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub(crate) struct OutputArgs {
    /// Write PREFIX_stats.csv, PREFIX_stats_history.csv,
    /// PREFIX_failures.csv and PREFIX_exceptions.csv (Locust's format).
    #[arg(long, value_name = "PREFIX")]
    pub(crate) csv: Option<String>,
    /// Write a self-contained HTML report.
    #[arg(long, value_name = "FILE")]
    pub(crate) html: Option<PathBuf>,
    /// Write the JSON summary (with HDR histograms; input of `merge`).
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
}

/// Where to connect and how: the flags `run` and `provision` share.
#[derive(Debug, Clone, Args)]
pub(crate) struct TargetArgs {
    /// Base URL(s) of the nodes or the cluster, ws://host:port or
    /// wss://host; repeat or comma separate to spread riders (and accounts)
    /// over several nodes round-robin.
    #[arg(long, required = true, value_delimiter = ',')]
    pub(crate) host: Vec<String>,
    /// Bind client sockets to these local addresses, round-robin
    /// (e.g. 127.0.0.2-127.0.0.50).
    #[arg(long)]
    pub(crate) source_ips: Option<String>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
}

impl TargetArgs {
    /// The connections of one command: every HTTP and WebSocket request
    /// goes through this, so the TLS and source-address flags apply to all.
    pub(crate) async fn transport(&self) -> anyhow::Result<Arc<Transport>> {
        Ok(Arc::new(
            Transport::new(&self.host, self.source_ips.as_deref(), &self.tls).await?,
        ))
    }
}

/// TLS settings from `--ca-file` / `--insecure`.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct TlsArgs {
    /// Extra PEM CA certificate(s) to trust for wss:// and https://.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Accept any server certificate (testing only).
    #[arg(long)]
    pub(crate) insecure: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct AccountArgs {
    /// Account names are PREFIX-r{k}@navcast-load.test (riders) and
    /// PREFIX-g{k}@… (guardians).
    #[arg(long = "account-prefix", default_value = "navcast-load")]
    pub(crate) prefix: String,
    /// Password of the generated accounts.
    #[arg(long = "account-password", default_value = "navcast-load-password")]
    pub(crate) password: String,
    /// Concurrent registrations/logins while provisioning (argon2 is
    /// expensive on the server).
    #[arg(long, default_value_t = 4)]
    pub(crate) provision_concurrency: usize,
    /// Assume the generated accounts exist (skip registration).
    #[arg(long)]
    pub(crate) no_provision: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Profile file (TOML), e.g. config/loadtest/step-1000.toml.
    #[arg(long)]
    pub(crate) profile: PathBuf,
    /// Multiply every duration by this (0.1 runs step-1000 in 150 s);
    /// spawn rates and travel speed scale inversely.
    #[arg(long)]
    pub(crate) time_scale: Option<f64>,
    /// Scale the profile so its peak is N riders.
    #[arg(long)]
    pub(crate) users: Option<u64>,
    /// Override a threshold of the profile, e.g. `connect_p95_ms=200`
    /// (`none` disables an optional one); repeatable.
    #[arg(long = "threshold", value_name = "KEY=VALUE")]
    pub(crate) thresholds: Vec<String>,
    #[command(flatten)]
    pub(crate) out: OutputArgs,
    /// Accounts file from `provision`; without it the run registers the
    /// accounts it needs itself.
    #[arg(long)]
    pub(crate) accounts: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) account: AccountArgs,
    /// Run segment i of n (1-based): users k with k % n == i-1.
    #[arg(long, default_value = "1/1")]
    pub(crate) segment: Segment,
    /// Run as N local processes (segments 1/N … N/N) and merge them.
    #[arg(long, default_value_t = 1)]
    pub(crate) processes: u32,
    /// Seed of every random choice (same seed = same riders, stations,
    /// intervals and drift, whatever the segmentation).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// A label for the network the run went over (e.g. `4g: 40 ms ± 15 ms,
    /// 0.2 % loss`), written in every report; `scripts/netem.sh` sets it.
    #[arg(long)]
    pub(crate) network: Option<String>,
    /// Start the test at this Unix time in ms (segments started apart).
    #[arg(long)]
    pub(crate) start_at: Option<u64>,
    /// No progress lines; the closing report only on failure.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Poll each host's /stats this often (s), for node memory and
    /// sessions in the report; 0 disables.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) server_stats_every: f64,
    /// Read /stats from these base URLs (http://node:port, comma separated)
    /// instead of the hosts': behind nginx, /stats is not exposed and each
    /// node is polled directly.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    pub(crate) stats_url: Vec<String>,
    /// Largest grid (ms) timer-driven requests are aligned to, so riders
    /// share timer wake-ups; the grid adapts to hold about 4 requests per
    /// point and vanishes at high rates. 0 schedules each tick exactly.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) tick_grid_ms: f64,
    /// Serve the run's live measures for Prometheus on this address
    /// (`/metrics`: requests, failures, latency histograms, riders,
    /// fan-out, client CPU). With `--processes N`, segment i listens on
    /// the port + i - 1.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// The executable `--processes` starts (default: this one).
    #[arg(long, hide = true)]
    pub(crate) self_exe: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ProvisionArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Riders to provision (default: the profile's peak).
    #[arg(long)]
    pub(crate) users: Option<u64>,
    /// Take the guardian share (and the user count) from this profile.
    #[arg(long)]
    pub(crate) profile: Option<PathBuf>,
    /// Share of riders that get a guardian account (default 0.1).
    #[arg(long)]
    pub(crate) guardian_share: Option<f64>,
    /// Where to write the accounts file.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) account: AccountArgs,
    /// No progress lines.
    #[arg(long)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct MergeArgs {
    /// JSON summaries written by `run --json`.
    #[arg(required = true)]
    pub(crate) inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) out: OutputArgs,
    /// No closing report on stdout unless a criterion failed.
    #[arg(long)]
    pub(crate) quiet: bool,
}

impl AccountArgs {
    /// The accounts named after `--account-prefix`.
    pub(crate) fn generated(&self) -> Accounts {
        Accounts::Generated {
            prefix: self.prefix.clone(),
            password: self.password.clone(),
        }
    }
}

impl RunArgs {
    /// The profile with the command line's overrides applied.
    pub(crate) fn load_profile(&self) -> anyhow::Result<Profile> {
        let mut p = Profile::load(&self.profile)?;
        if let Some(u) = self.users {
            p = p.with_users(u)?;
        }
        if let Some(s) = self.time_scale {
            p = p.with_time_scale(s)?;
        }
        p.with_thresholds(&self.thresholds)
    }

    /// The arguments of one child of `--processes`.
    pub(crate) fn child_args(
        &self,
        segment: Segment,
        json: &std::path::Path,
        accounts: &std::path::Path,
        start_at: u64,
    ) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["run".into()];
        let mut push = |k: &str, v: std::ffi::OsString| {
            a.push(k.into());
            a.push(v);
        };
        let target = &self.target;
        push("--host", target.host.join(",").into());
        push("--profile", self.profile.clone().into());
        if let Some(t) = self.time_scale {
            push("--time-scale", t.to_string().into());
        }
        if let Some(u) = self.users {
            push("--users", u.to_string().into());
        }
        for t in &self.thresholds {
            push("--threshold", t.into());
        }
        push("--json", json.into());
        push("--accounts", accounts.into());
        push("--segment", segment.to_string().into());
        if let Some(s) = &target.source_ips {
            push("--source-ips", s.into());
        }
        if let Some(c) = &target.tls.ca_file {
            push("--ca-file", c.into());
        }
        push("--seed", self.seed.to_string().into());
        if let Some(n) = &self.network {
            push("--network", n.into());
        }
        push("--tick-grid-ms", self.tick_grid_ms.to_string().into());
        if let Some(mut addr) = self.metrics_listen {
            addr.set_port(addr.port() + segment.index as u16);
            push("--metrics-listen", addr.to_string().into());
        }
        push("--start-at", start_at.to_string().into());
        push(
            "--server-stats-every",
            if segment.index == 0 {
                self.server_stats_every.to_string().into()
            } else {
                "0".into()
            },
        );
        if !self.stats_url.is_empty() {
            push("--stats-url", self.stats_url.join(",").into());
        }
        if target.tls.insecure {
            a.push("--insecure".into());
        }
        if self.quiet {
            a.push("--quiet".into());
        }
        a
    }
}
