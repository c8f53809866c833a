//! Typed node configuration and how its layers are merged.
//!
//! Layers, later ones winning: built-in defaults (documented on each field)
//! → an optional TOML file (`--config`) → environment variables
//! `NAVCAST_<KEY>` (a section's keys as `NAVCAST_<SECTION>_<KEY>`, e.g.
//! `NAVCAST_JWT_SECRET`, `NAVCAST_WS_MAX_CONNECTIONS`) → command-line flags.
//! `cargo run` with no file and no environment gives a working dev node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Sections whose keys are reachable from the environment as
/// `NAVCAST_<SECTION>_<KEY>`.
const SECTIONS: [&str; 8] = [
    "jwt",
    "http",
    "ws",
    "auth",
    "navigation",
    "shutdown",
    "bus",
    "history",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP/WebSocket listener binds. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Name of this node in logs, `connected` frames, `/stats` and bus
    /// envelopes. Default: `node-` and 6 random hex digits, new per start.
    pub node_id: String,
    /// `dev` (default) or `production`. Production refuses to start without
    /// an explicit JWT secret or key.
    pub env: Environment,
    /// Redis URL for the cross-node bus and shared state; none = a single
    /// node with in-memory state. With `redis_mode = "cluster"`, a
    /// comma-separated list of seed nodes of a Redis Cluster
    /// (`redis://10.0.0.1:7001,redis://10.0.0.2:7001`); any reachable one
    /// is enough to learn the rest.
    pub redis_url: Option<String>,
    /// `single` (default): one Redis server (or a proxy in front of one).
    /// `cluster`: a Redis Cluster (Redis ≥ 7); the bus must be `targeted`,
    /// whose per-rider channels become sharded pub/sub channels in the
    /// rider's slot.
    pub redis_mode: RedisMode,
    /// Without Redis: the directory of the crash-safe file that keeps
    /// accounts and refresh tokens across restarts (created if missing).
    /// Default `navcast-state` (relative to the working directory); `""`
    /// keeps everything in memory. Ignored with `redis_url`.
    pub state_dir: Option<PathBuf>,
    /// How often the node checks that Redis answers and still holds its
    /// data (the generation key). Default 1 s.
    #[serde(with = "humantime_serde")]
    pub redis_health_interval: Duration,
    /// A check without an answer in this time fails; two failures in a row
    /// mark Redis down: `/ready` 503, store requests fail at once. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub redis_health_timeout: Duration,
    /// Log format: `pretty` (default) or `json`.
    pub log_format: LogFormat,
    /// `tracing` filter directives. Default `info`.
    pub log_level: String,
    /// Directory with `stations.csv`, `lines.csv`, `transfers.csv` replacing
    /// the embedded Seoul network. Default: embedded data.
    pub data_dir: Option<PathBuf>,
    /// TOML file of routing profiles replacing the embedded ones.
    pub profiles_file: Option<PathBuf>,
    pub jwt: JwtConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub ws: WsConfig,
    pub navigation: NavigationConfig,
    pub bus: BusConfig,
    pub history: HistoryConfig,
    pub shutdown: ShutdownConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    Single,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Dev,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256` (default), `RS256` or `ES256`. The algorithm is pinned: a
    /// token whose header names another one is rejected.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret (≥ 32 bytes recommended). Unset in dev: a random
    /// secret is generated at start and the log says so.
    pub secret: Option<String>,
    /// RS256/ES256: PEM public key that verifies tokens.
    pub public_key_file: Option<PathBuf>,
    /// RS256/ES256: PEM private key that signs tokens this node issues.
    /// Without it the node only verifies tokens minted elsewhere, and
    /// `/api/v1/auth/*` answers 503.
    pub private_key_file: Option<PathBuf>,
    /// Expected and issued `iss`; checked only when set.
    pub issuer: Option<String>,
    /// Expected and issued `aud`; checked only when set.
    pub audience: Option<String>,
    /// Access-token lifetime. Default 30 min.
    #[serde(with = "humantime_serde")]
    pub access_ttl: Duration,
    /// Refresh-token lifetime. Default 7 days.
    #[serde(with = "humantime_serde")]
    pub refresh_ttl: Duration,
    /// Clock leeway for `exp`/`nbf`, at most 30 s. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// TOML file of accounts created at start if missing (dev fixtures).
    /// Default: `config/accounts.toml` when that file exists and `env` is
    /// `dev`; `""` turns seeding off. Never loaded in production: setting
    /// it there is a start-up error (its passwords are public).
    pub seed_file: Option<PathBuf>,
    /// Argon2id memory cost in KiB. Default 19456 (OWASP's minimum).
    pub argon2_memory_kib: u32,
    /// Argon2id iterations. Default 2.
    pub argon2_iterations: u32,
    /// Threads that hash passwords. Default 1: a login storm then costs at
    /// most one core, whatever its size.
    pub hash_threads: usize,
    /// Scheduling niceness of those threads (0–19). Default 10, so live
    /// WebSocket traffic wins the CPU over logins.
    pub hash_nice: i32,
    /// Hashes waiting for a thread before login answers 503. Default 512.
    pub hash_queue: usize,
    /// Password requests (login, register) one client address may have
    /// queued or hashing on this node; more get 429, so one address cannot
    /// fill the queue that everyone's logins share. Default 2.
    pub hashes_per_address: usize,
    /// Password requests one client address may make per
    /// `address_window`, counted across the cluster; more get 429 with
    /// `Retry-After` until the window ends. Default 60.
    pub attempts_per_address: u64,
    /// The window of `attempts_per_address`. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub address_window: Duration,
    /// Failed logins in a row an account takes without delay. Default 5.
    pub free_failures: u32,
    /// The lockout after one more failure; it doubles with each further
    /// failure (429 with a growing `Retry-After`, even for the right
    /// password). Default 1 s.
    #[serde(with = "humantime_serde")]
    pub lockout_base: Duration,
    /// The longest lockout; failures are forgotten this long after the
    /// last one, and a successful login forgets them at once. Default 15 min.
    #[serde(with = "humantime_serde")]
    pub lockout_max: Duration,
    /// How long a throttled password request waits for its 429: a client
    /// that ignores `Retry-After` and floods then makes a few requests a
    /// second per connection instead of tens of thousands, and the CPU
    /// stays with the hashing of everyone else's logins. Default 500 ms.
    #[serde(with = "humantime_serde")]
    pub throttle_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MultiDevice {
    /// Every session of a user gets every event (default).
    Allow,
    /// A new session closes the user's older ones with 4002.
    Replace,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Largest accepted frame/message in bytes; larger closes with 1009. Default 64 KiB.
    pub max_frame_bytes: usize,
    /// Sustained requests per second per session. Default 20.
    pub rate_per_s: f64,
    /// Burst above the sustained rate. Default 40.
    pub rate_burst: f64,
    /// Outbound frames queued per session before it is closed with 4008. Default 256.
    pub queue_frames: usize,
    /// Outbound bytes queued per session before it is closed with 4008,
    /// beside the frame cap. Default 1 MiB.
    pub queue_bytes: usize,
    /// A write to the socket that makes no progress for this long closes
    /// the session with 4008 (the peer stopped reading). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Bytes the WebSocket layer may hold unsent for one session (its
    /// answers to the client's pings included); must be larger than the
    /// largest outbound frame. Default 256 KiB.
    pub write_buffer_bytes: usize,
    /// Frames refused by the rate limit within `flood_window` that close
    /// the session with 1008. Default 100.
    pub flood_rejections: u32,
    /// The window of `flood_rejections`. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub flood_window: Duration,
    /// WebSocket ping interval. Default 20 s.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Close when no pong answering one of our pings arrived for this long:
    /// a live client reads, so its WebSocket layer answers pings. Frames the
    /// client sends do not count. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Sessions this node accepts before answering 503. Default 0: as many
    /// as the open-file limit (`RLIMIT_NOFILE`) allows after
    /// `http.max_pending` and 256 files of headroom (19 232 at 20 000).
    pub max_connections: usize,
    /// Malformed frames in a row before close 1008. Default 10.
    pub max_protocol_errors: u32,
    /// Warn with `token_expiring` this long before `exp`. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub token_expiry_warning: Duration,
    /// `allow` (default) or `replace`.
    pub multi_device: MultiDevice,
    /// Per-connection read buffer. Default 1 KiB: tungstenite allocates it
    /// when the session opens and zero-fills it before each read, so its
    /// 128 KiB default costs memory and CPU per idle session (see
    /// docs/BASELINES.md). Requests are a few hundred bytes; a larger frame
    /// (up to `max_frame_bytes`) takes several reads. 4 KiB → 1 KiB took
    /// 3 KiB off every idle session.
    pub read_buffer_bytes: usize,
    /// `Retry-After` seconds on 503 at the connection limit. Default 5.
    pub retry_after_s: u64,
}

/// The HTTP layer every connection passes before it is a session: what a
/// client may hold and for how long.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// How long a connection may take to send a request's headers, and how
    /// long an idle keep-alive connection is kept waiting for its next
    /// request (hyper runs one timer for both). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a plain HTTP request (body included) may take before it is
    /// answered 408. Default 15 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Accepted connections that are not (yet) WebSocket sessions: a new
    /// connection beyond this gets a 503 and is closed. Default 1024.
    pub max_pending: usize,
    /// Of those, the most one peer address may hold; more get the same 503.
    /// Peers in `trusted_proxies` (a load balancer carries everyone's
    /// connections) are not limited. Default 256.
    pub max_pending_per_address: usize,
    /// Largest request head (request line and headers). Default 16 KiB
    /// (hyper's minimum is 8 KiB).
    pub max_header_bytes: usize,
    /// Length of the listening socket's queue of connections not yet
    /// accepted: what a burst of connects (a reconnect storm, a proxy
    /// opening upstream connections while the node is busy) may queue
    /// before the kernel drops SYNs. The kernel caps it at
    /// `net.core.somaxconn`. Default 4096.
    pub listen_backlog: u32,
    /// Peers whose `X-Real-IP` / `X-Forwarded-For` name the client (the
    /// load balancer, e.g. `["127.0.0.1/32"]`). Anyone else's header is
    /// ignored and the peer address is the client. In the environment: a
    /// comma-separated list. Default: none.
    pub trusted_proxies: Vec<Network>,
}

/// An address or a CIDR network (`10.0.0.7`, `10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(pub ipnet::IpNet);

impl Network {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        // An IPv4 peer may arrive as an IPv4-mapped IPv6 address.
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Network, String> {
        let s = s.trim();
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(Network)
            .map_err(|_| format!("`{s}` is neither an IP address nor a CIDR network"))
    }
}

impl Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NavigationConfig {
    /// Distance to the destination that counts as arrival. Default 150 m.
    pub arrival_radius_m: f64,
    /// Distance from the route beyond which a fix is a deviation. Default 400 m.
    pub deviation_threshold_m: f64,
    /// Most of a fix's `accuracy` credited to the deviation threshold. Default 100 m.
    pub max_accuracy_credit_m: f64,
    /// Route sets kept in the LRU cache. Default 4096; 0 disables it.
    pub route_cache_capacity: usize,
    /// How long an idle route is kept in the state store. Default 6 h.
    #[serde(with = "humantime_serde")]
    pub route_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusTopology {
    /// One channel; every node receives every event.
    Broadcast,
    /// One channel per user; a node subscribes only while it has interest.
    Targeted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `broadcast` (default) or `targeted`.
    pub topology: BusTopology,
    /// Channel name (broadcast) or prefix (targeted). Default `navcast:events`.
    pub channel: String,
    /// When the bus is down: `true` keeps `/ready` at 200 and reports
    /// `degraded`; `false` (default) answers 503.
    pub ready_when_degraded: bool,
    /// How often a node refreshes its record in the node registry (Redis
    /// entry of the hash `navcast:{nodes}`, expiring after 3 periods). Default 5 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
}

/// Each rider's stream of events (protocol v1.1): how much of it is kept
/// for clients that come back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events kept per stream; a client away for more misses some and is
    /// told `recovered: false`. Default 200.
    pub size: usize,
    /// How long a stream's history is kept after its last event; after
    /// that the stream starts again under a new epoch. Default 15 min.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 200,
            ttl: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long to wait for sessions to flush after close 1001. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            node_id: format!("node-{:06x}", rand::random::<u32>() & 0xff_ffff),
            env: Environment::Dev,
            redis_url: None,
            redis_mode: RedisMode::Single,
            state_dir: Some(PathBuf::from("navcast-state")),
            redis_health_interval: Duration::from_secs(1),
            redis_health_timeout: Duration::from_secs(1),
            log_format: LogFormat::Pretty,
            log_level: "info".into(),
            data_dir: None,
            profiles_file: None,
            jwt: JwtConfig::default(),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            ws: WsConfig::default(),
            navigation: NavigationConfig::default(),
            bus: BusConfig::default(),
            history: HistoryConfig::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: None,
            public_key_file: None,
            private_key_file: None,
            issuer: None,
            audience: None,
            access_ttl: Duration::from_secs(30 * 60),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            leeway: Duration::from_secs(30),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            seed_file: None,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            hash_threads: 1,
            hash_nice: 10,
            hash_queue: 512,
            hashes_per_address: 2,
            attempts_per_address: 60,
            address_window: Duration::from_secs(60),
            free_failures: 5,
            lockout_base: Duration::from_secs(1),
            lockout_max: Duration::from_secs(15 * 60),
            throttle_delay: Duration::from_millis(500),
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_frame_bytes: 64 * 1024,
            rate_per_s: 20.0,
            rate_burst: 40.0,
            queue_frames: 256,
            queue_bytes: 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            write_buffer_bytes: 256 * 1024,
            flood_rejections: 100,
            flood_window: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(60),
            max_connections: 0,
            max_protocol_errors: 10,
            token_expiry_warning: Duration::from_secs(60),
            multi_device: MultiDevice::Allow,
            read_buffer_bytes: 1024,
            retry_after_s: 5,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            max_pending: 1024,
            max_pending_per_address: 256,
            max_header_bytes: 16 * 1024,
            listen_backlog: 4096,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for NavigationConfig {
    fn default() -> Self {
        NavigationConfig {
            arrival_radius_m: 150.0,
            deviation_threshold_m: 400.0,
            max_accuracy_credit_m: 100.0,
            route_cache_capacity: 4096,
            route_ttl: Duration::from_secs(6 * 3600),
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            topology: BusTopology::Broadcast,
            channel: "navcast:events".into(),
            ready_when_degraded: false,
            heartbeat_interval: Duration::from_secs(5),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Overrides given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(Box<figment::Error>),
    #[error("configuration: {0}")]
    Rule(String),
}

/// `value` as a TOML number or boolean, if it reads as one.
fn scalar(value: &str) -> Option<toml::Value> {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
}

impl Config {
    /// Merges the layers. `env` is the process environment as pairs, so
    /// tests can pass their own instead of mutating the global one.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Rule(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
        let mut env_toml = toml::Table::new();
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("NAVCAST_") else {
                continue;
            };
            let lower = rest.to_ascii_lowercase();
            let path: Vec<&str> = match SECTIONS
                .iter()
                .find(|s| lower.starts_with(&format!("{s}_")))
            {
                Some(section) => vec![section, &lower[section.len() + 1..]],
                None => vec![&lower],
            };
            // A value becomes a number or a boolean only where the setting
            // is one; every other setting takes the string as it is, so an
            // all-digit node id or secret stays a string.
            let default = match path.as_slice() {
                [section, key] => defaults
                    .get(*section)
                    .and_then(|t| t.as_table())
                    .and_then(|t| t.get(*key)),
                [key] => defaults.get(*key),
                _ => None,
            };
            let parsed = match default {
                Some(toml::Value::Array(_)) => toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(|v| toml::Value::String(v.to_string()))
                        .collect(),
                ),
                Some(d) if d.is_integer() || d.is_float() || d.is_bool() => scalar(&value)
                    .filter(|v| v.is_integer() || v.is_float() || v.is_bool())
                    .unwrap_or(toml::Value::String(value)),
                _ => toml::Value::String(value),
            };
            match path.as_slice() {
                [section, key] => {
                    let table = env_toml
                        .entry(section.to_string())
                        .or_insert_with(|| toml::Value::Table(Default::default()));
                    if let toml::Value::Table(t) = table {
                        t.insert(key.to_string(), parsed);
                    }
                }
                [key] => {
                    env_toml.insert(key.to_string(), parsed);
                }
                _ => {}
            }
        }
        figment = figment.merge(Serialized::defaults(env_toml));
        figment = figment.merge(Serialized::defaults(overrides));
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        if config
            .state_dir
            .as_deref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            config.state_dir = None;
        }
        // An empty seed file turns seeding off. Only a dev node picks up
        // `config/accounts.toml` by itself: its passwords are public.
        match config.auth.seed_file.as_deref() {
            Some(p) if p.as_os_str().is_empty() => config.auth.seed_file = None,
            Some(p) if config.env == Environment::Production => {
                return Err(ConfigError::Rule(format!(
                    "auth.seed_file (NAVCAST_AUTH_SEED_FILE) is {} but env is production: seed \
                     accounts have public passwords and are never loaded in production; unset it \
                     or set it to \"\"",
                    p.display()
                )));
            }
            Some(_) => {}
            None => {
                let default_seed = PathBuf::from("config/accounts.toml");
                if config.env == Environment::Dev && default_seed.exists() {
                    config.auth.seed_file = Some(default_seed);
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Dev means: no production flag and no Redis (so no cluster in which
    /// nodes with different random secrets would reject each other's tokens).
    pub fn is_dev(&self) -> bool {
        self.env == Environment::Dev && self.redis_url.is_none()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let rule = |m: &str| Err(ConfigError::Rule(m.to_string()));
        if self.jwt.leeway > Duration::from_secs(30) {
            return rule("jwt.leeway must be at most 30s");
        }
        match self.jwt.algorithm {
            JwtAlgorithm::HS256 => {
                if self.jwt.secret.is_none() && !self.is_dev() {
                    return rule(
                        "no JWT secret: set NAVCAST_JWT_SECRET (or jwt.secret in the config file); \
                         only a dev node without Redis may run on a generated secret",
                    );
                }
                if self.jwt.secret.as_deref().is_some_and(|s| s.len() < 16) {
                    return rule("jwt.secret must be at least 16 bytes (32 recommended)");
                }
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                if self.jwt.public_key_file.is_none() {
                    return rule(
                        "jwt.algorithm RS256/ES256 needs NAVCAST_JWT_PUBLIC_KEY_FILE (a PEM public key)",
                    );
                }
            }
        }
        if self.redis_mode == RedisMode::Cluster {
            if self.redis_url.is_none() {
                return rule(
                    "redis_mode = \"cluster\" needs NAVCAST_REDIS_URL: the cluster's seed nodes, comma-separated",
                );
            }
            if self.bus.topology == BusTopology::Broadcast {
                return rule(
                    "redis_mode = \"cluster\" needs bus.topology = \"targeted\" (NAVCAST_BUS_TOPOLOGY=targeted): \
                     a broadcast channel is classic pub/sub, which a Redis Cluster copies to every shard, \
                     so more shards would add no fan-out capacity; targeted channels are sharded per rider",
                );
            }
        }
        if self.ws.rate_per_s <= 0.0 || self.ws.rate_burst < 1.0 {
            return rule("ws.rate_per_s must be > 0 and ws.rate_burst ≥ 1");
        }
        if self.ws.queue_frames == 0 {
            return rule("ws.queue_frames must be > 0");
        }
        if self.http.header_read_timeout.is_zero() || self.http.request_timeout.is_zero() {
            return rule("http.header_read_timeout and http.request_timeout must be > 0");
        }
        if self.auth.hashes_per_address == 0 || self.auth.attempts_per_address == 0 {
            return rule("auth.hashes_per_address and auth.attempts_per_address must be > 0");
        }
        if self.auth.address_window.is_zero() || self.auth.lockout_base.is_zero() {
            return rule("auth.address_window and auth.lockout_base must be > 0");
        }
        if self.auth.lockout_max < self.auth.lockout_base {
            return rule("auth.lockout_max must be at least auth.lockout_base");
        }
        if self.http.max_pending == 0 || self.http.max_pending_per_address == 0 {
            return rule("http.max_pending and http.max_pending_per_address must be > 0");
        }
        if self.http.max_header_bytes < 8192 {
            return rule("http.max_header_bytes must be at least 8192");
        }
        if self.ws.queue_bytes == 0 || self.ws.write_timeout.is_zero() {
            return rule("ws.queue_bytes and ws.write_timeout must be > 0");
        }
        if self.ws.write_buffer_bytes < 64 * 1024 {
            return rule(
                "ws.write_buffer_bytes must be at least 64 KiB (the largest reply must fit)",
            );
        }
        if self.ws.flood_rejections == 0 || self.ws.flood_window.is_zero() {
            return rule("ws.flood_rejections and ws.flood_window must be > 0");
        }
        if self.ws.pong_timeout <= self.ws.ping_interval {
            return rule("ws.pong_timeout must be longer than ws.ping_interval");
        }
        if self.redis_health_interval.is_zero() || self.redis_health_timeout.is_zero() {
            return rule("redis_health_interval and redis_health_timeout must be > 0");
        }
        if self.history.size == 0 || self.history.ttl < Duration::from_secs(1) {
            return rule("history.size must be > 0 and history.ttl at least 1s");
        }
        if self.bus.heartbeat_interval.is_zero() {
            return rule("bus.heartbeat_interval must be > 0");
        }
        if self.bus.channel.is_empty() {
            return rule("bus.channel must not be empty");
        }
        if self.node_id.is_empty() || self.node_id.len() > 64 {
            return rule("node_id must be 1–64 characters");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_merge_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("navcast.toml");
        std::fs::write(
            &file,
            "node_id = \"from-file\"\n[ws]\nmax_connections = 10\nrate_per_s = 5.0\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&file),
            env(&[
                ("NAVCAST_WS_MAX_CONNECTIONS", "20"),
                ("NAVCAST_JWT_SECRET", "0123456789abcdef0123"),
                ("NAVCAST_NODE_ID", "from-env"),
                ("OTHER", "x"),
            ]),
            &Overrides {
                node_id: Some("from-cli".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.node_id, "from-cli");
        assert_eq!(cfg.ws.max_connections, 20);
        assert_eq!(cfg.ws.rate_per_s, 5.0);
        assert_eq!(cfg.jwt.secret.as_deref(), Some("0123456789abcdef0123"));
    }

    #[test]
    fn trusted_proxies_come_as_a_list_of_addresses_or_networks() {
        let cfg = Config::load(
            None,
            env(&[("NAVCAST_HTTP_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8,::1")]),
            &Overrides::default(),
        )
        .unwrap();
        let nets = &cfg.http.trusted_proxies;
        assert_eq!(nets.len(), 3);
        assert!(nets[0].contains("127.0.0.1".parse().unwrap()));
        assert!(!nets[0].contains("127.0.0.2".parse().unwrap()));
        assert!(nets[1].contains("10.9.8.7".parse().unwrap()));
        assert!(
            nets[1].contains("::ffff:10.1.1.1".parse().unwrap()),
            "IPv4-mapped peers"
        );
        assert!(nets[2].contains("::1".parse().unwrap()));
        let err = Config::load(
            None,
            env(&[("NAVCAST_HTTP_TRUSTED_PROXIES", "nginx")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`nginx`"), "{err}");
    }

    #[test]
    fn production_without_secret_says_what_to_set() {
        let err = Config::load(
            None,
            env(&[("NAVCAST_ENV", "production")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("NAVCAST_JWT_SECRET"), "{err}");
        let err = Config::load(
            None,
            env(&[("NAVCAST_REDIS_URL", "redis://127.0.0.1:1")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("NAVCAST_JWT_SECRET"), "{err}");
    }

    #[test]
    fn a_redis_cluster_needs_seeds_and_the_targeted_bus() {
        let secret = ("NAVCAST_JWT_SECRET", "0123456789abcdef0123");
        let err = Config::load(
            None,
            env(&[secret, ("NAVCAST_REDIS_MODE", "cluster")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("NAVCAST_REDIS_URL"), "{err}");
        let seeds = (
            "NAVCAST_REDIS_URL",
            "redis://127.0.0.1:7001,redis://127.0.0.1:7002",
        );
        let err = Config::load(
            None,
            env(&[secret, seeds, ("NAVCAST_REDIS_MODE", "cluster")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("NAVCAST_BUS_TOPOLOGY=targeted"),
            "{err}"
        );
        let c = Config::load(
            None,
            env(&[
                secret,
                seeds,
                ("NAVCAST_REDIS_MODE", "cluster"),
                ("NAVCAST_BUS_TOPOLOGY", "targeted"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.redis_mode, RedisMode::Cluster);
    }

    #[test]
    fn durations_parse_from_env() {
        let cfg = Config::load(
            None,
            env(&[
                ("NAVCAST_WS_PING_INTERVAL", "5s"),
                ("NAVCAST_WS_PONG_TIMEOUT", "15s"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.ws.ping_interval, Duration::from_secs(5));
        assert_eq!(cfg.ws.pong_timeout, Duration::from_secs(15));
    }

    #[test]
    fn string_settings_take_any_string_from_the_environment() {
        let cfg = Config::load(
            None,
            env(&[
                ("NAVCAST_NODE_ID", "7"),
                ("NAVCAST_JWT_SECRET", "12345678901234567890123456789012"),
                ("NAVCAST_JWT_ISSUER", "true"),
                ("NAVCAST_BUS_CHANNEL", "42"),
                ("NAVCAST_WS_MAX_CONNECTIONS", "20"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.node_id, "7");
        assert_eq!(
            cfg.jwt.secret.as_deref(),
            Some("12345678901234567890123456789012")
        );
        assert_eq!(cfg.jwt.issuer.as_deref(), Some("true"));
        assert_eq!(cfg.bus.channel, "42");
        assert_eq!(cfg.ws.max_connections, 20);
        // A number setting still refuses what is not a number.
        assert!(
            Config::load(
                None,
                env(&[("NAVCAST_WS_MAX_CONNECTIONS", "many")]),
                &Overrides::default()
            )
            .is_err()
        );
    }

    #[test]
    fn seeding_can_be_turned_off_and_never_happens_in_production() {
        // The tests run in the package root, where config/accounts.toml is.
        assert!(Path::new("config/accounts.toml").exists());
        let dev = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(
            dev.auth.seed_file.as_deref(),
            Some(Path::new("config/accounts.toml"))
        );
        let off = Config::load(
            None,
            env(&[("NAVCAST_AUTH_SEED_FILE", "")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(off.auth.seed_file, None);
        let secret = ("NAVCAST_JWT_SECRET", "0123456789abcdef0123456789abcdef");
        let production = Config::load(
            None,
            env(&[("NAVCAST_ENV", "production"), secret]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(production.auth.seed_file, None);
        let err = Config::load(
            None,
            env(&[
                ("NAVCAST_ENV", "production"),
                secret,
                ("NAVCAST_AUTH_SEED_FILE", "config/accounts.toml"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("NAVCAST_AUTH_SEED_FILE"), "{err}");
    }
}
