//! Navigation requests: the bridge between the wire, the route engine and
//! the route store.
//!
//! Route state lives in the store (Redis in a cluster) as station codes, so
//! a rider who reconnects to another node carries on. Each session keeps
//! the last route it rebuilt from codes, so a stream of `location_update`s
//! costs one store read and one store write, not a route rebuild.

use std::sync::Arc;
use std::time::Duration;

use crate::protocol::{
    ErrorCode, NavigationUpdate, RequestError, RoutePlan, RouteStation, RouteSummary, RouteView,
    ServerMessage, StationRef,
};
use crate::store::{RouteRecord, RouteStore, StoredRoute};
use crate::transit::{
    DisabilityType, Network, Route, RouteEngine, RouteError, RouteSet, StationId, TrackOutcome,
    Tracker,
};

impl From<RouteError> for RequestError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::StationNotFound { suggestions, .. } => {
                let message = if suggestions.is_empty() {
                    "station not found".to_string()
                } else {
                    format!(
                        "station not found; did you mean: {}",
                        suggestions.join(", ")
                    )
                };
                RequestError::Client(ErrorCode::StationNotFound, message)
            }
            RouteError::SameStation => RequestError::client(
                ErrorCode::InvalidParameters,
                "origin and destination are the same station",
            ),
            RouteError::NoRoute => {
                RequestError::client(ErrorCode::RouteNotFound, "no route between these stations")
            }
            RouteError::InvalidRoute => RequestError::client(
                ErrorCode::RouteNotFound,
                "the stored route no longer fits the network; start a new navigation",
            ),
        }
    }
}

/// A route rebuilt from the store, remembered by the session.
struct Cached {
    route_id: String,
    rank: u8,
    route: Arc<Route>,
    /// The watchdog's data-loss epoch when the route was last seen.
    epoch: u64,
}

/// What navigation needs from its node, and nothing more: a session's
/// [`Navigator`] is testable with these four and no node around it.
pub struct NavDeps {
    /// Routes over the network data; shared, with its own LRU cache.
    pub engine: Arc<RouteEngine>,
    /// Progress along a route; stateless apart from its config.
    pub tracker: Tracker,
    /// Where route state lives (Redis in a cluster).
    pub routes: Arc<dyn RouteStore>,
    /// How long an untouched route is kept (`navigation.route_ttl`).
    pub route_ttl: Duration,
    /// The Redis watchdog: tells a route that vanished apart from one
    /// whose state Redis lost.
    pub health: Option<Arc<crate::redis_conn::Health>>,
}

/// One session's navigation: stateless but for the route it last rebuilt.
#[derive(Default)]
pub struct Navigator {
    cached: Option<Cached>,
}

fn station_ref(network: &Network, id: StationId) -> StationRef {
    let s = network.station(id);
    StationRef {
        code: s.code.clone(),
        name: s.name.clone(),
        line: Some(s.line.clone()),
    }
}

fn station_ref_by_code(network: &Network, code: &str) -> StationRef {
    match network.by_code(code) {
        Some(id) => station_ref(network, id),
        None => StationRef {
            code: code.to_string(),
            name: code.to_string(),
            line: None,
        },
    }
}

