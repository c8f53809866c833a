//! TEMPORARY stand-in with the engine's agreed API; replaced by the engine branch.
#![allow(clippy::todo, unused_variables, dead_code)]
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DisabilityType {
    PHY,
    VIS,
    AUD,
    ELD,
    NONE,
}

impl std::str::FromStr for DisabilityType {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "PHY" => Ok(Self::PHY),
            "VIS" => Ok(Self::VIS),
            "AUD" => Ok(Self::AUD),
            "ELD" => Ok(Self::ELD),
            "NONE" => Ok(Self::NONE),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StationId(pub u32);
pub struct Station {
    pub id: StationId,
    pub code: String,
    pub name: String,
    pub line: String,
    pub lat: f64,
    pub lon: f64,
}
pub struct Network;
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("bad")]
    Bad,
}
impl Network {
    pub fn embedded() -> Arc<Network> {
        todo!()
    }
    pub fn load_dir(p: &std::path::Path) -> anyhow::Result<Network> {
        todo!()
    }
    pub fn stations(&self) -> &[Station] {
        todo!()
    }
    pub fn station(&self, id: StationId) -> &Station {
        todo!()
    }
    pub fn by_code(&self, code: &str) -> Option<StationId> {
        todo!()
    }
    pub fn resolve(&self, q: &str) -> Result<Vec<StationId>, RouteError> {
        todo!()
    }
    pub fn search(&self, prefix: &str, limit: usize) -> Vec<&Station> {
        todo!()
    }
    pub fn check_location(&self, lat: f64, lon: f64) -> Result<(), LocationError> {
        todo!()
    }
    pub fn nearest_station(&self, lat: f64, lon: f64) -> (StationId, f64) {
        todo!()
    }
}
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("station not found")]
    StationNotFound {
        query: String,
        suggestions: Vec<String>,
    },
    #[error("same")]
    SameStation,
    #[error("no route")]
    NoRoute,
}
pub struct RouteSet {
    pub origin: StationId,
    pub destination: StationId,
    pub disability_type: DisabilityType,
    pub routes: Vec<Route>,
}
#[derive(Debug, Clone)]
pub struct Route {
    pub rank: u8,
    pub stops: Vec<StationId>,
    pub lines: Vec<String>,
    pub total_time_min: f64,
    pub transfers: u32,
    pub transfer_stations: Vec<String>,
    pub distance_m: f64,
    pub score: f64,
}
impl Route {
    pub fn codes(&self, n: &Network) -> Vec<String> {
        todo!()
    }
}
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}
pub struct Profiles;
impl Profiles {
    pub fn embedded() -> Profiles {
        Profiles
    }
    pub fn load(p: &std::path::Path) -> anyhow::Result<Profiles> {
        todo!()
    }
    pub fn get(&self, dt: DisabilityType) -> &Profile {
        todo!()
    }
}
pub struct Profile;
pub struct RouteEngine;
impl RouteEngine {
    pub fn new(network: Arc<Network>, profiles: Profiles, cache_capacity: usize) -> Self {
        RouteEngine
    }
    pub fn routes(
        &self,
        o: &str,
        d: &str,
        dt: DisabilityType,
    ) -> Result<Arc<RouteSet>, RouteError> {
        todo!()
    }
    pub fn routes_from(
        &self,
        from: StationId,
        d: &str,
        dt: DisabilityType,
    ) -> Result<Arc<RouteSet>, RouteError> {
        todo!()
    }
    pub fn route_from_codes(
        &self,
        codes: &[String],
        dt: DisabilityType,
        rank: u8,
    ) -> Result<Route, RouteError> {
        todo!()
    }
    pub fn cache_stats(&self) -> CacheStats {
        todo!()
    }
    pub fn network(&self) -> &Arc<Network> {
        todo!()
    }
    pub fn profiles(&self) -> &Profiles {
        todo!()
    }
}
pub struct TrackerConfig {
    pub arrival_radius_m: f64,
    pub deviation_threshold_m: f64,
    pub max_accuracy_credit_m: f64,
}
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrackState {
    pub furthest_m: f64,
}
pub struct Tracker;
impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        Tracker
    }
    pub fn update(
        &self,
        n: &Network,
        route: &Route,
        profile: &Profile,
        state: &mut TrackState,
        lat: f64,
        lon: f64,
        acc: Option<f64>,
    ) -> Result<TrackOutcome, LocationError> {
        todo!()
    }
}
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
pub struct NavProgress {
    pub current_station: StationId,
    pub next_station: Option<StationId>,
    pub distance_to_next_m: f64,
    pub remaining_stations: u32,
    pub remaining_distance_m: f64,
    pub eta_s: f64,
    pub is_transfer: bool,
    pub transfer_from_line: Option<String>,
    pub transfer_to_line: Option<String>,
    pub progress_percent: f64,
    pub message: String,
}
