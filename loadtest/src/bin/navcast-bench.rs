//! `navcast-bench`: the node's micro-benchmarks, printed as figures.
//!
//! `idle` opens N authenticated sessions and prints the node's RSS per
//! session; `rtt` drives `location_update` round trips at fixed rates from
//! this separate process and prints the sustained rate with p50/p99,
//! measured from each send's scheduled time (so a stall cannot hide
//! latency); `attack` runs one hostile client pattern against the node
//! while a neighbour session sends `location_update`s, and prints the
//! node's RSS growth, how long the node took to close the attackers, with
//! which close codes, and the neighbour's p99. Tokens are minted with the node's HS256 secret, which the
//! operator running the bench has: logging in 10 000 riders through argon2
//! would measure the password hash, not the WebSocket path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Cli {
    /// Base URL of the node, e.g. ws://127.0.0.1:8080
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// The node's HS256 secret (NAVCAST_JWT_SECRET); every subcommand
    /// but `tls` and `refresh` needs it.
    #[arg(long, env = "NAVCAST_JWT_SECRET")]
    secret: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold N idle sessions and print the node's RSS per session.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// The node's pid, to read its RSS.
        #[arg(long)]
        pid: u32,
        /// Concurrent connection attempts.
        #[arg(long, default_value_t = 200)]
        parallel: usize,
    },
    /// Drive location_update round trips at increasing rates.
    Rtt {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Total target rates (round trips per second), one step each.
        #[arg(long, value_delimiter = ',', default_value = "5000,10000,20000,30000")]
        rates: Vec<u64>,
        /// Seconds per step.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Logs in once, then rotates the refresh token `--count` times from
    /// `--clients` concurrent logins; prints the node's RSS growth.
    Refresh {
        #[arg(long, default_value_t = 300_000)]
        count: u64,
        #[arg(long, default_value_t = 4)]
        clients: u64,
        /// The node's pid, to read its RSS.
        #[arg(long)]
        pid: u32,
    },
    /// TLS reconnects to `--tls-addr`: full handshakes against resumed
    /// ones (TLS 1.3 and 1.2), timed from the TCP connect to the end of
    /// the handshake, as a phone coming back sees them.
    Tls {
        /// host:port of the TLS listener (nginx).
        #[arg(long)]
        tls_addr: String,
        /// The server name to send and verify (default: the host).
        #[arg(long)]
        server_name: Option<String>,
        /// CA certificate (PEM) the server's certificate chains to.
        #[arg(long)]
        ca_file: std::path::PathBuf,
        /// Timed handshakes per kind.
        #[arg(long, default_value_t = 30)]
        count: usize,
    },
    /// One hostile pattern against the node, with a neighbour measured.
    Attack {
        #[arg(value_enum)]
        kind: AttackKind,
        /// Attacking sessions.
        #[arg(long, default_value_t = 1)]
        attackers: usize,
        /// The longest the attack lasts if the node does not end it.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The node's pid, to read its RSS.
        #[arg(long)]
        pid: u32,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum AttackKind {
    /// WebSocket pings (125-byte payloads) as fast as the socket takes them;
    /// never reads.
    PongFlood,
    /// Requests with a 64 KiB `request_id`, as fast as the socket takes
    /// them, from a client with a 4 KiB receive buffer that never reads.
    BigRequestId,
    /// Valid `ping` requests as fast as possible; reads its replies.
    FrameFlood,
    /// Connections that send a request head one byte per second and never
    /// finish it (`--attackers` connections).
    Slowloris,
    /// Wrong passwords posted to `/login` from 127.0.0.1 by `--attackers`
    /// concurrent loops, while 20 other addresses log in once a second.
    LoginFlood,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn token(secret: &str, sub: &str) -> String {
    let now = navcast::clock::unix_s();
    let claims = json!({"sub": sub, "exp": now + 3600, "iat": now, "jti": uuid::Uuid::new_v4().to_string(), "type": "access"});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(base: &str, secret: &str) -> anyhow::Result<Ws> {
    let sub = uuid::Uuid::new_v4().to_string();
    let url = format!("{base}/api/v1/ws/{sub}?token={}", token(secret, &sub));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    // The `connected` frame.
    match ws.next().await {
        Some(Ok(Message::Text(_))) => Ok(ws),
        other => anyhow::bail!("no connected frame: {other:?}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let secret = || {
        cli.secret
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--secret (or NAVCAST_JWT_SECRET) is needed"))
    };
    match cli.cmd {
        Cmd::Idle {
            sessions,
            pid,
            parallel,
        } => idle(&cli.url, &secret()?, sessions, pid, parallel).await,
        Cmd::Rtt {
            connections,
            rates,
            seconds,
        } => rtt(&cli.url, &secret()?, connections, &rates, seconds).await,
        Cmd::Refresh {
            count,
            clients,
            pid,
        } => refresh_loop(&cli.url, count, clients, pid).await,
        Cmd::Attack {
            kind,
            attackers,
            seconds,
            pid,
        } => attack(&cli.url, &secret()?, kind, attackers, seconds, pid).await,
        Cmd::Tls {
            ref tls_addr,
            ref server_name,
            ref ca_file,
            count,
        } => tls_reconnects(tls_addr, server_name.as_deref(), ca_file, count).await,
    }
}

/// Full against resumed TLS handshakes, per protocol version.
async fn tls_reconnects(
    addr: &str,
    server_name: Option<&str>,
    ca_file: &std::path::Path,
    count: usize,
) -> anyhow::Result<()> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_file)? {
        roots.add(cert?)?;
    }
    let host = server_name
        .map(str::to_string)
        .unwrap_or_else(|| addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_string());
    let name = rustls_pki_types::ServerName::try_from(host)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    for (label, version) in [
        ("TLS 1.3", &rustls::version::TLS13),
        ("TLS 1.2", &rustls::version::TLS12),
    ] {
        let config = |resume: bool| -> anyhow::Result<Arc<rustls::ClientConfig>> {
            let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[version])?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            if !resume {
                c.resumption = rustls::client::Resumption::disabled();
            }
            Ok(Arc::new(c))
        };
        let mut report = Vec::new();
        for resume in [false, true] {
            let connector = tokio_rustls::TlsConnector::from(config(resume)?);
            let mut times = Vec::with_capacity(count);
            let mut resumed = 0;
            // With resumption, one untimed handshake first fills the cache.
            for i in 0..count + usize::from(resume) {
                let t0 = Instant::now();
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let mut tls = connector.connect(name.clone(), tcp).await?;
                let took = t0.elapsed();
                if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    resumed += 1;
                }
                // A request and its answer: TLS 1.3 tickets arrive after
                // the handshake, and are only read with the response.
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                tls.write_all(
                    b"GET /health HTTP/1.1\r\nHost: navcast\r\nConnection: close\r\n\r\n",
                )
                .await?;
                let mut sink = Vec::new();
                let _ = tls.read_to_end(&mut sink).await;
                if !(resume && i == 0) {
                    times.push(took);
                }
            }
            if resume && resumed > 0 {
                // The priming handshake was a full one.
                resumed = resumed.min(count);
            }
            times.sort();
            let q =
                |p: f64| times[((times.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
            report.push(format!(
                "{}: p50 {:.1} ms, p95 {:.1} ms ({} of {} resumed)",
                if resume { "resumption on" } else { "full" },
                q(0.5),
                q(0.95),
                resumed,
                count
            ));
        }
        println!("tls {label} to {addr}: {}", report.join("; "));
    }
    Ok(())
}

async fn idle(url: &str, secret: &str, n: usize, pid: u32, parallel: usize) -> anyhow::Result<()> {
    let before = rss_kib(pid);
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (url, secret) = (url.to_string(), secret.to_string());
        tasks.push(tokio::spawn(async move {
            let ws = connect(&url, &secret).await;
            drop(permit);
            ws
        }));
    }
    let mut sockets = Vec::with_capacity(n);
    for t in tasks {
        sockets.push(t.await??);
    }
    let connect_s = started.elapsed().as_secs_f64();
    // Let the node settle (allocator, lazily grown buffers), then read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!("idle sessions: {n} (connected in {connect_s:.1} s)");
    println!("node RSS: before {before} KiB, after {after} KiB");
    println!("RSS per session: {per:.2} KiB (target <= 16 KiB)");
    for mut ws in sockets {
        let _ = ws.close(None).await;
    }
    Ok(())
}

async fn rtt(
    url: &str,
    secret: &str,
    conns: usize,
    rates: &[u64],
    seconds: u64,
) -> anyhow::Result<()> {
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut ws = connect(url, secret).await?;
        ws.send(Message::text(json!({"type": "start_navigation", "origin": "강남", "destination": "홍대입구", "request_id": 0}).to_string())).await?;
        loop {
            if let Some(Ok(Message::Text(t))) = ws.next().await
                && t.contains("route_calculated")
            {
                break;
            }
        }
        sockets.push(ws);
    }
    println!("connections: {conns}; step length {seconds} s; latency from scheduled send time");
    println!(
        "{:>10} {:>12} {:>10} {:>10} {:>10} {:>8}",
        "target/s", "achieved/s", "p50 ms", "p99 ms", "max ms", "errors"
    );
    let sockets = Arc::new(sockets.into_iter().map(Mutex::new).collect::<Vec<_>>());
    for &rate in rates {
        let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
            1, 60_000_000, 3,
        )?));
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let per_conn = rate as f64 / conns as f64;
        let interval = Duration::from_secs_f64(1.0 / per_conn);
        let step_start = tokio::time::Instant::now() + Duration::from_millis(200);
        let step_end = step_start + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for i in 0..conns {
            let (sockets, done, errors) = (sockets.clone(), done.clone(), errors.clone());
            // Spread the connections' schedules over one interval.
            let offset = interval.mul_f64(i as f64 / conns as f64);
            tasks.push(tokio::spawn(async move {
                let mut ws = sockets[i].lock().await;
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut next = step_start + offset;
                let mut k: u64 = 0;
                while next < step_end {
                    tokio::time::sleep_until(next).await;
                    k += 1;
                    let jitter = ((k * 7919 + i as u64) % 100) as f64 * 1e-5;
                    let msg = json!({"type": "location_update", "latitude": 37.5006 + jitter, "longitude": 127.0364, "accuracy": 20, "request_id": k});
                    if ws.send(Message::text(msg.to_string())).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Text(t))) => {
                                if t.contains("\"error\"") {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                                break;
                            }
                            Some(Ok(_)) => continue,
                            _ => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                return local;
                            }
                        }
                    }
                    let us = tokio::time::Instant::now().duration_since(next).as_micros() as u64;
                    let _ = local.record(us.max(1));
                    done.fetch_add(1, Ordering::Relaxed);
                    next += interval;
                }
                local
            }));
        }
        for t in tasks {
            let local = t.await?;
            hist.lock().unwrap().add(&local)?;
        }
        let elapsed = tokio::time::Instant::now()
            .duration_since(step_start)
            .as_secs_f64()
            .max(seconds as f64);
        let h = hist.lock().unwrap();
        println!(
            "{:>10} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>8}",
            rate,
            done.load(Ordering::Relaxed) as f64 / elapsed,
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
            errors.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

/// `ws://host:port` → `http://host:port`, for `/metrics`.
fn http_base(ws_url: &str) -> String {
    ws_url.replacen("ws://", "http://", 1)
}

/// Sessions closed by the node so far, by close code, from `/metrics`.
async fn closes(http: &str) -> anyhow::Result<Vec<(u16, u64)>> {
    let text = reqwest::get(format!("{http}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("navcast_closes_total{code=\"")?;
            let (code, value) = rest.split_once("\"} ")?;
            Some((code.parse().ok()?, value.trim().parse().ok()?))
        })
        .collect())
}

