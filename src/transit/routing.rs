//! The accessible route engine: up to three ranked, distinct routes between
//! two stations for a rider profile, and an LRU cache in front of it.
//!
//! Costs are generalised minutes: real ride and walking minutes plus the
//! profile's penalties (transfers, stairs, missing facilities). Per-edge and
//! per-station costs are computed once per profile when the engine is built,
//! so a request is a handful of Dijkstra searches over ~600 nodes.
//!
//! Alternatives come from the penalty method: after each search the edges
//! of the route found cost more, and the search runs again. A route counts
//! as new only if its line sequence or its transfer stations differ from
//! every route kept so far, so riding the same lines through the same
//! transfers (for example the other way round 2호선) is never offered twice.
//! Alternatives much worse than the best are dropped rather than padded.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use parking_lot::Mutex;

use super::{DisabilityType, Link, Network, Profile, Profiles, StationId, geo};

/// In-vehicle speed: about 33 km/h including dwell times.
pub const RIDE_M_PER_MIN: f64 = 550.0;
/// The shortest ride between two stations, minutes.
pub const MIN_RIDE_MIN: f64 = 1.0;
/// The most routes a request returns.
pub const MAX_ROUTES: usize = 3;
/// The most searches one request runs while looking for alternatives.
const MAX_SEARCHES: usize = 8;
/// How much more an edge costs in later searches each time a route uses it.
const PENALTY_FACTOR: f64 = 1.8;
/// An alternative is kept only if its score is at most this multiple of the
/// best score …
const MAX_SCORE_RATIO: f64 = 1.5;
/// … or at most this many minutes worse, whichever allows more.
const MAX_SCORE_SLACK_MIN: f64 = 20.0;

/// Why no routes could be given. Messages are shown to riders as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("station not found: {query}")]
    StationNotFound {
        query: String,
        /// Close station names, best first (at most five).
        suggestions: Vec<String>,
    },
    #[error("origin and destination are the same station")]
    SameStation,
    #[error("no route connects these stations")]
    NoRoute,
    /// A stored route no longer matches the network (for example after a
    /// data update).
    #[error("the stored route is not a valid path of the network")]
    InvalidRoute,
}

impl RouteError {
    /// The protocol error code.
    pub fn code(&self) -> &'static str {
        match self {
            RouteError::StationNotFound { .. } => "STATION_NOT_FOUND",
            RouteError::SameStation => "INVALID_PARAMETERS",
            RouteError::NoRoute | RouteError::InvalidRoute => "ROUTE_NOT_FOUND",
        }
    }
}

/// The ranked routes of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSet {
    /// The line-station where the best route starts.
    pub origin: StationId,
    /// The line-station where the best route ends.
    pub destination: StationId,
    pub disability_type: DisabilityType,
    /// One to three routes, rank 1 first.
    pub routes: Vec<Route>,
}

/// One leg between consecutive stops, kept for progress tracking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Segment {
    /// Distance along the route's polyline where the leg starts, metres.
    pub start_m: f64,
    /// Straight-line length of the leg, metres.
    pub len_m: f64,
    /// The walk of a transfer leg, metres; `None` for a ride.
    pub transfer_walk_m: Option<f64>,
}

/// One route: a walk of the network graph from origin to destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// 1 is the best.
    pub rank: u8,
    /// Every line-station passed, in order; a transfer appears as the two
    /// line-stations of the station.
    pub stops: Vec<StationId>,
    /// The lines ridden, in order.
    pub lines: Vec<String>,
    /// Ride plus transfer-walking minutes at the profile's walking speed.
    pub total_time_min: f64,
    pub transfers: u32,
    /// Names of the stations where the rider changes lines, in order.
    pub transfer_stations: Vec<String>,
    /// Ride distance plus transfer walks, metres.
    pub distance_m: f64,
    /// Generalised cost in minutes under the profile; lower is better.
    pub score: f64,
    pub(crate) segments: Vec<Segment>,
}

impl Route {
    /// The stops' station codes, the form in which a route is stored.
    pub fn codes(&self, n: &Network) -> Vec<String> {
        self.stops
            .iter()
            .map(|&s| n.station(s).code.clone())
            .collect()
    }

    /// Length of the route's polyline through its stops, metres.
    pub fn polyline_length_m(&self) -> f64 {
        self.segments.last().map_or(0.0, |s| s.start_m + s.len_m)
    }
}

/// Route-cache hit and miss counts since the engine was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    origin: Box<[StationId]>,
    destination: Box<[StationId]>,
    disability_type: DisabilityType,
}

