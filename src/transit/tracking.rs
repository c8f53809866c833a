//! Progress tracking: turns a GPS fix into where the rider is on a route.
//!
//! The fix is snapped onto the route's polyline (the straight segments
//! between consecutive stops, so a train between stations is placed between
//! them, not at the nearest one). How far along the polyline the rider has
//! come is kept in a small serialisable [`TrackState`] that the node stores
//! with the route; progress never goes backwards, so GPS jitter cannot make
//! the remaining distance grow. A fix farther from the route than the
//! threshold (widened by the fix's reported accuracy, up to a cap) is a
//! deviation; a fix near the destination is an arrival.

use serde::{Deserialize, Serialize};

use super::routing::{RIDE_M_PER_MIN, Route};
use super::{LocationError, Network, Profile, StationId, geo};

/// When a fix lies about as close to several parts of the route (where the
/// route doubles back at a transfer, or passes near itself), continuity
/// decides among those within this many metres (plus the fix's accuracy
/// credit) of the closest.
const SNAP_TIE_M: f64 = 25.0;

/// Metres of off-route distance that one metre of along-route gap from the
/// furthest position is worth when choosing among close parts of the route.
const CONTINUITY_WEIGHT: f64 = 0.05;

/// The continuity cost of a snapped position: the gap ahead of the furthest
/// position (up to 10 m behind counts as none), and a gap behind three times
/// over, because progress does not go backwards.
fn continuity_cost(along: f64, furthest: f64) -> f64 {
    let gap = if along >= furthest - 10.0 {
        (along - furthest).max(0.0)
    } else {
        3.0 * (furthest - along)
    };
    CONTINUITY_WEIGHT * gap
}

/// Tracker thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrackerConfig {
    /// A fix this close to the destination (metres) is an arrival.
    pub arrival_radius_m: f64,
    /// A fix farther than this from the route (metres) is a deviation.
    pub deviation_threshold_m: f64,
    /// At most this much of a fix's reported accuracy (metres) is added to
    /// the deviation threshold, so a vague fix is not taken as a deviation
    /// but a wildly vague one cannot hide one.
    pub max_accuracy_credit_m: f64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            arrival_radius_m: 150.0,
            deviation_threshold_m: 400.0,
            max_accuracy_credit_m: 100.0,
        }
    }
}

/// Per-route tracking state, stored by the node alongside the route.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TrackState {
    /// The furthest distance along the route's polyline reached, metres.
    pub along_m: f64,
    /// Set once the rider has arrived.
    pub arrived: bool,
    /// Fixes processed for this route.
    pub updates: u64,
}

/// Where the rider is on the route.
#[derive(Debug, Clone, PartialEq)]
pub struct NavProgress {
    /// The last stop passed (the origin before the first one).
    pub current_station: StationId,
    /// The stop ahead; `None` at the end of the route.
    pub next_station: Option<StationId>,
    pub distance_to_next_m: f64,
    /// Stations still ahead, counting the destination; a transfer's two
    /// line-stations count once.
    pub remaining_stations: u32,
    pub remaining_distance_m: f64,
    /// Estimated seconds to the destination.
    pub eta_s: f64,
    /// The rider is changing lines, or must at the next stop.
    pub is_transfer: bool,
    pub transfer_from_line: Option<String>,
    pub transfer_to_line: Option<String>,
    pub progress_percent: f64,
    /// A sentence for the rider.
    pub message: String,
}

/// The result of one fix.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackOutcome {
    Progress(NavProgress),
    Deviation {
        nearest_station: StationId,
        distance_from_route_m: f64,
        suggested_action: String,
    },
    Arrival {
        destination: StationId,
    },
}