/// One attacking session until the node drops it or `until`; the time it
/// took, or `None` if it was still open.
async fn attacker(
    url: String,
    secret: String,
    kind: AttackKind,
    until: tokio::time::Instant,
) -> anyhow::Result<Option<Duration>> {
    use tokio::io::AsyncWriteExt;
    let sub = uuid::Uuid::new_v4().to_string();
    let full = format!("{url}/api/v1/ws/{sub}?token={}", token(&secret, &sub));
    let started = tokio::time::Instant::now();
    let burst: Vec<u8> = match kind {
        AttackKind::PongFlood => {
            let mut ping = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
            ping.extend(std::iter::repeat_n(b'p', 125));
            ping.repeat(500)
        }
        _ => Vec::new(),
    };
    match kind {
        AttackKind::PongFlood => {
            let (mut ws, _) = tokio_tungstenite::connect_async(full).await?;
            let _ = ws.next().await;
            let tokio_tungstenite::MaybeTlsStream::Plain(mut tcp) = ws.into_inner() else {
                anyhow::bail!("plain ws expected");
            };
            while tokio::time::Instant::now() < until {
                let write = tokio::time::timeout(Duration::from_millis(100), tcp.write_all(&burst));
                if let Ok(Err(_)) = write.await {
                    return Ok(Some(started.elapsed()));
                }
            }
            Ok(None)
        }
        AttackKind::BigRequestId => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_recv_buffer_size(4096)?;
            let host = url.trim_start_matches("ws://");
            let tcp = socket
                .connect(
                    tokio::net::lookup_host(host)
                        .await?
                        .next()
                        .expect("address"),
                )
                .await?;
            let (mut ws, _) = tokio_tungstenite::client_async(full, tcp).await?;
            let frame =
                json!({"type": "ping", "request_id": "i".repeat(64 * 1024 - 64)}).to_string();
            while tokio::time::Instant::now() < until {
                let send = tokio::time::timeout(
                    Duration::from_millis(100),
                    ws.send(Message::text(frame.clone())),
                );
                if let Ok(Err(_)) = send.await {
                    return Ok(Some(started.elapsed()));
                }
            }
            Ok(None)
        }
        AttackKind::FrameFlood => {
            let (ws, _) = tokio_tungstenite::connect_async(full).await?;
            let (mut tx, mut rx) = ws.split();
            let reader = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
            let frame = json!({"type": "ping"}).to_string();
            while tokio::time::Instant::now() < until {
                if tx.feed(Message::text(frame.clone())).await.is_err() || reader.is_finished() {
                    return Ok(Some(started.elapsed()));
                }
            }
            Ok(None)
        }
        AttackKind::Slowloris | AttackKind::LoginFlood => {
            anyhow::bail!("{kind:?} is not a WebSocket attack")
        }
    }
}

