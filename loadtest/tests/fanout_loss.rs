//! Dropped bus messages show up as lost peer events: gaps in `seq` and
//! fewer events received than the riders saw, and the run fails the
//! "0 lost peer_events" criterion.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use navcast::bus::{Bus, Deliver, Envelope, Recovery};

/// A bus that loses every `nth` envelope it is asked to publish.
struct Lossy {
    inner: Arc<dyn Bus>,
    nth: u64,
    seen: AtomicU64,
}

impl Bus for Lossy {
    fn start(&self, node_id: &str, deliver: Deliver) {
        self.inner.start(node_id, deliver)
    }
    fn publish(&self, envelope: Envelope) {
        if self.seen.fetch_add(1, Ordering::Relaxed) % self.nth == self.nth - 1 {
            return;
        }
        self.inner.publish(envelope)
    }
    fn recover(
        &self,
        user: &str,
        since: Option<(u64, String)>,
    ) -> futures_util::future::BoxFuture<'static, Result<Recovery, String>> {
        self.inner.recover(user, since)
    }
    fn interest(&self, user: &str) {
        self.inner.interest(user)
    }
    fn disinterest(&self, user: &str) {
        self.inner.disinterest(user)
    }
    fn is_connected(&self) -> bool {
        true
    }
    fn kind(&self) -> &'static str {
        "lossy"
    }
}

const PROFILE: &str = r#"
name = "fanout"
description = "20 riders, half of them watched by a guardian on the other node"
[[stage]]
name = "ramp"
end_s = 4
users = 20
spawn_rate = 10
[[stage]]
name = "hold"
end_s = 20
users = 20
[rider]
guardian_share = 0.5
update_interval_s = [1.0, 1.5]
"#;

async fn run_fanout(nodes: &[Node]) -> navcast_load::Outcome {
    let dir = tempfile::tempdir().unwrap();
    let file = write_profile(&dir, "fanout.toml", PROFILE);
    run(&hosts(nodes), &file, &["--server-stats-every", "0"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_bus_messages_fail_the_lost_peer_events_criterion() {
    let nodes = Node::cluster_with(
        2,
        |_| {},
        |inner| {
            Arc::new(Lossy {
                inner,
                nth: 3,
                seen: AtomicU64::new(0),
            }) as Arc<dyn Bus>
        },
    )
    .await;
    let out = run_fanout(&nodes).await;
    let f = out.summary.fanout;
    // The bus drops every third envelope before it gets its stream offset,
    // so the stream the guardian sees has no gap: the events are missing
    // against the rider's replies (the shortfall), which is what counts.
    assert!(f.lost > 0 && f.received < f.expected, "{f:?}");
    assert_failed(&out, "lost peer_events", true);
    assert_failure_row(&out, "fanout_delivery", "peer_event lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_bus_delivers_every_peer_event() {
    let nodes = Node::cluster_with(2, |_| {}, |b| b).await;
    let out = run_fanout(&nodes).await;
    let f = out.summary.fanout;
    assert!(f.expected > 20, "{f:?}");
    assert_eq!((f.lost, f.gaps, f.duplicates), (0, 0, 0), "{f:?}");
    assert_eq!(f.received, f.expected);
    assert_failed(&out, "lost peer_events", false);
}

/// #13 §2: guardians refresh their tokens like riders. Tokens live 6 s and
/// the node warns 4 s before, so a 20 s run keeps its guardians only by
/// refreshing in band: no 4001, no 401 on a reconnect, no event lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardians_outlive_their_tokens_by_refreshing() {
    let nodes = Node::cluster_with(
        2,
        |c| {
            c.jwt.access_ttl = std::time::Duration::from_secs(6);
            c.ws.token_expiry_warning = std::time::Duration::from_secs(4);
        },
        |b| b,
    )
    .await;
    let out = run_fanout(&nodes).await;
    let f = out.summary.fanout;
    assert_eq!((f.lost, f.gaps), (0, 0), "{f:?}");
    assert!(f.expected > 20, "{f:?}");
    assert_eq!(
        out.summary.close_codes.keys().collect::<Vec<_>>(),
        vec!["1000"],
        "no session ended with 4001"
    );
    // 20 riders and 10 guardians, each refreshing every couple of seconds.
    let refreshes = out.summary.cell(navcast_load::summary::Metric::Refresh);
    assert!(refreshes.count >= 60, "{}", refreshes.count);
    assert_eq!(refreshes.failures, 0);
    assert_failed(&out, "lost peer_events", false);
}

const TUNNELS: &str = r#"
name = "tunnels"
description = "10 riders, each watched by a guardian; riders and guardians keep going through tunnels"
[[stage]]
name = "ramp"
end_s = 2
users = 10
spawn_rate = 10
[[stage]]
name = "hold"
end_s = 24
users = 10
[rider]
guardian_share = 1.0
update_interval_s = [0.5, 1.0]
tunnel_share = 1.0
tunnel_s = [2.0, 4.0]
tunnel_every_s = [3.0, 5.0]
"#;

/// #13 §2: guardians lose their network (no read, no write, no close
/// frame) for seconds at a time, come back with jittered backoff on the
/// other node, and `watch` with `since`: every event the riders produced
/// meanwhile is recovered, none is lost for good, none arrives twice. The
/// riders go through tunnels too and come back with `resume`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardians_through_tunnels_lose_nothing() {
    let nodes = Node::cluster_with(2, |_| {}, |b| b).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_profile(&dir, "tunnels.toml", TUNNELS);
    let out = run(&hosts(&nodes), &file, &["--server-stats-every", "0"]).await;
    let f = out.summary.fanout;
    assert!(f.expected > 50, "{f:?}");
    assert_eq!((f.lost, f.duplicates, f.gaps), (0, 0, 0), "{f:?}");
    assert!(f.recovered > 0, "events came back through recovery: {f:?}");
    let reconnects = out.summary.cell(navcast_load::summary::Metric::WsReconnect);
    let guardians = out
        .summary
        .cell(navcast_load::summary::Metric::GuardianBlind)
        .count;
    assert!(
        guardians >= 10,
        "every guardian went through a tunnel: {guardians}"
    );
    // The riders went through tunnels too (`tunnel_share` is for both):
    // each came back with `resume` and found its route (a route lost
    // would be a failed reconnect).
    assert!(
        reconnects.count >= guardians + 10,
        "every rider went through a tunnel: {} reconnects, {guardians} of guardians",
        reconnects.count
    );
    assert_eq!(reconnects.failures, 0, "{:?}", out.summary.failures);
    assert_failed(&out, "lost peer_events", false);
}
