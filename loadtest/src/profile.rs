//! Load profiles: TOML files in `config/loadtest/` (a profile is a file,
//! not code).
//!
//! A profile names its stages (cumulative end time, target users, spawn
//! rate), the rider behaviour (intervals, timeouts, shares, drift, weights)
//! and the thresholds the run must meet. `stress` profiles describe a
//! staircase instead of a table and are expanded into stages here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The 12 stations the reference system's WebSocket load test sends its
/// riders between (its test configuration is not part of this repository;
/// the list is the whole of what is taken from it).
pub(crate) const KINDMAP_STATIONS: [&str; 12] = [
    "강남",
    "홍대입구",
    "잠실",
    "구로디지털단지",
    "서울",
    "신림",
    "삼성",
    "고속터미널",
    "신도림",
    "선릉",
    "사당",
    "가산디지털단지",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    stage: Vec<StageSpec>,
    stress: Option<StressSpec>,
    #[serde(default)]
    rider: RiderSpec,
    #[serde(default)]
    thresholds: Thresholds,
}

/// One row of a stage table, as written in the file (unscaled).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageSpec {
    name: String,
    /// Cumulative end time of the stage, seconds from the start.
    end_s: f64,
    /// Users (riders) to reach and hold in this stage.
    users: u64,
    /// Users started (or stopped) per second; omitted = as fast as the
    /// previous stage, or all at once for the first.
    spawn_rate: Option<f64>,
}

/// A staircase: `start_users`, then `+step_users` every `step_interval_s`
/// until `max_users` or until a threshold breaks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StressSpec {
    pub(crate) start_users: u64,
    pub(crate) step_users: u64,
    pub(crate) step_interval_s: f64,
    pub(crate) max_users: u64,
    pub(crate) spawn_rate: f64,
    /// Stop the run at the end of the first step whose thresholds fail.
    #[serde(default = "yes")]
    pub(crate) stop_on_break: bool,
}

fn yes() -> bool {
    true
}

/// How each virtual user behaves. Defaults are the rider of the
/// specification (README, "The rider").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RiderSpec {
    /// Seconds between two timer-driven requests, uniform in [lo, hi].
    pub(crate) update_interval_s: [f64; 2],
    pub(crate) start_timeout_s: f64,
    pub(crate) update_timeout_s: f64,
    pub(crate) connect_timeout_s: f64,
    pub(crate) login_timeout_s: f64,
    /// Share of riders with a guardian session that watches them.
    pub(crate) guardian_share: f64,
    /// Share of riders that drift far off their route.
    pub(crate) deviating_share: f64,
    /// Share of riders that navigate (start a route, send updates). The
    /// others open a session and keep it alive (answering the node's
    /// pings) without a request, as a phone with the app open and no
    /// trip does: the idle sessions of a city-sized run. A rider with a
    /// guardian always navigates, on top of this share.
    pub(crate) navigating_share: f64,
    /// Relative weights of the timer-driven requests.
    pub(crate) mix: Mix,
    /// Travel speed along the route in m/s before the time scale
    /// (about a Seoul subway train's average, stops included).
    pub(crate) speed_mps: f64,
    /// GPS drift added to every fix, metres, uniform in [lo, hi], in a
    /// uniform random direction.
    pub(crate) gps_drift_m: [f64; 2],
    /// `accuracy` field of every fix, uniform in [lo, hi].
    pub(crate) accuracy_m: [f64; 2],
    /// How far a deviating rider wanders off the route, metres.
    pub(crate) deviation_m: [f64; 2],
    /// Weights of the disability types sent with `start_navigation`.
    pub(crate) disability_weights: BTreeMap<String, f64>,
    /// Stations origins and destinations are drawn from.
    pub(crate) stations: Vec<String>,
    /// A GPS trace (CSV `t,lat,lon` or GPX) replacing the synthetic walk;
    /// relative paths are relative to the profile file.
    pub(crate) trace: Option<PathBuf>,
    /// How long a guardian waits after its rider stopped for the last
    /// peer events still in flight.
    pub(crate) fanout_grace_s: f64,
    /// Share of riders, and separately of guardians, that go through
    /// tunnels: the network vanishes (no reading, no writing, no close
    /// frame), comes back, and the user reconnects with jittered backoff;
    /// a rider then sends `resume` and carries on with its route, a
    /// guardian sends `watch` with `since`.
    pub(crate) tunnel_share: f64,
    /// How long a tunnel lasts, seconds, uniform in [lo, hi] (time-scaled).
    pub(crate) tunnel_s: [f64; 2],
    /// Time between tunnels, seconds, uniform in [lo, hi] (time-scaled).
    pub(crate) tunnel_every_s: [f64; 2],
}