/// Sends `location_update`s every 100 ms until `stop`; their latencies
/// (from the scheduled send) and how many failed.
async fn neighbour(
    url: String,
    secret: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut ws = connect(&url, &secret).await?;
    ws.send(Message::text(json!({"type": "start_navigation", "origin": "강남", "destination": "홍대입구", "request_id": 0}).to_string())).await?;
    while let Some(Ok(m)) = ws.next().await {
        if m.to_text().is_ok_and(|t| t.contains("route_calculated")) {
            break;
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0u64;
    let mut k = 0u64;
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next).await;
        k += 1;
        let msg = json!({"type": "location_update", "latitude": 37.5006 + (k % 50) as f64 * 1e-5, "longitude": 127.0364, "accuracy": 20, "request_id": k});
        if ws.send(Message::text(msg.to_string())).await.is_err() {
            errors += 1;
            break;
        }
        match ws.next().await {
            Some(Ok(Message::Text(t))) if !t.contains("\"error\"") => {}
            _ => errors += 1,
        }
        hist.record((tokio::time::Instant::now() - next).as_micros().max(1) as u64)?;
        next += Duration::from_millis(100);
    }
    let _ = ws.close(None).await;
    Ok((hist, errors))
}

async fn attack(
    url: &str,
    secret: &str,
    kind: AttackKind,
    attackers: usize,
    seconds: u64,
    pid: u32,
) -> anyhow::Result<()> {
    let http = http_base(url);
    let closes_before = closes(&http).await?;
    let rss_before = rss_kib(pid);
    let started = tokio::time::Instant::now();
    let until = started + Duration::from_secs(seconds);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    // The neighbour: one navigating rider, an update every 100 ms (within
    // the default rate limit), on its own thread and runtime, so the
    // attackers' busy loops in this process cannot delay what it measures.
    let measured = {
        let (stop, url, secret) = (stop.clone(), url.to_string(), secret.to_string());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || runtime.block_on(neighbour(url, secret, stop)))
    };
    let http_attack = match kind {
        AttackKind::Slowloris => Some(slowloris(url, attackers, seconds).await?),
        AttackKind::LoginFlood => Some(login_flood(url, attackers, seconds).await?),
        _ => None,
    };
    let tasks: Vec<_> = if http_attack.is_some() {
        Vec::new()
    } else {
        (0..attackers)
            .map(|_| tokio::spawn(attacker(url.to_string(), secret.to_string(), kind, until)))
            .collect()
    };
    let mut closed = Vec::new();
    let mut open = 0;
    for t in tasks {
        match t.await? {
            Ok(Some(d)) => closed.push(d),
            Ok(None) => open += 1,
            Err(e) => anyhow::bail!("attacker failed to start: {e}"),
        }
    }
    // Let the node finish closing, then stop measuring; the closes are
    // read while the neighbour is still open, so they are the attackers'.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let closes_after = closes(&http).await?;
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await?;
    let (hist, errors) = measured
        .join()
        .map_err(|_| anyhow::anyhow!("neighbour thread panicked"))??;
    let codes: Vec<String> = closes_after
        .iter()
        .filter_map(|(code, n)| {
            let before = closes_before
                .iter()
                .find(|(c, _)| c == code)
                .map_or(0, |(_, b)| *b);
            (n > &before).then(|| format!("{code}×{}", n - before))
        })
        .collect();
    if let Some(summary) = http_attack {
        println!(
            "{kind:?}: {attackers} attacker(s); node RSS {rss_before} KiB, peak +{} KiB; {summary}; neighbour location_update p50 {:.2} ms p99 {:.2} ms max {:.2} ms over {} updates, {errors} errors",
            peak.saturating_sub(rss_before),
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
            hist.max() as f64 / 1000.0,
            hist.len(),
        );
        return Ok(());
    }
    let slowest = closed
        .iter()
        .max()
        .map(|d| format!("{:.2} s", d.as_secs_f64()));
    println!(
        "{kind:?}: {attackers} attacker(s); node RSS {rss_before} KiB, peak +{} KiB; closed {}/{attackers} (slowest after {}); close codes {}; neighbour location_update p50 {:.2} ms p99 {:.2} ms max {:.2} ms over {} updates, {errors} errors",
        peak.saturating_sub(rss_before),
        closed.len(),
        slowest.unwrap_or_else(|| "–".into()),
        if codes.is_empty() {
            "none".into()
        } else {
            codes.join(", ")
        },
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
        hist.len(),
    );
    if open > 0 {
        println!("  {open} attacker(s) still open after {seconds} s");
    }
    Ok(())
}

