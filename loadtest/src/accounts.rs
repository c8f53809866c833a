//! Test accounts: who rider `k` and its guardian log in as, creating them
//! when needed (register-or-login, idempotent), and the accounts file.
//!
//! Names follow from a prefix and the user index (`{prefix}-r{k}@…`,
//! `{prefix}-g{k}@…`), so provisioning twice finds the same accounts and a
//! segment can work out its own accounts without a shared list.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::net::Transport;
use crate::schedule::in_share;

/// How one account logs in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Creds {
    pub email: String,
    pub password: String,
    /// Known after a login; a run does not need it up front.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// One user index: the rider and, for the guardian share, its guardian.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountEntry {
    pub index: u64,
    pub rider: Creds,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardian: Option<Creds>,
}

/// The accounts file written by `provision` and read by `run --accounts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountsFile {
    pub accounts: Vec<AccountEntry>,
}

impl AccountsFile {
    pub fn read(path: &Path) -> anyhow::Result<AccountsFile> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut f: AccountsFile = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not an accounts file", path.display()))?;
        f.accounts.sort_by_key(|a| a.index);
        for (i, a) in f.accounts.iter().enumerate() {
            if a.index != i as u64 {
                bail!("{}: user indices must be 0, 1, 2, …", path.display());
            }
        }
        Ok(f)
    }

    pub(crate) fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// Where credentials come from.
#[derive(Debug, Clone)]
pub(crate) enum Accounts {
    /// Derived from a prefix and the index.
    Generated {
        prefix: String,
        password: String,
    },
    File(Arc<AccountsFile>),
}

impl Accounts {
    /// How rider `k` logs in.
    pub(crate) fn rider(&self, k: u64) -> Option<Creds> {
        match self {
            Accounts::Generated { prefix, password } => Some(generated(prefix, password, 'r', k)),
            Accounts::File(f) => f.accounts.get(k as usize).map(|a| a.rider.clone()),
        }
    }

    /// How the guardian of rider `k` logs in, if it has one.
    pub(crate) fn guardian(&self, k: u64) -> Option<Creds> {
        match self {
            Accounts::Generated { prefix, password } => Some(generated(prefix, password, 'g', k)),
            Accounts::File(f) => f.accounts.get(k as usize).and_then(|a| a.guardian.clone()),
        }
    }
}

/// The generated account of user `k` in `role` (`r` rider, `g` guardian).
fn generated(prefix: &str, password: &str, role: char, k: u64) -> Creds {
    Creds {
        email: format!("{prefix}-{role}{k}@navcast-load.test"),
        password: password.to_string(),
        user_id: None,
    }
}

/// Tokens of a logged-in account.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) user_id: String,
    pub(crate) access: String,
    pub(crate) refresh: String,
}

/// Why a login failed, as a short cause.
pub(crate) type Cause = String;

fn http_cause(e: &reqwest::Error) -> Cause {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        // Tell a refused connection from a failed TLS handshake (the TLS
        // error arrives boxed, so it is recognised by its text).
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::ConnectionRefused
            {
                return "connection refused".into();
            }
            let text = s.to_string();
            if text.contains("certificate") || text.contains("TLS") || text.contains("tls") {
                return format!("TLS: {text}").chars().take(100).collect();
            }
            source = s.source();
        }
        "connect error".into()
    } else if let Some(s) = e.status() {
        format!("HTTP {}", s.as_u16())
    } else {
        "connection error".into()
    }
}

/// `POST /api/v1/auth/login` with the OAuth2 password form. Returns the
/// session and the size of the answer.
pub(crate) async fn login(
    t: &Transport,
    host: usize,
    creds: &Creds,
    timeout: Duration,
) -> Result<(Session, usize), Cause> {
    let url = format!("{}/api/v1/auth/login", t.host(host).http_base);
    let request = t.http(host).post(url).form(&[
        ("username", creds.email.as_str()),
        ("password", creds.password.as_str()),
    ]);
    token_answer(request, timeout).await
}

/// Sends a login or refresh request and reads the token pair it answers.
async fn token_answer(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<(Session, usize), Cause> {
    let resp = request
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| http_cause(&e))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| http_cause(&e))?;
    if !status.is_success() {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    tokens(&body).map(|s| (s, body.len()))
}

fn tokens(body: &[u8]) -> Result<Session, Cause> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| Cause::from("unparseable login answer"))?;
    let get = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    match (get("user_id"), get("access_token"), get("refresh_token")) {
        (Some(user_id), Some(access), Some(refresh)) => Ok(Session {
            user_id,
            access,
            refresh,
        }),
        _ => Err("login answer without tokens".into()),
    }
}