/// Relative weights of `start_navigation` and `location_update` ticks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Mix {
    pub(crate) start_navigation: f64,
    pub(crate) location_update: f64,
}

impl Default for RiderSpec {
    fn default() -> Self {
        RiderSpec {
            update_interval_s: [3.0, 5.0],
            start_timeout_s: 10.0,
            update_timeout_s: 3.0,
            connect_timeout_s: 10.0,
            login_timeout_s: 30.0,
            guardian_share: 0.10,
            deviating_share: 0.02,
            navigating_share: 1.0,
            mix: Mix {
                start_navigation: 1.0,
                location_update: 10.0,
            },
            speed_mps: 10.0,
            gps_drift_m: [10.0, 50.0],
            accuracy_m: [10.0, 50.0],
            deviation_m: [1500.0, 3000.0],
            disability_weights: [("PHY", 40.0), ("VIS", 30.0), ("ELD", 20.0), ("AUD", 10.0)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            stations: KINDMAP_STATIONS.iter().map(|s| s.to_string()).collect(),
            trace: None,
            fanout_grace_s: 2.0,
            tunnel_share: 0.0,
            tunnel_s: [10.0, 60.0],
            tunnel_every_s: [30.0, 120.0],
        }
    }
}

/// Pass criteria. Defaults are the navcast column of the specification
/// (README, "Pass criteria").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Thresholds {
    /// Share of WebSocket connects that must succeed (1.0 = all).
    pub(crate) connect_success_min: f64,
    pub(crate) connect_p95_ms: Option<f64>,
    pub(crate) start_navigation_p95_ms: Option<f64>,
    pub(crate) location_update_p95_ms: Option<f64>,
    pub(crate) login_p95_ms: Option<f64>,
    pub(crate) fanout_p95_ms: Option<f64>,
    /// p95 from the network's return (a tunnel's end, or the moment the
    /// connection was lost) to `watching` / `resumed`.
    pub(crate) reconnect_p95_ms: Option<f64>,
    /// The same at p99 (the reconnect storm's criterion).
    pub(crate) reconnect_p99_ms: Option<f64>,
    /// Reconnects that did not end in `watching` / `resumed` with the
    /// route still there: not back before the end, resume refused or timed
    /// out, route lost. `None` disables the criterion.
    pub(crate) reconnect_failures_max: Option<u64>,
    /// Failed requests / requests; 0 means no failure at all.
    pub(crate) error_rate_max: f64,
    /// Lost peer events (gaps in `seq`, or fewer received than published).
    pub(crate) lost_peer_events_max: u64,
    /// Each node's share of the connections may differ from an even share
    /// by at most this fraction; `None` disables the criterion.
    pub(crate) spread_tolerance: Option<f64>,
    /// The spread is judged only when an even share is at least this many
    /// connections: with fewer, ±15 % is less than a handful of users.
    pub(crate) spread_min_share: f64,
    /// Soak: the last stage's p95 may be at most this multiple of the
    /// first stage's (location_update and start_navigation).
    pub(crate) latency_drift_max: Option<f64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            connect_success_min: 1.0,
            connect_p95_ms: Some(50.0),
            start_navigation_p95_ms: Some(50.0),
            location_update_p95_ms: Some(20.0),
            login_p95_ms: None,
            reconnect_p95_ms: None,
            reconnect_p99_ms: None,
            reconnect_failures_max: None,
            fanout_p95_ms: None,
            error_rate_max: 0.0,
            lost_peer_events_max: 0,
            spread_tolerance: Some(0.15),
            spread_min_share: 30.0,
            latency_drift_max: None,
        }
    }
}

/// One stage after time scaling: seconds of wall-clock time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stage {
    pub(crate) name: String,
    pub(crate) start_s: f64,
    pub(crate) end_s: f64,
    pub(crate) users: u64,
    /// Users per second; `None` = all at once.
    pub(crate) spawn_rate: Option<f64>,
}

/// A profile ready to run.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) stages: Vec<Stage>,
    pub(crate) rider: RiderSpec,
    pub(crate) thresholds: Thresholds,
    pub(crate) stress: Option<StressSpec>,
    pub(crate) time_scale: f64,
    /// Where the profile was read from (for relative paths).
    pub(crate) dir: PathBuf,
}

