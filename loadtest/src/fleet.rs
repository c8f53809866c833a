//! `run --processes N`: N local processes of this binary, each running one
//! segment (`--segment k/N`), merged at the end. One process may hold at
//! most the open-file limit in sockets (20 000 here); N processes hold N
//! times that.
//!
//! The accounts are provisioned once, here, and handed to every segment as
//! an accounts file, so the segments start together instead of each
//! registering its own.

use std::process::Stdio;

use anyhow::{Context, bail};
use navcast::clock::unix_ms;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::accounts::{self, AccountsFile};
use crate::cli::RunArgs;
use crate::schedule::{self, Segment};
use crate::signal::stop_signal;
use crate::summary::Summary;
use crate::{Outcome, report};

/// How long after provisioning the segments start, so that every child
/// has started and planned before the first rider is due.
const START_DELAY_MS: u64 = 3000;

/// Runs `args` as `args.processes` child processes and merges their
/// summaries.
pub(crate) async fn run(args: &RunArgs) -> anyhow::Result<Outcome> {
    let n = args.processes;
    if args.segment.count != 1 {
        bail!("--processes and --segment do not combine");
    }
    let exe = match &args.self_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating this executable")?,
    };
    let profile = args.load_profile()?;
    let users = schedule::user_count(&schedule::plan(&profile.stages));
    let dir =
        std::env::temp_dir().join(format!("navcast-load-{}-{}", std::process::id(), unix_ms()));
    std::fs::create_dir_all(&dir)?;

    // One provisioning pass for all children, so they can start together.
    let accounts_path = match &args.accounts {
        Some(p) => p.clone(),
        None => {
            let mut entries = accounts::plan(
                &args.account.generated(),
                users,
                profile.rider.guardian_share,
            );
            if !args.account.no_provision {
                entries = accounts::provision(
                    args.target.transport().await?,
                    entries,
                    args.account.provision_concurrency,
                    false,
                    args.quiet,
                )
                .await?;
            }
            let path = dir.join("accounts.json");
            AccountsFile { accounts: entries }.write(&path)?;
            path
        }
    };

    let start_at = unix_ms() as u64 + START_DELAY_MS;
    let mut children = Vec::new();
    let mut outputs = Vec::new();
    for i in 0..n {
        let seg = Segment { index: i, count: n };
        let json = dir.join(format!("segment-{}.json", i + 1));
        let child = tokio::process::Command::new(&exe)
            .args(args.child_args(seg, &json, &accounts_path, start_at))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        children.push(child);
        outputs.push(json);
    }
    // A stop signal to this process becomes SIGTERM to every segment, which
    // stops its riders and writes its summary; then they are merged as usual.
    let pids: Vec<u32> = children.iter().filter_map(|c| c.id()).collect();
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut forwarded = false;
    let mut statuses = Vec::new();
    for c in &mut children {
        loop {
            tokio::select! {
                st = c.wait() => {
                    statuses.push(st?);
                    break;
                }
                _ = &mut stop, if !forwarded => {
                    forwarded = true;
                    eprintln!("navcast-load: interrupted; stopping the segments");
                    for pid in &pids {
                        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
                    }
                }
            }
        }
    }
    for (i, st) in statuses.iter().enumerate() {
        // 0 = passed, 1 = a criterion failed; anything else is an error.
        if !matches!(st.code(), Some(0 | 1)) {
            bail!(
                "segment {}/{n} failed ({st}); see its messages above",
                i + 1
            );
        }
    }
    let merged = Summary::read_merged(&outputs)?;
    let _ = std::fs::remove_dir_all(&dir);
    report::finish(merged, &args.out, args.quiet)
}
