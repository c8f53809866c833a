//! Route-engine behaviour: sanity cases a Seoul rider would recognise,
//! profile effects on small synthetic networks, errors, determinism, the
//! cache, and proptest properties over the real network.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use navcast::transit::{
    DisabilityType, Link, Network, Profiles, Route, RouteEngine, RouteError, RouteSet, StationId,
};
use proptest::prelude::*;

const ALL: [DisabilityType; 5] = DisabilityType::ALL;

fn engine() -> RouteEngine {
    RouteEngine::new(Network::embedded(), Profiles::embedded(), 0)
}

fn best(e: &RouteEngine, o: &str, d: &str, t: DisabilityType) -> Route {
    e.routes(o, d, t)
        .unwrap_or_else(|err| panic!("{o}→{d} {t}: {err}"))
        .routes[0]
        .clone()
}

fn names(n: &Network, r: &Route) -> Vec<String> {
    r.stops.iter().map(|&s| n.station(s).name.clone()).collect()
}

/// Direct rides a Seoul rider takes without changing trains.
#[test]
fn direct_rides_need_no_transfer() {
    let e = engine();
    let cases = [
        ("강남", "홍대입구", "2호선"),
        ("사당", "신도림", "2호선"),
        ("잠실", "삼성", "2호선"),
        ("김포공항", "고속터미널", "9호선"),
        ("강남", "판교", "신분당선"),
        ("홍대입구", "인천공항1터미널", "공항철도"),
        ("왕십리", "선릉", "수인분당선"),
        ("노원", "사당", "4호선"),
        ("신도림", "가산디지털단지", "1호선"),
        ("고속터미널", "교대", "3호선"),
        ("가산디지털단지", "고속터미널", "7호선"),
        ("천호", "모란", "8호선"),
        ("문산", "용산", "경의중앙선"),
        ("여의도", "광화문", "5호선"),
    ];
    for (o, d, line) in cases {
        for t in ALL {
            let r = best(&e, o, d, t);
            assert_eq!(
                r.lines,
                vec![line.to_owned()],
                "{o}→{d} {t}: {:?}",
                names(e.network(), &r)
            );
            assert_eq!(r.transfers, 0, "{o}→{d} {t}");
        }
    }
}

/// Trips that always need a change of line, with where riders change.
#[test]
fn trips_that_need_a_transfer() {
    let e = engine();
    for t in ALL {
        let set = e.routes("서울", "잠실", t).unwrap();
        for r in &set.routes {
            assert!(r.transfers >= 1, "서울→잠실 {t}");
            // 잠실 is on 2호선 and 8호선; 서울 on neither.
            let last = r.lines.last().unwrap();
            assert!(last == "2호선" || last == "8호선", "{last}");
        }
        // 신촌 (2호선) to 김포공항: 2호선 then 5호선 or 공항철도 or 9호선.
        let r = best(&e, "신촌", "김포공항", t);
        assert!(r.transfers >= 1, "신촌→김포공항 {t}");
        // 인천공항1터미널 to 강남: airport railroad, then across town.
        let r = best(&e, "인천공항1터미널", "강남", t);
        assert_eq!(r.lines[0], "공항철도");
        assert!(r.transfers >= 1);
        // 오이도 to 판교: 수인분당선 and 신분당선 (or via 4호선) need a change.
        let r = best(&e, "오이도", "판교", t);
        assert!(r.transfers >= 1);
    }
    // 서울 → 잠실 for a rider without needs: change once, at 동대문역사문화공원
    // (4→2) or 시청/을지로 (1→2), both what riders do.
    let r = best(&e, "서울", "잠실", DisabilityType::None);
    assert_eq!(r.transfers, 1);
    assert_eq!(r.lines.last().unwrap(), "2호선");
}

#[test]
fn the_one_way_eungam_loop_is_respected() {
    let e = engine();
    let back = best(&e, "구산", "응암", DisabilityType::None);
    assert_eq!(back.stops.len(), 2, "구산→응암 is one stop");
    let round = best(&e, "응암", "구산", DisabilityType::None);
    assert_eq!(
        names(e.network(), &round),
        ["응암", "역촌", "불광", "독바위", "연신내", "구산"]
    );
}

#[test]
fn queries_are_normalised_and_codes_accepted() {
    let e = engine();
    let a = e
        .routes("서울역", " 잠실 역", DisabilityType::Physical)
        .unwrap();
    let b = e.routes("서울", "잠실", DisabilityType::Physical).unwrap();
    assert_eq!(a.routes, b.routes);
    let c = e.routes("0222", "0239", DisabilityType::None).unwrap();
    assert_eq!(c.routes[0].lines, ["2호선"]);
    // A unique prefix resolves.
    let d = e
        .routes("구로디지털", "가산디지털단지", DisabilityType::None)
        .unwrap();
    assert_eq!(e.network().station(d.origin).name, "구로디지털단지");
}