pub fn route_view(network: &Network, route: &Route) -> RouteView {
    RouteView {
        rank: route.rank,
        stations: route
            .stops
            .iter()
            .map(|id| {
                let s = network.station(*id);
                RouteStation {
                    code: s.code.clone(),
                    name: s.name.clone(),
                    line: s.line.clone(),
                    lat: s.lat,
                    lon: s.lon,
                }
            })
            .collect(),
        lines: route.lines.clone(),
        total_time_min: round1(route.total_time_min),
        transfers: route.transfers,
        transfer_stations: route.transfer_stations.clone(),
        distance_m: route.distance_m.round(),
        score: round1(route.score),
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn check_location(
    network: &Network,
    lat: f64,
    lon: f64,
    accuracy: Option<f64>,
) -> Result<(), RequestError> {
    if let Some(a) = accuracy
        && (!a.is_finite() || !(0.0..=100_000.0).contains(&a))
    {
        return Err(RequestError::client(
            ErrorCode::InvalidLocation,
            "accuracy must be a finite number of metres ≥ 0",
        ));
    }
    network
        .check_location(lat, lon)
        .map_err(|e| RequestError::Client(ErrorCode::InvalidLocation, e.to_string()))
}

fn check_station_query(q: &str) -> Result<(), RequestError> {
    if q.trim().is_empty() || q.chars().count() > 64 {
        return Err(RequestError::client(
            ErrorCode::InvalidParameters,
            "station names must be 1–64 characters",
        ));
    }
    Ok(())
}

impl Navigator {
    fn plan(&mut self, deps: &NavDeps, set: &RouteSet) -> (RoutePlan, RouteRecord) {
        let network = deps.engine.network();
        let route_id = uuid::Uuid::new_v4().simple().to_string();
        let record = RouteRecord {
            route_id: route_id.clone(),
            origin_code: network.station(set.origin).code.clone(),
            destination_code: network.station(set.destination).code.clone(),
            disability_type: set.disability_type,
            routes: Arc::new(
                set.routes
                    .iter()
                    .map(|r| StoredRoute {
                        rank: r.rank,
                        codes: r.codes(network),
                    })
                    .collect(),
            ),
            selected_rank: 1,
            track: Default::default(),
        };
        if let Some(first) = set.routes.first() {
            self.cached = Some(Cached {
                route_id: route_id.clone(),
                rank: first.rank,
                route: Arc::new(first.clone()),
                epoch: Self::epoch(deps),
            });
        }
        let plan = RoutePlan {
            route_id,
            origin: station_ref(network, set.origin),
            destination: station_ref(network, set.destination),
            disability_type: set.disability_type,
            routes: set.routes.iter().map(|r| route_view(network, r)).collect(),
            selected_route_rank: 1,
        };
        (plan, record)
    }

    pub async fn start(
        &mut self,
        deps: &NavDeps,
        user: &str,
        origin: &str,
        destination: &str,
        dt: DisabilityType,
    ) -> Result<ServerMessage, RequestError> {
        check_station_query(origin)?;
        check_station_query(destination)?;
        let set = deps.engine.routes(origin, destination, dt)?;
        if set.routes.is_empty() {
            return Err(RouteError::NoRoute.into());
        }
        let (plan, record) = self.plan(deps, &set);
        deps.routes
            .put(user, record, deps.route_ttl)
            .await
            .map_err(RequestError::store)?;
        tracing::info!(
            event = "navigation_started",
            route_id = %plan.route_id,
            origin = %plan.origin.code,
            destination = %plan.destination.code,
            disability_type = ?dt,
            "route calculated"
        );
        Ok(ServerMessage::RouteCalculated(plan))
    }

    async fn active(&self, deps: &NavDeps, user: &str) -> Result<RouteRecord, RequestError> {
        if let Some(record) = deps.routes.get(user).await.map_err(RequestError::store)? {
            return Ok(record);
        }
        // This session had a route: was it ended, or did Redis lose it?
        if let (Some(cached), Some(health)) = (&self.cached, &deps.health)
            && health.check().await > cached.epoch
        {
            return Err(RequestError::client(
                ErrorCode::StateLost,
                "the server lost your navigation state; send start_navigation again",
            ));
        }
        Err(RequestError::client(
            ErrorCode::NoActiveSession,
            "no active navigation; send start_navigation first",
        ))
    }

    fn epoch(deps: &NavDeps) -> u64 {
        deps.health.as_ref().map_or(0, |h| h.epoch())
    }

    /// The selected route of `record`, from the session cache or rebuilt.
    fn selected(
        &mut self,
        deps: &NavDeps,
        record: &RouteRecord,
    ) -> Result<Arc<Route>, RequestError> {
        if let Some(c) = &self.cached
            && c.route_id == record.route_id
            && c.rank == record.selected_rank
        {
            return Ok(c.route.clone());
        }
        let stored = record
            .routes
            .iter()
            .find(|r| r.rank == record.selected_rank)
            .ok_or_else(|| RequestError::Internal("selected rank missing from record".into()))?;
        let route =
            deps.engine
                .route_from_codes(&stored.codes, record.disability_type, stored.rank)?;
        let route = Arc::new(route);
        self.cached = Some(Cached {
            route_id: record.route_id.clone(),
            rank: record.selected_rank,
            route: route.clone(),
            epoch: Self::epoch(deps),
        });
        Ok(route)
    }

    pub async fn update(
        &mut self,
        deps: &NavDeps,
        user: &str,
        lat: f64,
        lon: f64,
        accuracy: Option<f64>,
        route_id: Option<&str>,
    ) -> Result<ServerMessage, RequestError> {
        let network = deps.engine.network().clone();
        check_location(&network, lat, lon, accuracy)?;
        let mut record = self.active(deps, user).await?;
        if let Some(id) = route_id
            && id != record.route_id
        {
            return Err(RequestError::client(
                ErrorCode::RouteIdMismatch,
                "route_id is not your active route",
            ));
        }
        let route = self.selected(deps, &record)?;
        let profile = deps.engine.profiles().get(record.disability_type);
        let outcome = deps
            .tracker
            .update(
                &network,
                &route,
                profile,
                &mut record.track,
                lat,
                lon,
                accuracy,
            )
            .map_err(|e| RequestError::Client(ErrorCode::InvalidLocation, e.to_string()))?;
        let still_active = deps
            .routes
            .save_progress(
                user,
                &record.route_id,
                record.selected_rank,
                &record.track,
                deps.route_ttl,
            )
            .await
            .map_err(RequestError::store)?;
        if !still_active {
            return Err(RequestError::client(
                ErrorCode::NoActiveSession,
                "navigation ended meanwhile",
            ));
        }
        let route_id = record.route_id;
        Ok(match outcome {
            TrackOutcome::Progress(p) => ServerMessage::NavigationUpdate(NavigationUpdate {
                route_id,
                current_station: station_ref(&network, p.current_station),
                next_station: p.next_station.map(|s| station_ref(&network, s)),
                distance_to_next_m: p.distance_to_next_m.round(),
                remaining_stations: p.remaining_stations,
                remaining_distance_m: p.remaining_distance_m.round(),
                eta_s: p.eta_s.round(),
                is_transfer: p.is_transfer,
                transfer_from_line: p.transfer_from_line,
                transfer_to_line: p.transfer_to_line,
                progress_percent: round1(p.progress_percent),
                message: p.message,
            }),
            TrackOutcome::Deviation {
                nearest_station,
                distance_from_route_m,
                suggested_action,
            } => ServerMessage::RouteDeviation {
                route_id,
                nearest_station: station_ref(&network, nearest_station),
                distance_from_route_m: distance_from_route_m.round(),
                suggested_action,
            },
            TrackOutcome::Arrival { destination } => ServerMessage::Arrival {
                route_id,
                destination: station_ref(&network, destination),
            },
        })
    }

    pub async fn switch(
        &mut self,
        deps: &NavDeps,
        user: &str,
        target_rank: u8,
    ) -> Result<ServerMessage, RequestError> {
        let mut record = self.active(deps, user).await?;
        if !record.routes.iter().any(|r| r.rank == target_rank) {
            return Err(RequestError::Client(
                ErrorCode::InvalidRouteRank,
                format!("target_rank must be between 1 and {}", record.routes.len()),
            ));
        }
        record.selected_rank = target_rank;
        record.track = Default::default();
        let route = self.selected(deps, &record)?;
        let saved = deps
            .routes
            .save_progress(
                user,
                &record.route_id,
                target_rank,
                &record.track,
                deps.route_ttl,
            )
            .await
            .map_err(RequestError::store)?;
        if !saved {
            return Err(RequestError::client(
                ErrorCode::NoActiveSession,
                "navigation ended meanwhile",
            ));
        }
        Ok(ServerMessage::RouteSwitched {
            route_id: record.route_id,
            selected_route_rank: target_rank,
            route: route_view(deps.engine.network(), &route),
        })
    }

    pub async fn recalculate(
        &mut self,
        deps: &NavDeps,
        user: &str,
        lat: f64,
        lon: f64,
        dt: Option<DisabilityType>,
    ) -> Result<ServerMessage, RequestError> {
        let network = deps.engine.network().clone();
        check_location(&network, lat, lon, None)?;
        let record = self.active(deps, user).await?;
        let dt = dt.unwrap_or(record.disability_type);
        let (from, _) = network.nearest_station(lat, lon);
        let set = match deps.engine.routes_from(from, &record.destination_code, dt) {
            Err(RouteError::SameStation) => {
                return Err(RequestError::client(
                    ErrorCode::InvalidParameters,
                    "you are at the destination's station already",
                ));
            }
            other => other?,
        };
        let (plan, new_record) = self.plan(deps, &set);
        deps.routes
            .put(user, new_record, deps.route_ttl)
            .await
            .map_err(RequestError::store)?;
        tracing::info!(event = "route_recalculated", route_id = %plan.route_id, "route recalculated");
        Ok(ServerMessage::RouteRecalculated(plan))
    }

    pub async fn end(&mut self, deps: &NavDeps, user: &str) -> Result<ServerMessage, RequestError> {
        let record = self.active(deps, user).await?;
        deps.routes
            .remove(user, &record.route_id)
            .await
            .map_err(RequestError::store)?;
        self.cached = None;
        tracing::info!(event = "navigation_ended", route_id = %record.route_id, "navigation ended");
        Ok(ServerMessage::NavigationEnded {
            route_id: record.route_id,
        })
    }

    /// The watched rider's active route, for `watching`.
    pub async fn summary(
        &self,
        deps: &NavDeps,
        rider: &str,
    ) -> Result<Option<RouteSummary>, RequestError> {
        let network = deps.engine.network();
        let record = deps.routes.get(rider).await.map_err(RequestError::store)?;
        Ok(record.map(|r| RouteSummary {
            origin: station_ref_by_code(network, &r.origin_code),
            destination: station_ref_by_code(network, &r.destination_code),
            disability_type: r.disability_type,
            selected_route_rank: r.selected_rank,
            route_id: r.route_id,
        }))
    }
}
