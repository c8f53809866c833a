//! `navcast-netem`: a phone-like link (delay, jitter, loss) in user space,
//! for kernels built without the `netem` qdisc.
//!
//! `scripts/netem.sh` prefers the kernel's `tc qdisc … netem`. Where the
//! kernel lacks it (`CONFIG_NET_SCH_NETEM` unset, as on the VM this project
//! is developed on) the script sends both directions of the client's link
//! through two NFQUEUE queues (iptables `-j NFQUEUE`), and this program,
//! running in the client's network namespace, holds each packet for the
//! link's one-way delay and then accepts it, or drops it with the link's
//! loss probability. The kernel keeps the packets; this program only
//! decides when each verdict is given, so nothing is copied but metadata.
//!
//! Semantics, per direction (one queue each): a packet is released at
//! `arrival + delay + U(-jitter, +jitter)`, but never before the packet
//! queued ahead of it, so the link delays and drops but does not reorder
//! (a real radio link reorders little; netem's jitter reorders a lot,
//! which would measure TCP's reordering heuristics rather than the
//! application). Loss is independent per packet, like netem's `loss p%`.
//!
//! On SIGINT/SIGTERM it prints what it did, and the kernel's own counters
//! for each queue (packets the kernel dropped because the queue or the
//! netlink socket was full), so an overloaded shaper is visible rather
//! than silently counted as "link loss". It needs root (or CAP_NET_ADMIN)
//! in the namespace it serves.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use nfq::{Queue, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "Delay, jitter and loss for packets sent to NFQUEUE queues")]
struct Cli {
    /// One-way delay added to every packet, in milliseconds.
    #[arg(long, default_value_t = 40.0)]
    delay_ms: f64,
    /// Uniform jitter around the delay (±), in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Share of packets dropped, in percent.
    #[arg(long, default_value_t = 0.0)]
    loss_pct: f64,
    /// The NFQUEUE queue numbers to serve, one per direction.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    queues: Vec<u16>,
    /// Packets the kernel may hold per queue before it drops new ones.
    #[arg(long, default_value_t = 65_536)]
    max_queued: u32,
    /// Seed of the delay and loss draws (a run is repeatable).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

/// The longest the loop sleeps between looks at the queue. The kernel
/// hands packets over a netlink socket of about 200 KiB (the netns
/// default; `nfq` does not expose the socket to enlarge it), and a burst
/// of a thousand riders' ticks overflows it within a millisecond.
const TICK: Duration = Duration::from_micros(200);

/// One direction of the link: packets waiting for their release time.
struct Lane {
    queue_num: u16,
    held: VecDeque<(Instant, nfq::Message)>,
    last_release: Instant,
    passed: u64,
    dropped: u64,
    max_held: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        (0.0..=100.0).contains(&cli.loss_pct),
        "--loss-pct must be within 0..=100"
    );
    anyhow::ensure!(
        cli.jitter_ms <= cli.delay_ms,
        "--jitter-ms must not exceed --delay-ms"
    );
    // The signals are awaited on a small runtime of their own; the shaping
    // loop stays a plain thread that checks a flag.
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a signal runtime");
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        STOP.store(true, Ordering::Relaxed);
    });

    let mut queue = Queue::open()
        .map_err(|e| anyhow::anyhow!("cannot open a netfilter queue socket (root?): {e}"))?;
    let now = Instant::now();
    let mut lanes = Vec::new();
    for &q in &cli.queues {
        queue.bind(q)?;
        queue.set_copy_range(q, 0)?;
        queue.set_queue_max_len(q, cli.max_queued)?;
        queue.set_fail_open(q, false)?;
        lanes.push(Lane {
            queue_num: q,
            held: VecDeque::new(),
            last_release: now,
            passed: 0,
            dropped: 0,
            max_held: 0,
        });
    }
    queue.set_nonblocking(true);
    let delay = cli.delay_ms / 1e3;
    let jitter = cli.jitter_ms / 1e3;
    let loss = cli.loss_pct / 100.0;
    let mut rng = StdRng::seed_from_u64(cli.seed);
    println!(
        "navcast-netem: ready on queues {:?}: delay {} ms ± {} ms, loss {} %",
        cli.queues, cli.delay_ms, cli.jitter_ms, cli.loss_pct
    );

    while !STOP.load(Ordering::Relaxed) {
        // Take every packet the kernel has queued.
        loop {
            match queue.recv() {
                Ok(mut msg) => {
                    let now = Instant::now();
                    let Some(lane) = lanes
                        .iter_mut()
                        .find(|l| l.queue_num == msg.get_queue_num())
                    else {
                        msg.set_verdict(Verdict::Accept);
                        queue.verdict(msg)?;
                        continue;
                    };
                    if loss > 0.0 && rng.random::<f64>() < loss {
                        lane.dropped += 1;
                        msg.set_verdict(Verdict::Drop);
                        queue.verdict(msg)?;
                        continue;
                    }
                    let d = if jitter > 0.0 {
                        delay + rng.random_range(-jitter..=jitter)
                    } else {
                        delay
                    };
                    let at = (now + Duration::from_secs_f64(d.max(0.0))).max(lane.last_release);
                    lane.last_release = at;
                    lane.held.push_back((at, msg));
                    lane.max_held = lane.max_held.max(lane.held.len());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Release what is due; find the next release time.
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for lane in &mut lanes {
            while lane.held.front().is_some_and(|(at, _)| *at <= now) {
                let (_, mut msg) = lane.held.pop_front().expect("front exists");
                msg.set_verdict(Verdict::Accept);
                queue.verdict(msg)?;
                lane.passed += 1;
            }
            if let Some((at, _)) = lane.held.front() {
                next = Some(next.map_or(*at, |n| n.min(*at)));
            }
        }
        // Sleep until a packet is due, at most TICK: `nfq` does not expose
        // its socket to poll on.
        let wait = next
            .map(|n| n.saturating_duration_since(Instant::now()))
            .unwrap_or(TICK)
            .min(TICK);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    // Let the held packets go rather than leaving them to the kernel.
    for lane in &mut lanes {
        while let Some((_, mut msg)) = lane.held.pop_front() {
            msg.set_verdict(Verdict::Accept);
            let _ = queue.verdict(msg);
            lane.passed += 1;
        }
    }
    let kernel = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue").unwrap_or_default();
    for lane in &lanes {
        // Columns: queue, portid, waiting, copy mode, copy range,
        // queue_dropped, user_dropped, last id, 1.
        let (queue_dropped, user_dropped) = kernel
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|c| c.first().and_then(|q| q.parse::<u16>().ok()) == Some(lane.queue_num))
            .map(|c| {
                (
                    c.get(5).copied().unwrap_or("?").to_string(),
                    c.get(6).copied().unwrap_or("?").to_string(),
                )
            })
            .unwrap_or(("?".into(), "?".into()));
        println!(
            "navcast-netem: queue {}: {} passed, {} dropped as link loss ({:.3} %), \
             at most {} held at once; kernel dropped {} (queue full) + {} (socket full)",
            lane.queue_num,
            lane.passed,
            lane.dropped,
            100.0 * lane.dropped as f64 / (lane.passed + lane.dropped).max(1) as f64,
            lane.max_held,
            queue_dropped,
            user_dropped,
        );
    }
    Ok(())
}