impl Profile {
    pub(crate) fn load(path: &Path) -> anyhow::Result<Profile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading profile {}", path.display()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Profile::parse(&text, dir).with_context(|| format!("profile {}", path.display()))
    }

    pub(crate) fn parse(text: &str, dir: PathBuf) -> anyhow::Result<Profile> {
        let file: ProfileFile = toml::from_str(text)?;
        let stages = match (&file.stress, file.stage.is_empty()) {
            (Some(_), false) => bail!("a profile has either [[stage]] rows or a [stress] table"),
            (None, true) => bail!("a profile needs [[stage]] rows or a [stress] table"),
            (Some(s), true) => stress_stages(s)?,
            (None, false) => {
                let mut out = Vec::new();
                let mut start = 0.0;
                for s in &file.stage {
                    if s.end_s <= start {
                        bail!("stage {:?}: end_s must increase", s.name);
                    }
                    if let Some(r) = s.spawn_rate
                        && (r.is_nan() || r <= 0.0)
                    {
                        bail!("stage {:?}: spawn_rate must be positive", s.name);
                    }
                    out.push(Stage {
                        name: s.name.clone(),
                        start_s: start,
                        end_s: s.end_s,
                        users: s.users,
                        spawn_rate: s.spawn_rate,
                    });
                    start = s.end_s;
                }
                out
            }
        };
        let r = &file.rider;
        if !(r.update_interval_s[0] > 0.0 && r.update_interval_s[1] >= r.update_interval_s[0]) {
            bail!("rider.update_interval_s must be [lo, hi] with 0 < lo <= hi");
        }
        let range_ok = |[lo, hi]: [f64; 2]| lo > 0.0 && hi >= lo;
        if !((0.0..=1.0).contains(&r.tunnel_share)
            && range_ok(r.tunnel_s)
            && range_ok(r.tunnel_every_s))
        {
            bail!(
                "rider.tunnel_share must be in [0, 1], tunnel_s and tunnel_every_s [lo, hi] with 0 < lo <= hi"
            );
        }
        if !(0.0..=1.0).contains(&r.guardian_share)
            || !(0.0..=1.0).contains(&r.deviating_share)
            || !(0.0..=1.0).contains(&r.navigating_share)
        {
            bail!("rider shares must be within 0..1");
        }
        if r.stations.len() < 2 {
            bail!("rider.stations needs at least two stations");
        }
        for key in r.disability_weights.keys() {
            key.parse::<navcast::protocol::DisabilityType>()
                .map_err(|_| anyhow::anyhow!("unknown disability type {key:?}"))?;
        }
        Ok(Profile {
            name: file.name,
            description: file.description,
            stages,
            rider: file.rider,
            thresholds: file.thresholds,
            stress: file.stress,
            time_scale: 1.0,
            dir,
        })
    }

    /// Applies `KEY=VALUE` overrides to the thresholds (`none` unsets an
    /// optional one).
    pub(crate) fn with_thresholds(mut self, overrides: &[String]) -> anyhow::Result<Profile> {
        for o in overrides {
            let Some((k, v)) = o.split_once('=') else {
                bail!("--threshold {o:?}: expected KEY=VALUE");
            };
            let (k, v) = (k.trim(), v.trim());
            let opt = if v.eq_ignore_ascii_case("none") {
                None
            } else {
                Some(
                    v.parse::<f64>()
                        .map_err(|_| anyhow::anyhow!("--threshold {o:?}: not a number"))?,
                )
            };
            let need = || opt.ok_or_else(|| anyhow::anyhow!("--threshold {k} cannot be none"));
            let t = &mut self.thresholds;
            match k {
                "connect_success_min" => t.connect_success_min = need()?,
                "connect_p95_ms" => t.connect_p95_ms = opt,
                "start_navigation_p95_ms" => t.start_navigation_p95_ms = opt,
                "location_update_p95_ms" => t.location_update_p95_ms = opt,
                "login_p95_ms" => t.login_p95_ms = opt,
                "fanout_p95_ms" => t.fanout_p95_ms = opt,
                "reconnect_p95_ms" => t.reconnect_p95_ms = opt,
                "reconnect_p99_ms" => t.reconnect_p99_ms = opt,
                "reconnect_failures_max" => t.reconnect_failures_max = opt.map(|v| v as u64),
                "error_rate_max" => t.error_rate_max = need()?,
                "lost_peer_events_max" => t.lost_peer_events_max = need()? as u64,
                "spread_tolerance" => t.spread_tolerance = opt,
                "spread_min_share" => t.spread_min_share = need()?,
                "latency_drift_max" => t.latency_drift_max = opt,
                _ => bail!("--threshold: unknown threshold {k:?}"),
            }
        }
        Ok(self)
    }

    /// The most users any stage asks for.
    pub(crate) fn peak_users(&self) -> u64 {
        self.stages.iter().map(|s| s.users).max().unwrap_or(0)
    }

    /// Rescales the stages so that the peak is `users` (spawn rates in
    /// proportion). A stress profile's staircase is cut at `users`.
    pub(crate) fn with_users(mut self, users: u64) -> anyhow::Result<Profile> {
        if let Some(stress) = &mut self.stress {
            stress.max_users = users;
            self.stages = stress_stages(stress)?;
            return Ok(self);
        }
        let peak = self.peak_users().max(1) as f64;
        let f = users as f64 / peak;
        for s in &mut self.stages {
            s.users = (s.users as f64 * f).round() as u64;
            s.spawn_rate = s.spawn_rate.map(|r| r * f);
        }
        Ok(self)
    }

    /// Compresses (or stretches) time: durations times `scale`, spawn
    /// rates divided by it, so every stage still reaches its users.
    pub(crate) fn with_time_scale(mut self, scale: f64) -> anyhow::Result<Profile> {
        if !(scale > 0.0 && scale.is_finite()) {
            bail!("--time-scale must be a positive number");
        }
        for s in &mut self.stages {
            s.start_s *= scale;
            s.end_s *= scale;
            s.spawn_rate = s.spawn_rate.map(|r| r / scale);
        }
        self.time_scale *= scale;
        Ok(self)
    }

    pub(crate) fn duration_s(&self) -> f64 {
        self.stages.last().map(|s| s.end_s).unwrap_or(0.0)
    }

    /// The stage running at `t` seconds (the last one after the end).
    pub(crate) fn stage_at(&self, t: f64) -> usize {
        self.stages
            .iter()
            .position(|s| t < s.end_s)
            .unwrap_or(self.stages.len().saturating_sub(1))
    }

    /// The trace file, resolved against the profile's directory.
    pub(crate) fn trace_path(&self) -> Option<PathBuf> {
        self.rider.trace.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                self.dir.join(p)
            }
        })
    }
}

