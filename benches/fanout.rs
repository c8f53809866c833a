//! Cross-node fan-out over Redis: latency and bus traffic.
//!
//! `cargo bench --bench fanout` starts a `redis-server` on a free port and
//! three nodes in this process, puts riders and guardians on them evenly
//! (rider `i` on node `i % 3`, its guardian on node `(i / 3) % 3`, so every
//! pair of nodes is equally common), drives location updates at 1 000 and
//! then 5 000 events/s in total, and prints:
//!
//! - publish → guardian receipt latency (from the envelope's `sent_at_us`)
//!   at p50/p99/p99.9/max, for guardians on another node (through Redis)
//!   and on the rider's node (local delivery);
//! - the bus messages each node received from other nodes, in `broadcast`
//!   and `targeted` topologies.
//!
//! `FANOUT_REDIS_SHARDS=1,3` runs the targeted topology on a Redis Cluster
//! of each size instead (masters plus one replica each, `redis_mode =
//! "cluster"`, sharded pub/sub) and prints how the `SPUBLISH`es split over
//! the masters.
//!
//! It prints figures; it asserts nothing. Clients and nodes share this
//! process and the machine's cores, so the latency includes the clients'
//! own scheduling.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use navcast::Config;
use navcast::config::{BusTopology, RedisMode};
use navcast::testing::{
    Account, Client, RedisCluster, RedisServer, TestNode, register_and_login, test_config,
};
use parking_lot::Mutex;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Riders by default; a multiple of 9 so every (rider node, guardian node)
/// pair is equally common. `FANOUT_RIDERS` overrides it.
const RIDERS: usize = 180;
const NODES: usize = 3;
/// Measured phases: (events per second in total, seconds). `FANOUT_RATES`
/// (comma-separated events/s) overrides the rates.
const PHASES: [(u64, u64); 2] = [(1_000, 5), (5_000, 5)];
const WARMUP: (u64, u64) = (1_000, 1);

fn riders() -> usize {
    std::env::var("FANOUT_RIDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RIDERS)
}

fn phases() -> Vec<(u64, u64)> {
    match std::env::var("FANOUT_RATES") {
        Ok(v) => v
            .split(',')
            .filter_map(|r| r.trim().parse().ok())
            .map(|r| (r, 5))
            .collect(),
        Err(_) => PHASES.to_vec(),
    }
}

fn node_config(redis_url: &str, mode: RedisMode, name: &str, topology: BusTopology) -> Config {
    let mut c = test_config();
    c.node_id = name.to_string();
    c.redis_url = Some(redis_url.to_string());
    c.redis_mode = mode;
    c.ws.rate_per_s = 10_000.0;
    c.ws.rate_burst = 10_000.0;
    c.bus.topology = topology;
    c
}

async fn start_node(config: Config) -> TestNode {
    let node = TestNode::start(config).await;
    node.wait_ready(true).await;
    node
}

/// A session with a small read buffer: tungstenite zero-fills the whole
/// buffer before each read, and at the default 128 KiB that memset would
/// dominate the clients' CPU (the node uses 4 KiB for the same reason).
async fn connect(node: &TestNode, who: &Account) -> Client {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        node.ws_url(&who.user_id, &who.access),
        Some(config),
        true,
    )
    .await
    .unwrap();
    Client::from_ws(ws).await
}

/// Latency recorders per phase: [through Redis, local].
struct Recorders {
    phase: AtomicUsize,
    hist: Vec<Mutex<[Histogram<u64>; 2]>>,
    received: Vec<[AtomicU64; 2]>,
}

impl Recorders {
    fn new(phases: usize) -> Recorders {
        let h = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        Recorders {
            phase: AtomicUsize::new(0),
            hist: (0..phases).map(|_| Mutex::new([h(), h()])).collect(),
            received: (0..phases)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
        }
    }
}

