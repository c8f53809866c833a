//! Route-engine and tracker benchmarks.
//!
//! Besides criterion's own figures this prints the per-request latency
//! distribution (p50/p99/max) of route computation over 1000 random
//! origin/destination pairs × all four disability profiles with the cache
//! off, and the time of one progress update, because the targets are
//! stated per request (p99 < 1 ms, update < 10 µs).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use navcast::transit::{
    DisabilityType, Network, Profiles, Route, RouteEngine, StationId, TrackState, Tracker,
    TrackerConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PROFILES: [DisabilityType; 4] = [
    DisabilityType::Physical,
    DisabilityType::Visual,
    DisabilityType::Auditory,
    DisabilityType::Elderly,
];

/// 1000 random pairs of station codes from different complexes (fixed seed).
fn pairs(n: &Network) -> Vec<(String, String)> {
    let mut rng = StdRng::seed_from_u64(20_251_122);
    let count = n.stations().len() as u32;
    let mut out = Vec::with_capacity(1000);
    while out.len() < 1000 {
        let (a, b) = (
            StationId(rng.random_range(0..count)),
            StationId(rng.random_range(0..count)),
        );
        if !n.same_complex(a, b) {
            out.push((n.station(a).code.clone(), n.station(b).code.clone()));
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// One measured pass over all pairs × profiles; prints the distribution.
fn report_latency(engine: &RouteEngine, pairs: &[(String, String)]) {
    let mut times = Vec::with_capacity(pairs.len() * PROFILES.len());
    for (o, d) in pairs {
        for &t in &PROFILES {
            let start = Instant::now();
            let set = engine.routes(o, d, t).expect("a route exists");
            times.push(start.elapsed());
            black_box(set);
        }
    }
    times.sort();
    let total: Duration = times.iter().sum();
    println!(
        "route latency over {} requests (cache off): mean {:?}  p50 {:?}  p99 {:?}  max {:?}",
        times.len(),
        total / times.len() as u32,
        percentile(&times, 0.50),
        percentile(&times, 0.99),
        times[times.len() - 1],
    );
}

/// A long route and fixes along it, for the tracker.
fn tracking_fixture(engine: &RouteEngine) -> (Route, Vec<(f64, f64)>) {
    let route = engine
        .routes("인천공항2터미널", "광교", DisabilityType::Physical)
        .expect("a route exists")
        .routes[0]
        .clone();
    let n = engine.network();
    let fixes = route
        .stops
        .windows(2)
        .map(|w| {
            let (a, b) = (n.station(w[0]), n.station(w[1]));
            ((a.lat + b.lat) / 2.0 + 0.0001, (a.lon + b.lon) / 2.0)
        })
        .collect();
    (route, fixes)
}

fn report_tracking(engine: &RouteEngine, tracker: &Tracker) {
    let (route, fixes) = tracking_fixture(engine);
    let n = engine.network();
    let profile = engine.profiles().get(DisabilityType::Physical);
    let rounds = 2000;
    let start = Instant::now();
    for _ in 0..rounds {
        let mut state = TrackState::default();
        for &(lat, lon) in &fixes {
            black_box(
                tracker
                    .update(n, &route, profile, &mut state, lat, lon, Some(15.0))
                    .expect("valid fix"),
            );
        }
    }
    let per = start.elapsed() / (rounds * fixes.len()) as u32;
    println!(
        "progress update on a {}-stop route: {:?} per update (mean of {})",
        route.stops.len(),
        per,
        rounds * fixes.len()
    );
}

fn benches(c: &mut Criterion) {
    let network = Network::embedded();
    let engine = RouteEngine::new(network.clone(), Profiles::embedded(), 0);
    let pairs = pairs(&network);

    // Warm up, then the figures the targets are stated in.
    report_latency(&engine, &pairs[..100]);
    report_latency(&engine, &pairs);
    let tracker = Tracker::new(TrackerConfig::default());
    report_tracking(&engine, &tracker);

    let mut i = 0usize;
    c.bench_function("route/random_pair_4_profiles_cache_off", |b| {
        b.iter(|| {
            let (o, d) = &pairs[i % pairs.len()];
            i += 1;
            for &t in &PROFILES {
                black_box(engine.routes(o, d, t).expect("a route exists"));
            }
        })
    });
    c.bench_function("route/강남_홍대입구_PHY_cache_off", |b| {
        b.iter(|| black_box(engine.routes("강남", "홍대입구", DisabilityType::Physical)))
    });
    let cached = RouteEngine::new(network.clone(), Profiles::embedded(), 1024);
    c.bench_function("route/강남_홍대입구_PHY_cache_hit", |b| {
        b.iter(|| black_box(cached.routes("강남", "홍대입구", DisabilityType::Physical)))
    });

    let (route, fixes) = tracking_fixture(&engine);
    let profile = engine.profiles().get(DisabilityType::Physical).clone();
    let mut j = 0usize;
    let mut state = TrackState::default();
    c.bench_function("track/update_on_long_route", |b| {
        b.iter(|| {
            if j.is_multiple_of(fixes.len()) {
                state = TrackState::default();
            }
            let (lat, lon) = fixes[j % fixes.len()];
            j += 1;
            black_box(tracker.update(&network, &route, &profile, &mut state, lat, lon, Some(15.0)))
        })
    });
    c.bench_function("lookup/resolve_and_search", |b| {
        b.iter(|| {
            black_box(network.resolve("서울역").ok());
            black_box(network.search("신", 10).len())
        })
    });
    let _ = Arc::strong_count(&network);
}

criterion_group! {
    name = group;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
}
