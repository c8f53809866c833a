//! Connections: HTTP for logins, WebSockets for sessions, TLS for `wss://`
//! and `https://`, and the source addresses sockets are bound to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::cli::TlsArgs;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One target given with `--host`.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    /// `ws://h:p[/prefix]` without a trailing slash.
    pub(crate) ws_base: String,
    /// The same with `http`/`https`.
    pub(crate) http_base: String,
    pub(crate) tls: bool,
    /// Resolved once at start.
    pub(crate) addr: SocketAddr,
}

impl Host {
    pub(crate) async fn parse(text: &str) -> anyhow::Result<Host> {
        let text = text.trim().trim_end_matches('/');
        let (scheme, rest) = text
            .split_once("://")
            .with_context(|| format!("--host {text:?}: expected ws://host:port or wss://host"))?;
        let tls = match scheme {
            "ws" | "http" => false,
            "wss" | "https" => true,
            _ => bail!("--host {text:?}: scheme must be ws, wss, http or https"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("--host {text:?}: no host name");
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let lookup = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        let addr = tokio::net::lookup_host(&lookup)
            .await
            .with_context(|| format!("resolving {lookup}"))?
            .next()
            .with_context(|| format!("{lookup} has no address"))?;
        let (ws, http) = if tls {
            ("wss", "https")
        } else {
            ("ws", "http")
        };
        Ok(Host {
            ws_base: format!("{ws}://{authority}{path}"),
            http_base: format!("{http}://{authority}{path}"),
            tls,
            addr,
        })
    }
}

/// The kernel's ephemeral port range (`ip_local_port_range`), Linux's
/// default when it cannot be read.
pub(crate) fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some(it.next()??.abs_diff(it.next()??) + 1)
        })
        .unwrap_or(60999 - 32768 + 1)
}

/// A warning when one source address would hold more than half the
/// ephemeral ports towards one server address: the kernel's search for a
/// free port in `connect()` then grows with every connection, and the
/// client burns CPU there instead of on its riders (measured: a 15 000-rider
/// ramp from one address used a full core in its last seconds, 35 % of one
/// with eight addresses).
pub(crate) fn port_pressure(connections: u64, targets: usize, sources: usize) -> Option<String> {
    let per_pair = connections / (targets.max(1) * sources.max(1)) as u64;
    let ports = ephemeral_ports();
    (per_pair > ports / 2).then(|| {
        format!(
            "about {per_pair} connections from each source address to each host use more than half of the {ports} ephemeral ports; connect() slows down and costs the client CPU. Spread them with --source-ips (e.g. 127.0.0.2-127.0.0.{})",
            1 + (connections / (targets.max(1) as u64 * (ports / 4))).clamp(8, 250)
        )
    })
}

/// Parses `--source-ips`: ranges `a.b.c.d-a.b.c.e` and single addresses,
/// comma separated.
pub(crate) fn parse_source_ips(text: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: Ipv4Addr = a.trim().parse().context("--source-ips range start")?;
                let b: Ipv4Addr = b.trim().parse().context("--source-ips range end")?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a > 1 << 20 {
                    bail!("--source-ips: bad range {part}");
                }
                out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
            }
            None => out.push(part.parse().context("--source-ips address")?),
        }
    }
    if out.is_empty() {
        bail!("--source-ips: no address");
    }
    Ok(out)
}

/// Why a WebSocket connect failed, as a short cause for the failure table.
pub(crate) fn cause_of(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(resp) => format!("HTTP {}", resp.status().as_u16()),
        E::Io(io) => io_cause(io),
        E::Tls(t) => format!("TLS: {t}"),
        E::ConnectionClosed | E::AlreadyClosed => "connection closed".into(),
        E::Protocol(p) => format!("protocol: {p}"),
        other => other.to_string().chars().take(80).collect(),
    }
}

pub(crate) fn io_cause(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::AddrNotAvailable => "address not available (ports exhausted?)".into(),
        K::AddrInUse => "address in use".into(),
        K::TimedOut => "timeout".into(),
        K::InvalidData => format!("invalid data: {e}").chars().take(80).collect(),
        k => format!("io: {k}"),
    }
}