/// Slow clients: each opens a connection and sends a request head one
/// byte per second, never finishing it. Returns a summary line: how many
/// the node closed by itself (and the slowest), how many it refused at
/// once, and what fresh `/health` probes got meanwhile.
async fn slowloris(url: &str, attackers: usize, seconds: u64) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = url.trim_start_matches("ws://").to_string();
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(attackers);
    for _ in 0..attackers {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let Ok(mut tcp) = tokio::net::TcpStream::connect(&host).await else {
                return Slow::Failed;
            };
            let head = b"GET /api/v1/ws/u?token=x HTTP/1.1\r\nHost: n\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut buf = [0u8; 512];
            for byte in head.iter().cycle() {
                if tokio::time::Instant::now() >= until {
                    return Slow::Open;
                }
                if tcp.write_all(&[*byte]).await.is_err() {
                    return Slow::Closed(started.elapsed());
                }
                // A read that returns means the node answered or closed.
                match tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 && buf[..n].starts_with(b"HTTP/1.1 503") => {
                        return Slow::Refused;
                    }
                    Ok(_) => return Slow::Closed(started.elapsed()),
                    Err(_) => {}
                }
            }
            Slow::Open
        }));
    }
    // Fresh connections from another address (127.0.0.2) while the attack
    // runs: what a probe or a new rider sees.
    let probes = {
        let http = http_base(url);
        tokio::spawn(async move {
            let (mut ok, mut refused, mut failed) = (0u32, 0u32, 0u32);
            while tokio::time::Instant::now() < until {
                let client = reqwest::Client::builder()
                    .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(2))
                    .build()
                    .expect("client");
                match client.get(format!("{http}/health")).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) if r.status() == 503 => refused += 1,
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (ok, refused, failed)
        })
    };
    let (mut closed, mut refused, mut open, mut failed) = (Vec::new(), 0, 0, 0);
    for t in tasks {
        match t.await? {
            Slow::Closed(d) => closed.push(d),
            Slow::Refused => refused += 1,
            Slow::Open => open += 1,
            Slow::Failed => failed += 1,
        }
    }
    let (ok, probe_refused, probe_failed) = probes.await?;
    let slowest = closed
        .iter()
        .max()
        .map_or("–".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    Ok(format!(
        "closed by the node {} (slowest after {slowest}), refused at accept (503) {refused}, still open {open}, connect failed {failed}; fresh /health probes from another address: {ok} ok, {probe_refused} refused 503, {probe_failed} failed",
        closed.len()
    ))
}