/// Precomputed costs of one profile.
struct ProfileCosts {
    /// Generalised cost of each directed edge, in the network's flat edge order.
    edge: Vec<f64>,
    /// Cost of boarding or alighting at each station (missing facilities).
    node: Vec<f64>,
}

/// Computes routes; `Send + Sync`, meant to be shared as an `Arc`.
pub struct RouteEngine {
    /// The graph searched; shared with the node, which also needs lookups.
    network: Arc<Network>,
    /// Kept for real walking minutes and for callers (the tracker needs a
    /// profile per update).
    profiles: Profiles,
    /// Indexed by [`DisabilityType::index`].
    costs: Vec<ProfileCosts>,
    /// `None` when built with capacity 0. A mutex rather than a sharded map:
    /// a lookup is far shorter than the route computation it saves, and the
    /// lock is never held while computing.
    cache: Option<Mutex<LruCache<CacheKey, Arc<RouteSet>>>>,
    /// Cache hits and misses, for the node's /metrics.
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for RouteEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteEngine")
            .field("stations", &self.network.stations().len())
            .field("cache", &self.cache_stats())
            .finish_non_exhaustive()
    }
}

/// Real minutes of riding `distance_m`.
pub fn ride_minutes(distance_m: f64) -> f64 {
    (distance_m / RIDE_M_PER_MIN).max(MIN_RIDE_MIN)
}