fn stress_stages(s: &StressSpec) -> anyhow::Result<Vec<Stage>> {
    if s.step_users == 0 || s.step_interval_s <= 0.0 || s.spawn_rate <= 0.0 {
        bail!("stress: step_users, step_interval_s and spawn_rate must be positive");
    }
    let mut out = Vec::new();
    let mut users = s.start_users.max(1).min(s.max_users.max(1));
    let mut t = 0.0;
    loop {
        out.push(Stage {
            name: format!("step {users}"),
            start_s: t,
            end_s: t + s.step_interval_s,
            users,
            spawn_rate: Some(s.spawn_rate),
        });
        t += s.step_interval_s;
        if users >= s.max_users || out.len() >= 10_000 {
            break;
        }
        users = (users + s.step_users).min(s.max_users);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: &str = r#"
name = "t"
[[stage]]
name = "a"
end_s = 120
users = 100
spawn_rate = 1
[[stage]]
name = "b"
end_s = 300
users = 300
spawn_rate = 2
[[stage]]
name = "c"
end_s = 400
users = 300
"#;

    #[test]
    fn scales_time_and_users() {
        let p = Profile::parse(STEP, PathBuf::new()).unwrap();
        assert_eq!(p.peak_users(), 300);
        let p = p.with_time_scale(0.1).unwrap();
        assert!((p.duration_s() - 40.0).abs() < 1e-9);
        assert_eq!(p.stages[1].spawn_rate, Some(20.0));
        let p = p.with_users(30).unwrap();
        assert_eq!(p.stages[0].users, 10);
        let p = p
            .with_thresholds(&[
                "connect_p95_ms=200".into(),
                "location_update_p95_ms=none".into(),
            ])
            .unwrap();
        assert_eq!(p.thresholds.connect_p95_ms, Some(200.0));
        assert_eq!(p.thresholds.location_update_p95_ms, None);
        assert!(p.clone().with_thresholds(&["bogus=1".into()]).is_err());
        assert_eq!(p.stages[2].users, 30);
        assert!((p.stages[1].spawn_rate.unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(p.stage_at(0.0), 0);
        assert_eq!(p.stage_at(12.0), 1);
        assert_eq!(p.stage_at(1e9), 2);
    }

    #[test]
    fn stress_expands_to_a_staircase() {
        let text = r#"
name = "s"
[stress]
start_users = 10
step_users = 20
step_interval_s = 30
max_users = 50
spawn_rate = 5
"#;
        let p = Profile::parse(text, PathBuf::new()).unwrap();
        let users: Vec<u64> = p.stages.iter().map(|s| s.users).collect();
        assert_eq!(users, vec![10, 30, 50]);
        assert_eq!(p.with_users(30).unwrap().stages.len(), 2);
    }

    #[test]
    fn rejects_bad_profiles() {
        assert!(Profile::parse("name = \"x\"", PathBuf::new()).is_err());
        let bad = STEP.replace("users = 100", "users = 100\nbogus = 1");
        assert!(Profile::parse(&bad, PathBuf::new()).is_err());
    }
}