/// Accepts any server certificate (`--insecure`).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn rustls_config(opts: &TlsArgs) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &opts.ca_file {
            for cert in read_pem_certs(path)? {
                roots
                    .add(cert)
                    .with_context(|| format!("adding a certificate of {}", path.display()))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn read_pem_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// Everything needed to reach the targets.
pub(crate) struct Transport {
    pub(crate) hosts: Vec<Host>,
    source_ips: Vec<IpAddr>,
    next_ip: AtomicUsize,
    tls: Option<Arc<rustls::ClientConfig>>,
    ws_config: WebSocketConfig,
    /// One HTTP client per source address (or one without).
    http: Vec<reqwest::Client>,
}

impl Transport {
    pub(crate) async fn new(
        hosts: &[String],
        source_ips: Option<&str>,
        tls: &TlsArgs,
    ) -> anyhow::Result<Transport> {
        if hosts.is_empty() {
            bail!("--host is required");
        }
        let mut parsed = Vec::new();
        for h in hosts {
            parsed.push(Host::parse(h).await?);
        }
        let source_ips = match source_ips {
            Some(s) => parse_source_ips(s)?,
            None => Vec::new(),
        };
        let any_tls = parsed.iter().any(|h| h.tls);
        let tls_config = if any_tls || tls.insecure || tls.ca_file.is_some() {
            Some(rustls_config(tls)?)
        } else {
            None
        };
        let http_client = |local: Option<IpAddr>| -> anyhow::Result<reqwest::Client> {
            let mut b = reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .tcp_nodelay(true)
                .local_address(local);
            if tls.insecure {
                b = b.danger_accept_invalid_certs(true);
            }
            if let Some(ca) = &tls.ca_file {
                let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
                for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                    b = b.add_root_certificate(cert);
                }
            }
            Ok(b.build()?)
        };
        let http = if source_ips.is_empty() {
            vec![http_client(None)?]
        } else {
            source_ips
                .iter()
                .take(64)
                .map(|ip| http_client(Some(*ip)))
                .collect::<anyhow::Result<_>>()?
        };
        // 4 KiB read buffers: tungstenite zero-fills its whole read buffer
        // before each read, so the 128 KiB default costs memory and CPU per
        // connection (docs/BASELINES.md). Frames are written at once.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        Ok(Transport {
            hosts: parsed,
            source_ips,
            next_ip: AtomicUsize::new(0),
            tls: tls_config,
            ws_config,
            http,
        })
    }

    /// The HTTP client to use for the `n`th request.
    pub(crate) fn http(&self, n: usize) -> &reqwest::Client {
        &self.http[n % self.http.len()]
    }

    pub(crate) fn host(&self, i: usize) -> &Host {
        &self.hosts[i % self.hosts.len()]
    }

    /// Opens a WebSocket to `host`'s `path` (e.g. `/api/v1/ws/u?token=…`),
    /// from the next source address when `--source-ips` is set.
    pub(crate) async fn connect(
        &self,
        host: usize,
        path: &str,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let h = self.host(host);
        let socket = if h.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if !self.source_ips.is_empty() {
            let i = self.next_ip.fetch_add(1, Ordering::Relaxed) % self.source_ips.len();
            // The port is chosen at connect, by the whole 4-tuple: binding
            // to port 0 would search the address's ports for one free of
            // every destination, which with tens of thousands of sockets per
            // address costs the kernel more than the test itself.
            if self.source_ips[i].is_ipv4() {
                nix::sys::socket::setsockopt(
                    &socket,
                    nix::sys::socket::sockopt::IpBindAddressNoPort,
                    &true,
                )
                .map_err(std::io::Error::from)?;
            }
            socket.bind(SocketAddr::new(self.source_ips[i], 0))?;
        }
        let stream = socket.connect(h.addr).await?;
        stream.set_nodelay(true)?;
        let url = format!("{}{}", h.ws_base, path);
        let connector = match &self.tls {
            Some(c) if h.tls => Some(Connector::Rustls(c.clone())),
            _ => Some(Connector::Plain),
        };
        let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
            url,
            stream,
            Some(self.ws_config),
            connector,
        )
        .await?;
        Ok(ws)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn many_connections_from_one_address_are_flagged() {
        let ports = super::ephemeral_ports();
        assert!(ports > 1000, "{ports}");
        let w = super::port_pressure(ports, 1, 1).expect("all ports from one address");
        assert!(w.contains("--source-ips (e.g. 127.0.0.2-127.0.0."), "{w}");
        assert_eq!(super::port_pressure(ports, 1, 4), None);
        assert_eq!(super::port_pressure(ports, 4, 1), None);
        assert_eq!(super::port_pressure(1100, 1, 1), None);
    }

    use super::*;

    #[test]
    fn source_ip_ranges() {
        let ips = parse_source_ips("127.0.0.2-127.0.0.4, 127.0.0.9").unwrap();
        assert_eq!(ips.len(), 4);
        assert_eq!(ips[3].to_string(), "127.0.0.9");
        assert!(parse_source_ips("127.0.0.5-127.0.0.1").is_err());
    }

    #[tokio::test]
    async fn hosts_map_to_http() {
        let h = Host::parse("ws://127.0.0.1:8080/").await.unwrap();
        assert_eq!(h.http_base, "http://127.0.0.1:8080");
        assert_eq!(h.ws_base, "ws://127.0.0.1:8080");
        let h = Host::parse("wss://127.0.0.1/nav").await.unwrap();
        assert_eq!(h.http_base, "https://127.0.0.1/nav");
        assert_eq!(h.addr.port(), 443);
        assert!(Host::parse("ftp://x").await.is_err());
    }
}