/// Pulls `"sent_at_us":N` out of a peer_event without parsing the event.
fn sent_at(text: &str) -> Option<u64> {
    let i = text.rfind("\"sent_at_us\":")? + "\"sent_at_us\":".len();
    let digits: String = text[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

struct Figures {
    topology: BusTopology,
    label: String,
    phases: Vec<PhaseFigures>,
}

struct PhaseFigures {
    rate: u64,
    sent: u64,
    received: [u64; 2],
    hist: [Histogram<u64>; 2],
    bus_received: Vec<u64>,
    publish_failures: u64,
    gaps: u64,
}

async fn run_topology(
    redis_url: &str,
    mode: RedisMode,
    topology: BusTopology,
    label: String,
) -> Figures {
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let name = format!("node-{}", (b'a' + i as u8) as char);
        nodes.push(start_node(node_config(redis_url, mode, &name, topology)).await);
    }
    let http = reqwest::Client::new();
    let riders = riders();
    let measured = phases();
    let all_phases = 1 + measured.len();
    let rec = Arc::new(Recorders::new(all_phases));
    // Interval between one rider's updates, in µs; 0 = paused.
    let interval_us = Arc::new(AtomicU64::new(0));
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..all_phases).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();

    for i in 0..riders {
        let rider_node = i % NODES;
        let guardian_node = (i / NODES) % NODES;
        let rider = register_and_login(&http, &nodes[rider_node].http(""), None).await;
        let guardian = register_and_login(&http, &nodes[guardian_node].http(""), None).await;
        let mut r = connect(&nodes[rider_node], &rider).await;
        let mut g = connect(&nodes[guardian_node], &guardian).await;
        navcast::testing::share_and_watch(&mut r, &mut g, &rider.user_id, &guardian.user_id).await;
        let calc = r
            .request(json!({"type": "start_navigation", "origin": "서울", "destination": "잠실"}))
            .await;
        assert_eq!(calc["type"], "route_calculated", "{calc}");
        let (mut g, r) = (g.ws, r.ws);

        // The guardian: every peer_event's latency into the current phase.
        let remote = usize::from(rider_node == guardian_node);
        let rec_g = rec.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = g.next().await {
                let Message::Text(t) = msg else { continue };
                let Some(sent_at_us) = sent_at(&t) else {
                    continue;
                };
                let latency = navcast::clock::unix_us().saturating_sub(sent_at_us).max(1);
                let phase = rec_g.phase.load(Ordering::Relaxed);
                rec_g.hist[phase].lock()[remote].saturating_record(latency);
                rec_g.received[phase][remote].fetch_add(1, Ordering::Relaxed);
            }
        }));
        // The rider: location updates on a schedule, replies drained.
        let (mut sink, mut stream) = r.split();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(_)) = stream.next().await {}
        }));
        let interval = interval_us.clone();
        let sent = sent.clone();
        let rec_r = rec.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let frame =
                json!({"type": "location_update", "latitude": 37.5547, "longitude": 126.9707})
                    .to_string();
            let mut next = tokio::time::Instant::now();
            let mut last_every = 0;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next).await;
                let every = interval.load(Ordering::Relaxed);
                if every == 0 {
                    next += Duration::from_millis(10);
                    last_every = 0;
                    continue;
                }
                if every != last_every {
                    // A new rate: start at a random point of the interval,
                    // so the riders together send evenly, not in waves.
                    last_every = every;
                    next = tokio::time::Instant::now()
                        + Duration::from_micros(rand::random::<u64>() % every);
                    continue;
                }
                if sink.send(Message::text(frame.clone())).await.is_err() {
                    return;
                }
                sent[rec_r.phase.load(Ordering::Relaxed)].fetch_add(1, Ordering::Relaxed);
                next += Duration::from_micros(every);
                // Behind schedule (a stall): skip rather than burst.
                let now = tokio::time::Instant::now();
                if next < now {
                    next = now;
                }
            }
        }));
    }

    let mut figures = Figures {
        topology,
        label,
        phases: Vec::new(),
    };
    let phases: Vec<(u64, u64)> = std::iter::once(WARMUP).chain(measured).collect();
    for (p, (rate, secs)) in phases.into_iter().enumerate() {
        let before: Vec<(u64, u64, u64)> = nodes
            .iter()
            .map(|n| {
                let m = &n.state.metrics;
                (
                    m.bus_received.get(),
                    m.bus_publish_failures.get(),
                    m.bus_gaps.get(),
                )
            })
            .collect();
        rec.phase.store(p, Ordering::Relaxed);
        interval_us.store(1_000_000 * riders as u64 / rate, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        // Let the last events of the phase land in it.
        interval_us.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if p == 0 {
            continue;
        }
        let hist = {
            let h = rec.hist[p].lock();
            [h[0].clone(), h[1].clone()]
        };
        let after = nodes.iter().map(|n| {
            let m = &n.state.metrics;
            (
                m.bus_received.get(),
                m.bus_publish_failures.get(),
                m.bus_gaps.get(),
            )
        });
        let deltas: Vec<(u64, u64, u64)> = after
            .zip(&before)
            .map(|(a, b)| (a.0 - b.0, a.1 - b.1, a.2 - b.2))
            .collect();
        figures.phases.push(PhaseFigures {
            rate,
            sent: sent[p].load(Ordering::Relaxed),
            received: [
                rec.received[p][0].load(Ordering::Relaxed),
                rec.received[p][1].load(Ordering::Relaxed),
            ],
            hist,
            bus_received: deltas.iter().map(|d| d.0).collect(),
            publish_failures: deltas.iter().map(|d| d.1).sum(),
            gaps: deltas.iter().map(|d| d.2).sum(),
        });
    }
    done.store(true, Ordering::Relaxed);
    // Dropping a TestNode starts its drain.
    drop(nodes);
    for t in tasks {
        t.abort();
    }
    // Give the nodes a moment to drain before the next cluster starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    figures
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn print(figures: &[Figures]) {
    println!();
    println!(
        "fan-out over Redis: {NODES} nodes in one process, {riders} riders + {riders} guardians, rider i on node i%3, guardian on node (i/3)%3",
        riders = riders()
    );
    println!();
    println!(
        "{:<12} {:>7} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8} {:>6}",
        "topology",
        "rate/s",
        "sent",
        "delivered",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "local p50",
        "local p99",
        "pub fail",
        "gaps"
    );
    for f in figures {
        for p in &f.phases {
            let [remote, local] = &p.hist;
            println!(
                "{:<12} {:>7} {:>8} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.2}   {:>8.2} {:>9.2} {:>8} {:>6}",
                f.label,
                p.rate,
                p.sent,
                p.received[0] + p.received[1],
                ms(remote.value_at_quantile(0.5)),
                ms(remote.value_at_quantile(0.99)),
                ms(remote.value_at_quantile(0.999)),
                ms(remote.max()),
                ms(local.value_at_quantile(0.5)),
                ms(local.value_at_quantile(0.99)),
                p.publish_failures,
                p.gaps,
            );
        }
    }
    println!();
    println!("bus messages received from other nodes, per node (phase at the highest rate):");
    let mut per_topology = Vec::new();
    for f in figures {
        let p = f.phases.last().unwrap();
        let total: u64 = p.bus_received.iter().sum();
        println!(
            "  {:<12} {:?} total {total} ({:.0}/s per node)",
            f.label,
            p.bus_received,
            total as f64 / NODES as f64 / phases().last().unwrap().1 as f64
        );
        per_topology.push(total);
    }
    if let ([broadcast, targeted], [first, second]) = (&per_topology[..], figures)
        && first.topology != second.topology
    {
        let (broadcast, targeted) = if first.topology == BusTopology::Broadcast {
            (*broadcast, *targeted)
        } else {
            (*targeted, *broadcast)
        };
        println!(
            "  targeted / broadcast = {:.3} (a third is {:.3})",
            targeted as f64 / broadcast.max(1) as f64,
            1.0 / 3.0
        );
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; with a filter that names another
    // bench, do nothing.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| !a.starts_with('-') && !"fanout".contains(a.as_str()))
    {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if let Ok(shards) = std::env::var("FANOUT_REDIS_SHARDS") {
            let mut figures = Vec::new();
            let mut splits = Vec::new();
            for n in shards
                .split(',')
                .filter_map(|n| n.trim().parse::<usize>().ok())
            {
                let cluster = RedisCluster::start(n).await;
                let label = format!("cluster x{n}");
                figures.push(
                    run_topology(
                        &cluster.seeds(),
                        RedisMode::Cluster,
                        BusTopology::Targeted,
                        label.clone(),
                    )
                    .await,
                );
                let mut per_master = Vec::new();
                for m in cluster.masters().await {
                    per_master.push(cluster.calls(m, "spublish").await);
                }
                splits.push((label, per_master));
            }
            print(&figures);
            println!("SPUBLISH per master over the whole run:");
            for (label, per_master) in splits {
                let total: u64 = per_master.iter().sum();
                let shares: Vec<String> = per_master
                    .iter()
                    .map(|n| format!("{:.1} %", 100.0 * *n as f64 / total.max(1) as f64))
                    .collect();
                println!("  {label:<12} {per_master:?} = {}", shares.join(" / "));
            }
            return;
        }
        let redis = RedisServer::start().await;
        let mut figures = Vec::new();
        // `FANOUT_TOPOLOGIES=targeted,broadcast` changes the order or picks one.
        let topologies: Vec<BusTopology> = match std::env::var("FANOUT_TOPOLOGIES") {
            Ok(v) => v
                .split(',')
                .filter_map(|t| match t.trim() {
                    "broadcast" => Some(BusTopology::Broadcast),
                    "targeted" => Some(BusTopology::Targeted),
                    _ => None,
                })
                .collect(),
            Err(_) => vec![BusTopology::Broadcast, BusTopology::Targeted],
        };
        for topology in topologies {
            let label = format!("{topology:?}").to_lowercase();
            figures.push(run_topology(&redis.url(), RedisMode::Single, topology, label).await);
        }
        print(&figures);
    });
}