/// Tracks riders along routes; holds only configuration, so one tracker
/// serves every session.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracker {
    cfg: TrackerConfig,
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        Tracker { cfg }
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    /// Processes one fix against `route`, updating `state`.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        n: &Network,
        route: &Route,
        profile: &Profile,
        state: &mut TrackState,
        lat: f64,
        lon: f64,
        accuracy_m: Option<f64>,
    ) -> Result<TrackOutcome, LocationError> {
        n.check_location(lat, lon)?;
        let credit = match accuracy_m {
            None => 0.0,
            Some(a) if a.is_finite() && a >= 0.0 => a.min(self.cfg.max_accuracy_credit_m),
            Some(_) => return Err(LocationError::InvalidAccuracy),
        };
        state.updates += 1;
        let stops = &route.stops;
        let destination = *stops.last().expect("a route has stops");
        // A station complex has one platform per line, some hundreds of
        // metres apart: being near any of them is being at the destination.
        let near_destination = n.complex_of(destination).into_iter().any(|id| {
            let s = n.station(id);
            geo::haversine_m(lat, lon, s.lat, s.lon) <= self.cfg.arrival_radius_m
        });
        if state.arrived || near_destination {
            state.arrived = true;
            state.along_m = route.polyline_length_m();
            return Ok(TrackOutcome::Arrival { destination });
        }

        // Snap onto the polyline: project onto every segment, then pick
        // among the parts of the route about as close as the closest one
        // (within the fix's own uncertainty); there continuity with the
        // rider's furthest position decides.
        let proj = geo::LocalProjection::new(lat, lon);
        let mut candidates: Vec<(f64, f64)> = Vec::with_capacity(route.segments.len());
        let mut prev = {
            let s = n.station(stops[0]);
            proj.project(s.lat, s.lon)
        };
        for (seg, &to) in route.segments.iter().zip(&stops[1..]) {
            let s = n.station(to);
            let next = proj.project(s.lat, s.lon);
            let (t, d) = geo::project_on_segment((0.0, 0.0), prev, next);
            candidates.push((d, seg.start_m + t * seg.len_m));
            prev = next;
        }
        let closest = candidates.iter().map(|c| c.0).fold(f64::INFINITY, f64::min);
        let window = closest + SNAP_TIE_M + credit;
        let best = candidates
            .iter()
            .filter(|c| c.0 <= window)
            .min_by(|a, b| {
                let score = |c: &(f64, f64)| c.0 + continuity_cost(c.1, state.along_m);
                score(a).total_cmp(&score(b))
            })
            .copied();
        let (off_route_m, along) = match best {
            Some((_, along)) => (closest, along),
            None => {
                let s = n.station(stops[0]);
                (geo::haversine_m(lat, lon, s.lat, s.lon), 0.0)
            }
        };
        if off_route_m > self.cfg.deviation_threshold_m + credit {
            let (nearest, _) = n.nearest_station(lat, lon);
            let ns = n.station(nearest);
            return Ok(TrackOutcome::Deviation {
                nearest_station: nearest,
                distance_from_route_m: off_route_m.round(),
                suggested_action: format!(
                    "You are {:.0} m away from your route. Go to {} station ({}) and recalculate the route from there.",
                    off_route_m, ns.name, ns.line
                ),
            });
        }

        state.along_m = state.along_m.max(along);
        Ok(TrackOutcome::Progress(self.progress(
            n,
            route,
            profile,
            state.along_m,
        )))
    }

    fn progress(&self, n: &Network, route: &Route, profile: &Profile, pos: f64) -> NavProgress {
        let stops = &route.stops;
        let segs = &route.segments;
        let total = route.polyline_length_m();
        // The segment the rider is on: the last one starting at or before pos.
        let j = segs
            .iter()
            .rposition(|s| s.start_m <= pos)
            .unwrap_or(0)
            .min(segs.len().saturating_sub(1));
        let seg = segs.get(j);
        let end_j = seg.map_or(0.0, |s| s.start_m + s.len_m);
        let (current, next, distance_to_next) = match seg {
            Some(_) if pos >= end_j => (stops[j + 1], stops.get(j + 2).copied(), 0.0),
            Some(_) => (stops[j], Some(stops[j + 1]), end_j - pos),
            None => (stops[0], None, 0.0),
        };
        let next_ix = if seg.is_some() && pos >= end_j {
            j + 2
        } else {
            j + 1
        };

        // Stations ahead (from the next stop on), a transfer counting once.
        let remaining_stations = (next_ix..stops.len())
            .filter(|&k| segs[k - 1].transfer_walk_m.is_none())
            .count() as u32;

        // Time ahead: the rest of the current segment, then whole segments.
        let mut eta_min = 0.0;
        for (k, s) in segs.iter().enumerate().skip(j) {
            let left = if k == j && s.len_m > 0.0 {
                ((s.start_m + s.len_m - pos) / s.len_m).clamp(0.0, 1.0)
            } else {
                1.0
            };
            let full = match s.transfer_walk_m {
                Some(w) => profile.walk_minutes(w),
                None => (s.len_m / RIDE_M_PER_MIN).max(super::routing::MIN_RIDE_MIN),
            };
            eta_min += left * full;
        }

        // Transfer: walking one now, or one waits at the next stop.
        let walking = seg.is_some_and(|s| s.transfer_walk_m.is_some() && pos < end_j);
        let transfer_at = if walking {
            Some(j)
        } else {
            segs.get(next_ix)
                .filter(|s| s.transfer_walk_m.is_some())
                .map(|_| next_ix)
        };
        let (from_line, to_line) = match transfer_at {
            Some(k) => (
                Some(n.station(stops[k]).line.clone()),
                Some(n.station(stops[k + 1]).line.clone()),
            ),
            None => (None, None),
        };

        let message = match (transfer_at, next) {
            (Some(k), _) => {
                let at = n.station(stops[k]);
                let mut m = format!(
                    "Transfer at {} from {} to {}.",
                    at.name,
                    at.line,
                    n.station(stops[k + 1]).line
                );
                if !profile.hint.is_empty() {
                    m.push(' ');
                    m.push_str(&profile.hint);
                }
                m
            }
            (None, Some(nx)) if nx == *stops.last().expect("a route has stops") => {
                format!("Next stop is your destination, {}.", n.station(nx).name)
            }
            (None, Some(nx)) => {
                let s = n.station(nx);
                format!(
                    "Next: {} ({}), {:.0} m. {} stations to go.",
                    s.name, s.line, distance_to_next, remaining_stations
                )
            }
            (None, None) => "You are at the end of the route.".to_owned(),
        };

        NavProgress {
            current_station: current,
            next_station: next,
            distance_to_next_m: distance_to_next.max(0.0).round(),
            remaining_stations,
            remaining_distance_m: (total - pos).max(0.0).round(),
            eta_s: (eta_min * 60.0).round(),
            is_transfer: transfer_at.is_some(),
            transfer_from_line: from_line,
            transfer_to_line: to_line,
            progress_percent: if total > 0.0 {
                ((pos / total * 1000.0).round() / 10.0).clamp(0.0, 100.0)
            } else {
                0.0
            },
            message,
        }
    }
}
