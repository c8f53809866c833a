//! Progress tracking on real routes: snapping between stations, transfer
//! hints, arrival, deviation (with GPS accuracy), invalid fixes, and the
//! property that progress never goes backwards along a walked route.

use std::sync::Arc;

use navcast::transit::geo::{LocalProjection, haversine_m};
use navcast::transit::{
    DisabilityType, LocationError, NavProgress, Network, Profiles, Route, RouteEngine, StationId,
    TrackOutcome, TrackState, Tracker, TrackerConfig,
};
use proptest::prelude::*;

fn setup() -> (Arc<Network>, RouteEngine, Tracker) {
    let n = Network::embedded();
    let e = RouteEngine::new(n.clone(), Profiles::embedded(), 0);
    (n, e, Tracker::new(TrackerConfig::default()))
}

fn route(e: &RouteEngine, o: &str, d: &str, t: DisabilityType) -> Route {
    e.routes(o, d, t).unwrap().routes[0].clone()
}

/// The point at fraction `t` of the segment from stop `i` to stop `i + 1`,
/// moved `off_m` metres to the left of the direction of travel.
fn point_on(n: &Network, r: &Route, i: usize, t: f64, off_m: f64) -> (f64, f64) {
    let (a, b) = (n.station(r.stops[i]), n.station(r.stops[i + 1]));
    let p = LocalProjection::new(a.lat, a.lon);
    let (bx, by) = p.project(b.lat, b.lon);
    // A transfer between platforms at the same coordinates has no direction.
    let len = (bx * bx + by * by).sqrt().max(1e-9);
    let (x, y) = (bx * t - by / len * off_m, by * t + bx / len * off_m);
    // Invert the projection (degrees per metre at a's latitude).
    let (_, one_north) = p.project(a.lat + 1.0, a.lon);
    let (one_east, _) = p.project(a.lat, a.lon + 1.0);
    (a.lat + y / one_north, a.lon + x / one_east)
}

/// The point of the route's polyline `along_m` metres from its start.
fn point_at(n: &Network, r: &Route, along_m: f64) -> (f64, f64) {
    let mut start = 0.0;
    for w in r.stops.windows(2) {
        let (a, b) = (n.station(w[0]), n.station(w[1]));
        let len = haversine_m(a.lat, a.lon, b.lat, b.lon);
        if along_m <= start + len {
            let t = if len > 0.0 {
                ((along_m - start) / len).clamp(0.0, 1.0)
            } else {
                0.0
            };
            return (a.lat + t * (b.lat - a.lat), a.lon + t * (b.lon - a.lon));
        }
        start += len;
    }
    let last = n.station(*r.stops.last().unwrap());
    (last.lat, last.lon)
}

fn progress(o: TrackOutcome) -> NavProgress {
    match o {
        TrackOutcome::Progress(p) => p,
        other => panic!("expected progress, got {other:?}"),
    }
}

#[test]
fn a_fix_between_stations_snaps_onto_the_segment() {
    let (n, e, tr) = setup();
    let r = route(&e, "강남", "홍대입구", DisabilityType::Physical);
    let p = e.profiles().get(DisabilityType::Physical);
    let mut st = TrackState::default();
    let (lat, lon) = point_on(&n, &r, 2, 0.4, 30.0);
    let pr = progress(tr.update(&n, &r, p, &mut st, lat, lon, Some(15.0)).unwrap());
    assert_eq!(pr.current_station, r.stops[2]);
    assert_eq!(pr.next_station, Some(r.stops[3]));
    let (a, b) = (n.station(r.stops[2]), n.station(r.stops[3]));
    let seg = haversine_m(a.lat, a.lon, b.lat, b.lon);
    assert!(
        (pr.distance_to_next_m - 0.6 * seg).abs() < 5.0,
        "{} vs {}",
        pr.distance_to_next_m,
        0.6 * seg
    );
    assert_eq!(pr.remaining_stations as usize, r.stops.len() - 3);
    assert!(pr.progress_percent > 0.0 && pr.progress_percent < 30.0);
    assert!(pr.eta_s > 0.0 && pr.remaining_distance_m > 0.0);
    assert!(!pr.is_transfer);
    assert!(pr.message.contains(&b.name), "{}", pr.message);
    assert_eq!(st.updates, 1);
}