/// Whether a JWT's `exp` has passed (or is within 5 s). Read without
/// checking the signature: the client only decides whether to refresh.
pub(crate) fn token_expired(token: &str) -> bool {
    use base64::Engine;
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["exp"].as_i64());
    exp.is_some_and(|exp| exp <= navcast::clock::unix_s() + 5)
}

/// `POST /api/v1/auth/refresh`: a new token pair.
pub(crate) async fn refresh(
    t: &Transport,
    host: usize,
    refresh_token: &str,
    timeout: Duration,
) -> Result<(Session, usize), Cause> {
    let url = format!("{}/api/v1/auth/refresh", t.host(host).http_base);
    let request = t
        .http(host)
        .post(url)
        .json(&serde_json::json!({ "refresh_token": refresh_token }));
    token_answer(request, timeout).await
}

/// Registers an account unless it exists (201 or 409 are both fine).
async fn register(t: &Transport, host: usize, creds: &Creds) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/auth/register", t.host(host).http_base);
    let mut last = String::new();
    for attempt in 0..4 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
        }
        let resp = t
            .http(host)
            .post(&url)
            .json(&serde_json::json!({ "email": creds.email, "password": creds.password }))
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().as_u16() == 201 || r.status().as_u16() == 409 => return Ok(()),
            Ok(r) if r.status().is_server_error() => last = format!("HTTP {}", r.status()),
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                bail!("registering {}: HTTP {status}: {body}", creds.email);
            }
            Err(e) => last = http_cause(&e),
        }
    }
    bail!("registering {}: {last}", creds.email)
}

/// The accounts of users `0..users`: a rider each, and a guardian for the
/// users in the guardian share (the same users `run` gives a guardian).
/// Users without a rider account (a short accounts file) are left out.
pub(crate) fn plan(accounts: &Accounts, users: u64, guardian_share: f64) -> Vec<AccountEntry> {
    (0..users)
        .filter_map(|k| {
            Some(AccountEntry {
                index: k,
                rider: accounts.rider(k)?,
                guardian: in_share(k, guardian_share, 0)
                    .then(|| accounts.guardian(k))
                    .flatten(),
            })
        })
        .collect()
}

/// Makes sure every account of `entries` exists; with `login`, also logs
/// each in to learn its user id (and to prove the password). Bounded
/// concurrency: argon2 makes every registration and login cost the server
/// tens of milliseconds of CPU. Returns the entries with what was learnt.
pub(crate) async fn provision(
    t: Arc<Transport>,
    entries: Vec<AccountEntry>,
    concurrency: usize,
    with_login: bool,
    quiet: bool,
) -> anyhow::Result<Vec<AccountEntry>> {
    let list = entries
        .iter()
        .flat_map(|e| std::iter::once(e.rider.clone()).chain(e.guardian.clone()))
        .collect();
    let mut done = provision_creds(t, list, concurrency, with_login, quiet)
        .await?
        .into_iter();
    let mut next = || done.next().expect("one answer per account");
    Ok(entries
        .into_iter()
        .map(|e| AccountEntry {
            index: e.index,
            rider: next(),
            guardian: e.guardian.map(|_| next()),
        })
        .collect())
}

/// [`provision`] for a flat list, in its order.
async fn provision_creds(
    t: Arc<Transport>,
    list: Vec<Creds>,
    concurrency: usize,
    with_login: bool,
    quiet: bool,
) -> anyhow::Result<Vec<Creds>> {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let total = list.len();
    let mut tasks = Vec::with_capacity(total);
    for (i, creds) in list.into_iter().enumerate() {
        let (t, sem) = (t.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let host = i % t.hosts.len();
            register(&t, host, &creds).await?;
            let mut creds = creds;
            if with_login {
                let (s, _) = login(&t, host, &creds, Duration::from_secs(60))
                    .await
                    .map_err(|c| anyhow::anyhow!("logging in {}: {c}", creds.email))?;
                creds.user_id = Some(s.user_id);
            }
            anyhow::Ok(creds)
        }));
    }
    let mut out = Vec::with_capacity(total);
    let mut last_print = Instant::now();
    for (i, task) in tasks.into_iter().enumerate() {
        out.push(task.await??);
        if !quiet && last_print.elapsed() > Duration::from_secs(2) {
            last_print = Instant::now();
            eprintln!(
                "navcast-load: provisioned {}/{total} accounts ({:.0} s)",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    if !quiet && total > 0 {
        eprintln!(
            "navcast-load: {total} accounts ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(out)
}