impl RouteEngine {
    /// Builds the engine; `cache_capacity` 0 disables the route cache.
    pub fn new(network: Arc<Network>, profiles: Profiles, cache_capacity: usize) -> Self {
        let costs = DisabilityType::ALL
            .iter()
            .map(|&t| Self::profile_costs(&network, profiles.get(t)))
            .collect();
        RouteEngine {
            cache: NonZeroUsize::new(cache_capacity).map(|c| Mutex::new(LruCache::new(c))),
            network,
            profiles,
            costs,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn profile_costs(n: &Network, p: &Profile) -> ProfileCosts {
        let node: Vec<f64> = n
            .stations()
            .iter()
            .map(|s| p.missing_facility_penalty_min.for_missing(&s.facilities))
            .collect();
        let mut edge = Vec::with_capacity(n.all_edges().len());
        for s in n.stations() {
            for e in n.edges(s.id) {
                edge.push(match e.link {
                    Link::Ride { distance_m } => ride_minutes(distance_m),
                    Link::Transfer { index } => {
                        let t = &n.transfers()[index as usize];
                        p.walk_minutes(t.walk_m) * p.walk_weight
                            + p.transfer_penalty_min
                            + if t.step_free {
                                0.0
                            } else {
                                p.non_step_free_transfer_penalty_min
                            }
                            + node[s.id.ix()]
                            + node[e.to.ix()]
                    }
                });
            }
        }
        ProfileCosts { edge, node }
    }

    pub fn network(&self) -> &Arc<Network> {
        &self.network
    }

    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// Hit and miss counts of the route cache (both 0 when it is disabled).
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Routes between two station queries (names, codes or unique prefixes).
    pub fn routes(
        &self,
        origin: &str,
        destination: &str,
        dt: DisabilityType,
    ) -> Result<Arc<RouteSet>, RouteError> {
        let o = self.network.resolve(origin)?;
        let d = self.network.resolve(destination)?;
        self.routes_between(o, d, dt)
    }

    /// Routes from a known station (its whole complex: the rider can board
    /// any line there), for recalculating from the nearest station.
    pub fn routes_from(
        &self,
        from: StationId,
        destination: &str,
        dt: DisabilityType,
    ) -> Result<Arc<RouteSet>, RouteError> {
        let o = self.network.complex_of(from);
        let d = self.network.resolve(destination)?;
        self.routes_between(o, d, dt)
    }

    /// Routes between two sets of line-stations.
    pub fn routes_between(
        &self,
        origin: Vec<StationId>,
        destination: Vec<StationId>,
        dt: DisabilityType,
    ) -> Result<Arc<RouteSet>, RouteError> {
        let n = &self.network;
        if origin
            .iter()
            .any(|&a| destination.iter().any(|&b| a == b || n.same_complex(a, b)))
        {
            return Err(RouteError::SameStation);
        }
        let key = CacheKey {
            origin: origin.into_boxed_slice(),
            destination: destination.into_boxed_slice(),
            disability_type: dt,
        };
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.lock().get(&key) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(hit.clone());
            }
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        let set = Arc::new(self.compute(&key.origin, &key.destination, dt)?);
        if let Some(cache) = &self.cache {
            cache.lock().put(key, set.clone());
        }
        Ok(set)
    }

    /// Rebuilds a stored route from its stop codes, scored under `dt`.
    pub fn route_from_codes(
        &self,
        codes: &[String],
        dt: DisabilityType,
        rank: u8,
    ) -> Result<Route, RouteError> {
        let n = &self.network;
        let mut stops = Vec::with_capacity(codes.len());
        for c in codes {
            stops.push(n.by_code(c).ok_or_else(|| RouteError::StationNotFound {
                query: c.clone(),
                suggestions: Vec::new(),
            })?);
        }
        if stops.len() < 2 {
            return Err(RouteError::InvalidRoute);
        }
        let mut edges = Vec::with_capacity(stops.len() - 1);
        for w in stops.windows(2) {
            let range = n.edge_range(w[0]);
            let e = n.all_edges()[range.clone()]
                .iter()
                .position(|e| e.to == w[1])
                .ok_or(RouteError::InvalidRoute)?;
            edges.push(range.start + e);
        }
        Ok(self.build_route(stops, &edges, dt, rank))
    }

    fn compute(
        &self,
        origin: &[StationId],
        destination: &[StationId],
        dt: DisabilityType,
    ) -> Result<RouteSet, RouteError> {
        let n = &self.network;
        let costs = &self.costs[dt.index()];
        let mut search = Search::new(n.stations().len(), n.all_edges().len());
        for &s in origin {
            search.flags[s.ix()] |= SOURCE;
        }
        for &s in destination {
            search.flags[s.ix()] |= TARGET;
        }
        let mut found: Vec<Route> = Vec::new();
        let mut keys: Vec<(Vec<String>, Vec<String>)> = Vec::new();
        for _ in 0..MAX_SEARCHES {
            let Some((stops, edges)) = search.run(n, costs, origin) else {
                break;
            };
            for &e in &edges {
                search.mult[e] *= PENALTY_FACTOR;
            }
            let route = self.build_route(stops, &edges, dt, 0);
            let key = (route.lines.clone(), route.transfer_stations.clone());
            if !keys.contains(&key) {
                keys.push(key);
                found.push(route);
                if found.len() == MAX_ROUTES {
                    break;
                }
            }
        }
        let Some(best) = found.iter().map(|r| r.score).reduce(f64::min) else {
            return Err(RouteError::NoRoute);
        };
        let limit = (best * MAX_SCORE_RATIO).max(best + MAX_SCORE_SLACK_MIN);
        found.retain(|r| r.score <= limit);
        found.sort_by(|a, b| {
            a.score
                .total_cmp(&b.score)
                .then_with(|| a.stops.cmp(&b.stops))
        });
        for (i, r) in found.iter_mut().enumerate() {
            r.rank = i as u8 + 1;
        }
        Ok(RouteSet {
            origin: found[0].stops[0],
            destination: *found[0].stops.last().expect("a route has stops"),
            disability_type: dt,
            routes: found,
        })
    }

    /// Measures a path: real time and distance, lines, transfers, score.
    fn build_route(
        &self,
        stops: Vec<StationId>,
        edges: &[usize],
        dt: DisabilityType,
        rank: u8,
    ) -> Route {
        let n = &self.network;
        let profile = self.profiles.get(dt);
        let costs = &self.costs[dt.index()];
        let mut lines: Vec<String> = Vec::new();
        let mut transfer_stations = Vec::new();
        let (mut minutes, mut distance_m, mut along) = (0.0, 0.0, 0.0);
        let mut score = costs.node[stops[0].ix()] + costs.node[stops[stops.len() - 1].ix()];
        let mut segments = Vec::with_capacity(edges.len());
        for (w, &e) in stops.windows(2).zip(edges) {
            let (a, b) = (n.station(w[0]), n.station(w[1]));
            let len_m = geo::haversine_m(a.lat, a.lon, b.lat, b.lon);
            score += costs.edge[e];
            let transfer_walk_m = match n.all_edges()[e].link {
                Link::Ride { distance_m: d } => {
                    minutes += ride_minutes(d);
                    distance_m += d;
                    if lines.last() != Some(&a.line) {
                        lines.push(a.line.clone());
                    }
                    None
                }
                Link::Transfer { index } => {
                    let walk = n.transfers()[index as usize].walk_m;
                    minutes += profile.walk_minutes(walk);
                    distance_m += walk;
                    transfer_stations.push(a.name.clone());
                    Some(walk)
                }
            };
            segments.push(Segment {
                start_m: along,
                len_m,
                transfer_walk_m,
            });
            along += len_m;
        }
        Route {
            rank,
            stops,
            lines,
            total_time_min: (minutes * 10.0).round() / 10.0,
            transfers: transfer_stations.len() as u32,
            transfer_stations,
            distance_m: distance_m.round(),
            score: (score * 100.0).round() / 100.0,
            segments,
        }
    }
}

const SOURCE: u8 = 1;
const TARGET: u8 = 2;
const NONE: u32 = u32::MAX;

/// Scratch state of one request's searches.
struct Search {
    /// SOURCE/TARGET bits per station.
    flags: Vec<u8>,
    /// Penalty multiplier per directed edge.
    mult: Vec<f64>,
    /// Best cost per station; the extra last slot is the virtual sink that
    /// every target reaches by paying its alighting cost.
    dist: Vec<f64>,
    prev_node: Vec<u32>,
    prev_edge: Vec<u32>,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
}

impl Search {
    fn new(stations: usize, edges: usize) -> Self {
        Search {
            flags: vec![0; stations],
            mult: vec![1.0; edges],
            dist: vec![f64::INFINITY; stations + 1],
            prev_node: vec![NONE; stations + 1],
            prev_edge: vec![NONE; stations + 1],
            heap: BinaryHeap::with_capacity(stations),
        }
    }