#[test]
fn lookups_by_name_code_and_prefix() {
    let n = Network::embedded();
    let seoul = n.resolve("서울역").unwrap();
    let lines: HashSet<&str> = seoul.iter().map(|&s| n.station(s).line.as_str()).collect();
    assert_eq!(
        lines,
        HashSet::from(["1호선", "4호선", "경의중앙선", "공항철도"])
    );
    // A code gives the whole complex.
    assert_eq!(n.resolve("0150").unwrap(), seoul);
    assert_eq!(n.by_code("102c"), n.by_code("102C"));
    // Prefix search: exact name first, deterministic order.
    let hits: Vec<String> = n
        .search("신도림", 5)
        .iter()
        .map(|s| format!("{}/{}", s.name, s.line))
        .collect();
    assert_eq!(hits, ["신도림/1호선", "신도림/2호선"]);
    let a: Vec<_> = n.search("신", 20).iter().map(|s| s.id).collect();
    let b: Vec<_> = n.search("신 ", 20).iter().map(|s| s.id).collect();
    assert_eq!(a, b);
    assert_eq!(a.len(), 20);
    assert!(n.search("", 5).is_empty());
    // 양평 names two different places: both are returned for the name, but a
    // code keeps to its own place.
    assert_eq!(n.resolve("양평").unwrap().len(), 2);
    assert_eq!(n.resolve("2523").unwrap().len(), 1);
}