#[test]
fn the_stop_before_a_transfer_gives_the_transfer_hint() {
    let (n, e, tr) = setup();
    let r = route(&e, "서울", "잠실", DisabilityType::Physical);
    assert_eq!(r.transfers, 1);
    let k = (0..r.stops.len() - 1)
        .find(|&k| n.station(r.stops[k]).name == n.station(r.stops[k + 1]).name)
        .unwrap();
    let at = n.station(r.stops[k]);
    let to = n.station(r.stops[k + 1]);
    let p = e.profiles().get(DisabilityType::Physical);
    let mut st = TrackState::default();
    let (lat, lon) = point_on(&n, &r, k - 1, 0.7, 0.0);
    let pr = progress(tr.update(&n, &r, p, &mut st, lat, lon, None).unwrap());
    assert!(pr.is_transfer);
    assert_eq!(pr.next_station, Some(r.stops[k]));
    assert_eq!(pr.transfer_from_line.as_deref(), Some(at.line.as_str()));
    assert_eq!(pr.transfer_to_line.as_deref(), Some(to.line.as_str()));
    let want = format!("Transfer at {} from {} to {}", at.name, at.line, to.line);
    assert!(pr.message.starts_with(&want), "{}", pr.message);
    assert!(
        pr.message.contains("elevator"),
        "the PHY hint: {}",
        pr.message
    );
    // After the transfer the hint is gone.
    let (lat, lon) = point_on(&n, &r, k + 1, 0.5, 0.0);
    let pr = progress(tr.update(&n, &r, p, &mut st, lat, lon, None).unwrap());
    assert!(!pr.is_transfer && pr.transfer_from_line.is_none());
}

#[test]
fn a_fix_near_the_destination_is_an_arrival() {
    let (n, e, tr) = setup();
    let r = route(&e, "사당", "신도림", DisabilityType::Elderly);
    let p = e.profiles().get(DisabilityType::Elderly);
    let dest = n.station(*r.stops.last().unwrap());
    let mut st = TrackState::default();
    let out = tr
        .update(&n, &r, p, &mut st, dest.lat + 0.0009, dest.lon, None)
        .unwrap();
    assert_eq!(
        out,
        TrackOutcome::Arrival {
            destination: dest.id
        }
    );
    assert!(st.arrived);
    // 300 m short of the destination is not yet an arrival.
    let last = r.stops.len() - 2;
    let mut st = TrackState::default();
    let (a, b) = (n.station(r.stops[last]), dest);
    let seg = haversine_m(a.lat, a.lon, b.lat, b.lon);
    let (lat, lon) = point_on(&n, &r, last, 1.0 - 300.0 / seg, 0.0);
    let pr = progress(tr.update(&n, &r, p, &mut st, lat, lon, None).unwrap());
    assert_eq!(pr.next_station, Some(dest.id));
    assert!(pr.message.contains("destination"), "{}", pr.message);
    assert!((pr.remaining_distance_m - 300.0).abs() < 5.0);
}