    /// Multi-source Dijkstra from `origin` to any target; returns the stops
    /// and the flat indices of the edges taken. Costs are non-negative, so
    /// their bit patterns order like the numbers; ties go to the lower id,
    /// which makes the result deterministic.
    fn run(
        &mut self,
        n: &Network,
        costs: &ProfileCosts,
        origin: &[StationId],
    ) -> Option<(Vec<StationId>, Vec<usize>)> {
        let sink = self.flags.len();
        self.dist.fill(f64::INFINITY);
        self.prev_node.fill(NONE);
        self.prev_edge.fill(NONE);
        self.heap.clear();
        for &s in origin {
            let c = costs.node[s.ix()];
            if c < self.dist[s.ix()] {
                self.dist[s.ix()] = c;
                self.heap.push(Reverse((c.to_bits(), s.0)));
            }
        }
        let edges = n.all_edges();
        while let Some(Reverse((bits, u))) = self.heap.pop() {
            let c = f64::from_bits(bits);
            let u = u as usize;
            if c > self.dist[u] {
                continue;
            }
            if u == sink {
                return Some(self.path(sink));
            }
            let flags = self.flags[u];
            if flags & TARGET != 0 {
                let total = c + costs.node[u];
                if total < self.dist[sink] {
                    self.dist[sink] = total;
                    self.prev_node[sink] = u as u32;
                    self.heap.push(Reverse((total.to_bits(), sink as u32)));
                }
                continue;
            }
            for e in n.edge_range(StationId(u as u32)) {
                let edge = &edges[e];
                let v = edge.to.ix();
                if let Link::Transfer { .. } = edge.link
                    && (flags & SOURCE != 0 || self.flags[v] & TARGET != 0)
                {
                    // Walking between the origin's (or the destination's)
                    // own platforms is never part of a journey.
                    continue;
                }
                let nc = c + costs.edge[e] * self.mult[e];
                if nc < self.dist[v] {
                    self.dist[v] = nc;
                    self.prev_node[v] = u as u32;
                    self.prev_edge[v] = e as u32;
                    self.heap.push(Reverse((nc.to_bits(), v as u32)));
                }
            }
        }
        None
    }

    fn path(&self, sink: usize) -> (Vec<StationId>, Vec<usize>) {
        let mut stops = Vec::new();
        let mut edges = Vec::new();
        let mut v = self.prev_node[sink];
        while v != NONE {
            stops.push(StationId(v));
            let e = self.prev_edge[v as usize];
            if e == NONE {
                break;
            }
            edges.push(e as usize);
            v = self.prev_node[v as usize];
        }
        stops.reverse();
        edges.reverse();
        (stops, edges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ride_takes_at_least_a_minute() {
        assert_eq!(ride_minutes(100.0), MIN_RIDE_MIN);
        assert_eq!(ride_minutes(1100.0), 2.0);
    }

    #[test]
    fn the_engine_can_be_shared_between_tasks() {
        fn shared<T: Send + Sync>() {}
        shared::<RouteEngine>();
        shared::<Network>();
    }
}