#[test]
fn unknown_stations_come_with_suggestions() {
    let e = engine();
    let err = e
        .routes("강냠", "홍대입구", DisabilityType::Physical)
        .unwrap_err();
    match &err {
        RouteError::StationNotFound { query, suggestions } => {
            assert_eq!(query, "강냠");
            assert!(suggestions.contains(&"강남".to_owned()), "{suggestions:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.code(), "STATION_NOT_FOUND");
    // An ambiguous prefix is not a station, but its matches are suggested.
    let err = e
        .routes("강남", "신", DisabilityType::Physical)
        .unwrap_err();
    let RouteError::StationNotFound { suggestions, .. } = err else {
        panic!()
    };
    assert!(!suggestions.is_empty() && suggestions.iter().all(|s| s.starts_with('신')));
    assert!(matches!(
        e.routes("", "강남", DisabilityType::Physical),
        Err(RouteError::StationNotFound { .. })
    ));
}

#[test]
fn the_same_station_twice_is_invalid() {
    let e = engine();
    for (o, d) in [("강남", "강남역"), ("서울", "0426"), ("0150", "4201")] {
        let err = e.routes(o, d, DisabilityType::Visual).unwrap_err();
        assert_eq!(err, RouteError::SameStation, "{o}/{d}");
        assert_eq!(err.code(), "INVALID_PARAMETERS");
    }
    // 신촌 (2호선) and 신촌 (경의중앙선) are different stations by code.
    assert!(e.routes("0240", "1252", DisabilityType::None).is_ok());
}

#[test]
fn unreachable_stations_give_no_route() {
    let n = common::network(
        &[
            common::station("A1", "가", "A선", 37.50, 127.00),
            common::station("A2", "나", "A선", 37.50, 127.01),
            common::station("B1", "다", "B선", 37.52, 127.00),
            common::station("B2", "라", "B선", 37.52, 127.01),
        ],
        &["A,A선,N,N,A1|A2", "B,B선,N,N,B1|B2"],
        &[],
    );
    let e = RouteEngine::new(Arc::new(n), Profiles::embedded(), 0);
    let err = e.routes("가", "라", DisabilityType::None).unwrap_err();
    assert_eq!(err, RouteError::NoRoute);
    assert_eq!(err.code(), "ROUTE_NOT_FOUND");
}

fn uses_transfer_at(n: &Network, r: &Route, name: &str) -> bool {
    r.transfer_stations.iter().any(|s| s == name)
        && r.stops.iter().any(|&s| n.station(s).name == name)
}

#[test]
fn wheelchair_users_avoid_a_transfer_with_stairs_when_they_can() {
    // Real data: 영등포 → 여의도. Riders without needs change at 신길 (1→5),
    // whose transfer has stairs (estimated); wheelchair users go via 노량진.
    let e = engine();
    let n = e.network().clone();
    let singil = n
        .transfers()
        .iter()
        .find(|t| n.station(t.a).name == "신길")
        .unwrap();
    assert!(!singil.step_free);
    let none = best(&e, "영등포", "여의도", DisabilityType::None);
    assert!(
        uses_transfer_at(&n, &none, "신길"),
        "{:?}",
        none.transfer_stations
    );
    let phy = e
        .routes("영등포", "여의도", DisabilityType::Physical)
        .unwrap();
    for r in &phy.routes {
        assert!(
            !uses_transfer_at(&n, r, "신길"),
            "PHY rank {} uses 신길",
            r.rank
        );
    }

    // Synthetic: the short transfer at 엑스 has stairs; PHY rides on to 와이.
    let n = Arc::new(common::two_lines(false, "YYYYYY"));
    let e = RouteEngine::new(n.clone(), Profiles::embedded(), 0);
    let none = best(&e, "에이일", "비끝", DisabilityType::None);
    assert_eq!(none.transfer_stations, ["엑스"]);
    let phy = e
        .routes("에이일", "비끝", DisabilityType::Physical)
        .unwrap();
    assert_eq!(
        phy.routes.len(),
        1,
        "the stairs route is not offered to PHY at all"
    );
    assert_eq!(phy.routes[0].transfer_stations, ["와이"]);

    // When stairs are the only way, PHY still gets that route.
    let n = Arc::new(common::two_lines_with(false, "YYYYYY", false));
    let e = RouteEngine::new(n.clone(), Profiles::embedded(), 0);
    let only = best(&e, "에이일", "비끝", DisabilityType::Physical);
    assert_eq!(only.transfer_stations, ["엑스"]);
}

#[test]
fn blind_and_deaf_riders_weigh_station_facilities() {
    // 엑스 lacks tactile paving and audio guidance (flags: elevator,
    // escalator, tactile, staff, visual, audio).
    let n = Arc::new(common::two_lines(true, "YYNYYN"));
    let e = RouteEngine::new(n, Profiles::embedded(), 0);
    assert_eq!(
        best(&e, "에이일", "비끝", DisabilityType::None).transfer_stations,
        ["엑스"]
    );
    assert_eq!(
        best(&e, "에이일", "비끝", DisabilityType::Visual).transfer_stations,
        ["와이"]
    );
    assert_eq!(
        best(&e, "에이일", "비끝", DisabilityType::Auditory).transfer_stations,
        ["엑스"]
    );
    // 엑스 lacks visual displays.
    let n = Arc::new(common::two_lines(true, "YYYYNY"));
    let e = RouteEngine::new(n, Profiles::embedded(), 0);
    assert_eq!(
        best(&e, "에이일", "비끝", DisabilityType::Auditory).transfer_stations,
        ["와이"]
    );
    assert_eq!(
        best(&e, "에이일", "비끝", DisabilityType::Visual).transfer_stations,
        ["엑스"]
    );
}

#[test]
fn elderly_riders_prefer_fewer_transfers_and_shorter_walks() {
    // Two ways from 갑 to 정: a direct but slower line C, or line A then a
    // 300 m transfer walk to the faster line B.
    let s = |c, n, l, lat, lon| common::station(c, n, l, lat, lon);
    let net = common::network(
        &[
            s("A1", "갑", "A선", 37.50, 127.000),
            s("A2", "을", "A선", 37.50, 127.020),
            s("B1", "을", "B선", 37.501, 127.020),
            s("B2", "정", "B선", 37.501, 127.060),
            s("C1", "갑", "C선", 37.499, 127.000),
            s("C2", "병", "C선", 37.450, 127.030),
            s("C3", "정", "C선", 37.499, 127.060),
        ],
        &["A,A선,N,N,A1|A2", "B,B선,N,N,B1|B2", "C,C선,N,N,C1|C2|C3"],
        &["A2,B1,300,Y,test", "A1,C1,100,Y,test", "B2,C3,100,Y,test"],
    );
    let e = RouteEngine::new(Arc::new(net), Profiles::embedded(), 0);
    let none = best(&e, "갑", "정", DisabilityType::None);
    let eld = best(&e, "갑", "정", DisabilityType::Elderly);
    assert_eq!(none.transfers, 1, "{:?}", none.lines);
    assert_eq!(eld.transfers, 0, "{:?}", eld.lines);
    assert!(eld.total_time_min > none.total_time_min);
}

#[test]
fn results_are_deterministic_and_cached() {
    let plain = engine();
    let cached = RouteEngine::new(Network::embedded(), Profiles::embedded(), 64);
    for t in ALL {
        let a = plain.routes("서울", "잠실", t).unwrap();
        let b = plain.routes("서울", "잠실", t).unwrap();
        let c = cached.routes("서울", "잠실", t).unwrap();
        let d = cached.routes("서울역", "잠실", t).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert!(Arc::ptr_eq(&c, &d), "the second lookup is a cache hit");
    }
    let s = cached.cache_stats();
    assert_eq!((s.hits, s.misses), (5, 5));
    assert_eq!(plain.cache_stats().hits + plain.cache_stats().misses, 0);
}

#[test]
fn the_cache_evicts_the_least_recently_used_route() {
    let e = RouteEngine::new(Network::embedded(), Profiles::embedded(), 1);
    let t = DisabilityType::Elderly;
    e.routes("강남", "잠실", t).unwrap();
    e.routes("강남", "잠실", t).unwrap();
    e.routes("강남", "서울", t).unwrap();
    e.routes("강남", "잠실", t).unwrap();
    let s = e.cache_stats();
    assert_eq!((s.hits, s.misses), (1, 3));
    // The disability type is part of the key.
    e.routes("강남", "잠실", DisabilityType::Visual).unwrap();
    assert_eq!(e.cache_stats().misses, 4);
}

#[test]
fn a_stored_route_rebuilds_from_its_codes() {
    let e = engine();
    let n = e.network().clone();
    let set = e
        .routes("인천공항2터미널", "광교", DisabilityType::Physical)
        .unwrap();
    for r in &set.routes {
        let back = e
            .route_from_codes(&r.codes(&n), DisabilityType::Physical, r.rank)
            .unwrap();
        assert_eq!(&back, r);
    }
    let codes = vec!["0222".to_owned(), "0239".to_owned()];
    assert_eq!(
        e.route_from_codes(&codes, DisabilityType::None, 1)
            .unwrap_err(),
        RouteError::InvalidRoute
    );
    let codes = vec!["0222".to_owned(), "nope".to_owned()];
    assert!(matches!(
        e.route_from_codes(&codes, DisabilityType::None, 1),
        Err(RouteError::StationNotFound { .. })
    ));
}

#[test]
fn routes_from_a_station_start_anywhere_in_its_complex() {
    let e = engine();
    let n = e.network().clone();
    let from = n.by_code("0426").unwrap(); // 서울 on 4호선
    let set = e.routes_from(from, "공덕", DisabilityType::None).unwrap();
    assert_eq!(n.station(set.origin).name, "서울");
    assert!(set.routes[0].transfers <= 1);
}

/// Checks every invariant of a route set.
fn check_set(
    n: &Network,
    set: &RouteSet,
    origin: &[StationId],
    destination: &[StationId],
) -> Result<(), String> {
    if set.routes.is_empty() || set.routes.len() > 3 {
        return Err(format!("{} routes", set.routes.len()));
    }
    let mut keys = HashSet::new();
    for (i, r) in set.routes.iter().enumerate() {
        if r.rank as usize != i + 1 {
            return Err(format!("rank {} at {i}", r.rank));
        }
        if i > 0 && set.routes[i - 1].score > r.score {
            return Err("scores not ascending".into());
        }
        if !keys.insert((r.lines.clone(), r.transfer_stations.clone())) {
            return Err(format!(
                "rank {} repeats lines {:?} via {:?}",
                r.rank, r.lines, r.transfer_stations
            ));
        }
        if !origin.contains(&r.stops[0]) || !destination.contains(r.stops.last().unwrap()) {
            return Err("wrong ends".into());
        }
        let mut transfers = 0;
        let mut seen = HashSet::new();
        for w in r.stops.windows(2) {
            if !seen.insert(w[0]) {
                return Err("a stop repeats".into());
            }
            let edge = n.edges(w[0]).iter().find(|e| e.to == w[1]);
            match edge.map(|e| e.link) {
                None => return Err(format!("{:?}→{:?} is not an edge", w[0], w[1])),
                Some(Link::Transfer { .. }) => transfers += 1,
                Some(Link::Ride { .. }) => {}
            }
        }
        if transfers != r.transfers || r.transfer_stations.len() != transfers as usize {
            return Err("transfer count".into());
        }
        if !(r.total_time_min > 0.0 && r.distance_m > 0.0 && r.score >= r.total_time_min - 0.1) {
            return Err(format!(
                "figures {} {} {}",
                r.total_time_min, r.distance_m, r.score
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Every returned route is a walk of the network between the requested
    /// stations, ranks are distinct, and the same request gives the same
    /// answer.
    #[test]
    fn routes_are_valid_distinct_walks(a in 0u32..602, b in 0u32..602, t in 0usize..5) {
        let e = engine();
        let n = e.network().clone();
        let (oa, ob) = (StationId(a), StationId(b));
        let origin = n.resolve(&n.station(oa).code).unwrap();
        let destination = n.resolve(&n.station(ob).code).unwrap();
        let dt = ALL[t];
        match e.routes(&n.station(oa).code, &n.station(ob).code, dt) {
            Ok(set) => {
                prop_assert!(check_set(&n, &set, &origin, &destination).is_ok(), "{:?}", check_set(&n, &set, &origin, &destination));
                let again = e.routes(&n.station(oa).code, &n.station(ob).code, dt).unwrap();
                prop_assert_eq!(&*set, &*again);
            }
            Err(RouteError::SameStation) => prop_assert!(n.same_complex(oa, ob)),
            Err(other) => prop_assert!(false, "{}", other),
        }
    }
}