#[test]
fn a_fix_far_from_the_route_is_a_deviation_with_the_nearest_station() {
    let (n, e, tr) = setup();
    let r = route(&e, "강남", "홍대입구", DisabilityType::Visual);
    let p = e.profiles().get(DisabilityType::Visual);
    let mut st = TrackState::default();
    let city_hall = n.station(n.by_code("0201").unwrap());
    let out = tr
        .update(&n, &r, p, &mut st, city_hall.lat, city_hall.lon, None)
        .unwrap();
    match out {
        TrackOutcome::Deviation {
            nearest_station,
            distance_from_route_m,
            suggested_action,
        } => {
            assert_eq!(n.station(nearest_station).name, "시청");
            assert!(distance_from_route_m > 1000.0);
            assert!(suggested_action.contains("시청"), "{suggested_action}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(st.along_m, 0.0, "a deviation does not move progress");
}

#[test]
fn gps_accuracy_widens_the_deviation_threshold_up_to_a_cap() {
    let (n, e, tr) = setup();
    let r = route(&e, "강남", "홍대입구", DisabilityType::Auditory);
    let p = e.profiles().get(DisabilityType::Auditory);
    let is_dev = |off: f64, acc: Option<f64>| {
        let (lat, lon) = point_on(&n, &r, 0, 0.5, off);
        let mut st = TrackState::default();
        matches!(
            tr.update(&n, &r, p, &mut st, lat, lon, acc).unwrap(),
            TrackOutcome::Deviation { .. }
        )
    };
    assert!(!is_dev(350.0, None));
    assert!(is_dev(450.0, None));
    assert!(!is_dev(450.0, Some(80.0)));
    assert!(is_dev(520.0, Some(80.0)));
    assert!(
        is_dev(520.0, Some(5000.0)),
        "accuracy credit is capped at 100 m"
    );
    assert!(!is_dev(490.0, Some(5000.0)));
    // A tighter configuration.
    let strict = Tracker::new(TrackerConfig {
        deviation_threshold_m: 100.0,
        max_accuracy_credit_m: 0.0,
        ..Default::default()
    });
    let (lat, lon) = point_on(&n, &r, 0, 0.5, 150.0);
    let out = strict
        .update(&n, &r, p, &mut TrackState::default(), lat, lon, Some(50.0))
        .unwrap();
    assert!(matches!(out, TrackOutcome::Deviation { .. }));
}

#[test]
fn invalid_fixes_are_rejected() {
    let (n, e, tr) = setup();
    let r = route(&e, "강남", "홍대입구", DisabilityType::None);
    let p = e.profiles().get(DisabilityType::None);
    let mut st = TrackState::default();
    let mut check = |lat: f64, lon: f64, acc: Option<f64>, want: LocationError| {
        let err = tr.update(&n, &r, p, &mut st, lat, lon, acc).unwrap_err();
        assert_eq!(err, want, "{lat},{lon}");
        assert_eq!(err.code(), "INVALID_LOCATION");
    };
    check(f64::NAN, 127.0, None, LocationError::NotFinite);
    check(37.5, f64::INFINITY, None, LocationError::NotFinite);
    check(91.0, 127.0, None, LocationError::OutOfRange);
    check(37.5, -181.0, None, LocationError::OutOfRange);
    check(35.1796, 129.0756, None, LocationError::OutsideNetwork); // 부산
    check(0.0, 0.0, None, LocationError::OutsideNetwork);
    check(
        37.4979,
        127.0276,
        Some(-1.0),
        LocationError::InvalidAccuracy,
    );
    check(
        37.4979,
        127.0276,
        Some(f64::NAN),
        LocationError::InvalidAccuracy,
    );
    assert_eq!(
        st,
        TrackState::default(),
        "rejected fixes leave the state alone"
    );
    assert!(n.check_location(37.4979, 127.0276).is_ok());
}

#[test]
fn track_state_round_trips_through_json() {
    let st = TrackState {
        along_m: 1234.5,
        arrived: false,
        updates: 7,
    };
    let json = serde_json::to_string(&st).unwrap();
    assert_eq!(serde_json::from_str::<TrackState>(&json).unwrap(), st);
    assert_eq!(
        serde_json::from_str::<TrackState>("{}").unwrap(),
        TrackState::default()
    );
}

#[test]
fn nearest_station_finds_the_reference_stations() {
    let n = Network::embedded();
    let (id, d) = n.nearest_station(37.4979, 127.0276);
    assert_eq!(n.station(id).name, "강남");
    assert!(d < 100.0);
    let (id, _) = n.nearest_station(37.5547, 126.9707);
    assert_eq!(n.station(id).name, "서울");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Riding a route from start to end with GPS noise: progress never goes
    /// backwards, remaining distance never grows, and the ride ends in an
    /// arrival at the destination.
    #[test]
    fn progress_is_monotonic_along_a_walked_route(
        a in 0u32..602,
        b in 0u32..602,
        t in 0usize..5,
        noise in proptest::collection::vec((-20.0f64..20.0, 0.0f64..1.0), 1..6),
    ) {
        let (n, e, tr) = setup();
        let (oa, ob) = (StationId(a), StationId(b));
        prop_assume!(!n.same_complex(oa, ob));
        let dt = DisabilityType::ALL[t];
        let r = e.routes(&n.station(oa).code, &n.station(ob).code, dt).unwrap().routes[0].clone();
        let p = e.profiles().get(dt);
        let mut st = TrackState::default();
        let (mut last_pct, mut last_rem) = (0.0f64, f64::INFINITY);
        let mut arrived = false;
        let total = r.polyline_length_m();
        let mut start = 0.0;
        for i in 0..r.stops.len() - 1 {
            let (sa, sb) = (n.station(r.stops[i]), n.station(r.stops[i + 1]));
            let seg = haversine_m(sa.lat, sa.lon, sb.lat, sb.lon);
            let mut fr: Vec<(f64, f64)> = noise.clone();
            fr.sort_by(|x, y| x.1.total_cmp(&y.1));
            for (off, f) in fr {
                let (lat, lon) = point_on(&n, &r, i, f, off);
                match tr.update(&n, &r, p, &mut st, lat, lon, Some(20.0)).unwrap() {
                    TrackOutcome::Progress(pr) => {
                        prop_assert!(!arrived, "progress after arrival");
                        prop_assert!(pr.progress_percent >= last_pct, "{} < {}", pr.progress_percent, last_pct);
                        prop_assert!(pr.remaining_distance_m <= last_rem, "{} > {}", pr.remaining_distance_m, last_rem);
                        prop_assert!((0.0..=100.0).contains(&pr.progress_percent));
                        // Snapped where the rider really is, give or take
                        // the noise and the route's corners, or onto another
                        // part of the route that passes the same place
                        // (where it doubles back at a transfer; a noisy fix
                        // there can move progress a little ahead, and it
                        // then stays ahead until the rider catches up).
                        let truth = total - (start + f * seg);
                        let there = point_at(&n, &r, total - pr.remaining_distance_m);
                        prop_assert!((pr.remaining_distance_m - truth).abs() < 300.0
                            || haversine_m(there.0, there.1, lat, lon) < off.abs() + 100.0,
                            "remaining {} but really {}", pr.remaining_distance_m, truth);
                        last_pct = pr.progress_percent;
                        last_rem = pr.remaining_distance_m;
                    }
                    TrackOutcome::Arrival { destination } => {
                        prop_assert_eq!(destination, *r.stops.last().unwrap());
                        arrived = true;
                    }
                    TrackOutcome::Deviation { distance_from_route_m, .. } => {
                        prop_assert!(false, "deviation {} m on the route", distance_from_route_m);
                    }
                }
            }
            start += seg;
        }
        let dest = n.station(*r.stops.last().unwrap());
        let out = tr.update(&n, &r, p, &mut st, dest.lat, dest.lon, None).unwrap();
        prop_assert_eq!(out, TrackOutcome::Arrival { destination: dest.id });
    }
}
