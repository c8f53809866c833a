//! `run --processes N`: N local processes of this binary, each running one
//! segment (`--segment k/N`), merged at the end. One process may hold at
//! most the open-file limit in sockets (20 000 here); N processes hold N
//! times that.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::accounts::{AccountEntry, Accounts, AccountsFile};
use crate::cli::RunArgs;
use crate::schedule::{Segment, in_share};
use crate::summary::Summary;
use crate::{Outcome, accounts, report, runner, schedule};

pub async fn run_processes(args: &RunArgs) -> anyhow::Result<Outcome> {
    let n = args.processes;
    if args.segment.count != 1 {
        bail!("--processes and --segment do not combine");
    }
    let exe = match &args.self_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating this executable")?,
    };
    let profile = runner::load_profile(args)?;
    let users = schedule::user_count(&schedule::plan(&profile.stages));
    let dir = std::env::temp_dir().join(format!(
        "navcast-load-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir)?;

    // One provisioning pass for all children, so they can start together.
    let accounts_path = match &args.accounts {
        Some(p) => p.clone(),
        None => {
            let tls = crate::net::TlsOptions {
                ca_file: args.tls.ca_file.clone(),
                insecure: args.tls.insecure,
            };
            let transport = Arc::new(
                crate::net::Transport::new(&args.host, args.source_ips.as_deref(), &tls).await?,
            );
            let gen_ = Accounts::Generated {
                prefix: args.account.prefix.clone(),
                password: args.account.password.clone(),
            };
            let mut entries = Vec::new();
            let mut list = Vec::new();
            for k in 0..users {
                let guardian = in_share(k, profile.rider.guardian_share, 0)
                    .then(|| gen_.guardian(k))
                    .flatten();
                list.extend(gen_.rider(k));
                list.extend(guardian.clone());
                entries.push(AccountEntry {
                    index: k,
                    rider: gen_.rider(k).expect("generated"),
                    guardian,
                });
            }
            if !args.account.no_provision {
                accounts::provision(
                    transport,
                    list,
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

    let start_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64
        + 3000;
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
    let stop = runner::stop_signal();
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
    let mut merged: Option<Summary> = None;
    for p in &outputs {
        let s = Summary::read(p)?;
        match &mut merged {
            None => merged = Some(s),
            Some(m) => m.merge(&s)?,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {}).await;
    let _ = std::fs::remove_dir_all(&dir);
    report::finish(merged.context("no segment")?, &args.out, args.quiet)
}