enum Slow {
    Closed(Duration),
    Refused,
    Open,
    Failed,
}

/// One address (127.0.0.1) posts wrong passwords to `/login` from
/// `attackers` concurrent loops for `seconds`; 20 other addresses
/// (127.0.0.2–21) each log in with their right password once a second.
/// Returns a summary line: the other addresses' success rate and p95, and
/// what the flood got.
async fn login_flood(url: &str, attackers: usize, seconds: u64) -> anyhow::Result<String> {
    let http = http_base(url);
    let login_url = format!("{http}/api/v1/auth/login");
    // The legitimate riders: one account per address, registered first.
    let mut riders = Vec::new();
    for i in 0..20u8 {
        let ip: std::net::IpAddr = std::net::Ipv4Addr::new(127, 0, 0, 2 + i).into();
        let client = reqwest::Client::builder().local_address(ip).build()?;
        let email = register(&client, &http, "flood-bystander").await?;
        riders.push((client, email));
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let flood: Vec<_> = (0..attackers)
        .map(|_| {
            let url = login_url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .local_address(std::net::IpAddr::from([127, 0, 0, 1]))
                    .build()
                    .expect("client");
                let mut statuses: std::collections::BTreeMap<u16, u64> = Default::default();
                while tokio::time::Instant::now() < until {
                    let status = client
                        .post(&url)
                        .form(&[("username", "victim@example.com"), ("password", "guess")])
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    *statuses.entry(status).or_default() += 1;
                }
                statuses
            })
        })
        .collect();
    let bystanders: Vec<_> = riders
        .into_iter()
        .map(|(client, email)| {
            let url = login_url.clone();
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
                let (mut ok, mut total) = (0u64, 0u64);
                let mut next = tokio::time::Instant::now();
                while next < until {
                    tokio::time::sleep_until(next).await;
                    total += 1;
                    let r = client
                        .post(&url)
                        .form(&[("username", email.as_str()), ("password", PASSWORD)])
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status() == 200) {
                        ok += 1;
                    }
                    let _ =
                        hist.record((tokio::time::Instant::now() - next).as_micros().max(1) as u64);
                    next += Duration::from_secs(1);
                }
                (ok, total, hist)
            })
        })
        .collect();
    let mut flood_statuses: std::collections::BTreeMap<u16, u64> = Default::default();
    for f in flood {
        for (s, n) in f.await? {
            *flood_statuses.entry(s).or_default() += n;
        }
    }
    let (mut ok, mut total) = (0, 0);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for b in bystanders {
        let (o, t, h) = b.await?;
        ok += o;
        total += t;
        hist.add(h)?;
    }
    let flood: Vec<String> = flood_statuses
        .iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect();
    Ok(format!(
        "other addresses: {ok}/{total} logins 200 ({:.1} %), p50 {:.0} ms p95 {:.0} ms max {:.0} ms; the flood got {}",
        100.0 * ok as f64 / total.max(1) as f64,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.95) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
        flood.join(", ")
    ))
}

/// The password of every account the bench registers.
const PASSWORD: &str = "correct horse battery";

/// Registers a new account named after `kind`; returns its email.
async fn register(client: &reqwest::Client, http: &str, kind: &str) -> anyhow::Result<String> {
    let email = format!("{kind}-{}@example.com", uuid::Uuid::new_v4().simple());
    let r = client
        .post(format!("{http}/api/v1/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "register: {}", r.status());
    Ok(email)
}

/// `clients` logins, each rotating its refresh token `count / clients`
/// times as fast as the node answers.
async fn refresh_loop(url: &str, count: u64, clients: u64, pid: u32) -> anyhow::Result<()> {
    let http = http_base(url);
    let client = reqwest::Client::new();
    let rss_start = rss_kib(pid);
    let mut tokens = Vec::new();
    for _ in 0..clients {
        let email = register(&client, &http, "refresher").await?;
        let login: serde_json::Value = client
            .post(format!("{http}/api/v1/auth/login"))
            .form(&[("username", email.as_str()), ("password", PASSWORD)])
            .send()
            .await?
            .json()
            .await?;
        tokens.push(
            login["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    // After the logins: their argon2 memory is not the refreshes' doing.
    let rss_before = rss_kib(pid);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for mut token in tokens {
        let (client, url) = (client.clone(), format!("{http}/api/v1/auth/refresh"));
        let n = count / clients;
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                let pair: serde_json::Value = client
                    .post(&url)
                    .json(&json!({"refresh_token": token}))
                    .send()
                    .await?
                    .json()
                    .await?;
                token = pair["refresh_token"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("refresh refused: {pair}"))?
                    .to_string();
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = count / clients * clients;
    println!(
        "refresh: {done} rotations from {clients} logins in {elapsed:.1} s ({:.0}/s); node RSS {rss_start} KiB at start, {rss_before} KiB after the logins, {} KiB after the rotations",
        done as f64 / elapsed,
        rss_kib(pid)
    );
    Ok(())
}
