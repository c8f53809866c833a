//! Validation of the shipped network data and of the loader's error reports.
//!
//! Reference figures are copied from KindMap's websocket_test_config.json and
//! the KindMap station list is the copy in data/kindmap/ (tests never read
//! the shared folder).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use navcast::transit::geo::haversine_m;
use navcast::transit::{DataError, Network, Profiles, StationId};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// The 12 stations of KindMap's load-test configuration.
const REFERENCE: [(&str, f64, f64); 12] = [
    ("강남", 37.4979, 127.0276),
    ("홍대입구", 37.5579, 126.9227),
    ("잠실", 37.5133, 127.1000),
    ("구로디지털단지", 37.4850, 126.9010),
    ("서울", 37.5547, 126.9707),
    ("신림", 37.4843, 126.9297),
    ("삼성", 37.5088, 127.0633),
    ("고속터미널", 37.5046, 127.0047),
    ("신도림", 37.5088, 126.8913),
    ("선릉", 37.5045, 127.0489),
    ("사당", 37.4765, 126.9815),
    ("가산디지털단지", 37.4816, 126.8826),
];

/// Consecutive stations more than 6 km apart, all real long gaps.
const LONG_GAPS: [(&str, &str, &str); 6] = [
    (
        "1919",
        "1918",
        "1호선 연천–전곡 ~8.5 km: rural 경원선 stretch without stations",
    ),
    (
        "1724",
        "1725",
        "1호선 평택–성환 ~9 km: rural 경부선 stretch without stations",
    ),
    (
        "0406",
        "0408",
        "4호선 오남–별내별가람 ~8 km: 진접선, the infill station is not open",
    ),
    (
        "4310",
        "4311",
        "신분당선 청계산입구–판교 ~7.6 km: tunnel under 청계산",
    ),
    (
        "4204",
        "4206",
        "공항철도 디지털미디어시티–마곡나루 ~6.5 km: crosses the Han River",
    ),
    (
        "4210",
        "4217",
        "공항철도 청라국제도시–영종 ~10 km: sea crossing on 영종대교",
    ),
];

/// Consecutive stations closer than 300 m (none today).
const SHORT_GAPS: [(&str, &str, &str); 0] = [];

const LINES: [&str; 13] = [
    "1호선",
    "2호선",
    "3호선",
    "4호선",
    "5호선",
    "6호선",
    "7호선",
    "8호선",
    "9호선",
    "신분당선",
    "수인분당선",
    "경의중앙선",
    "공항철도",
];

#[derive(serde::Deserialize)]
struct KindMapStation {
    name: String,
    station_cd: String,
    line: String,
}

fn kindmap() -> Vec<KindMapStation> {
    let text = std::fs::read_to_string(data_dir().join("kindmap/stations.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn reference_stations_lie_within_300_m_on_every_line() {
    let n = Network::embedded();
    for (name, lat, lon) in REFERENCE {
        let ids = n.resolve(name).unwrap();
        assert!(!ids.is_empty(), "{name}");
        for id in ids {
            let s = n.station(id);
            let d = haversine_m(lat, lon, s.lat, s.lon);
            assert!(
                d <= 300.0,
                "{name} on {} is {d:.0} m from the reference",
                s.line
            );
        }
    }
}

#[test]
fn consecutive_stations_are_300_m_to_6_km_apart_unless_listed() {
    let n = Network::embedded();
    let allowed: HashSet<(&str, &str)> = LONG_GAPS
        .iter()
        .chain(SHORT_GAPS.iter())
        .flat_map(|&(a, b, _)| [(a, b), (b, a)])
        .collect();
    let mut used = HashSet::new();
    let mut bad = Vec::new();
    for seq in n.lines() {
        let mut pairs: Vec<(StationId, StationId)> =
            seq.stations.windows(2).map(|w| (w[0], w[1])).collect();
        if seq.is_loop {
            pairs.push((*seq.stations.last().unwrap(), seq.stations[0]));
        }
        for (a, b) in pairs {
            let (sa, sb) = (n.station(a), n.station(b));
            let d = haversine_m(sa.lat, sa.lon, sb.lat, sb.lon);
            let key = (sa.code.as_str(), sb.code.as_str());
            if allowed.contains(&key) {
                used.insert(key);
                used.insert((key.1, key.0));
            } else if !(300.0..=6000.0).contains(&d) {
                bad.push(format!("{} {}–{} {:.0} m", seq.name, sa.name, sb.name, d));
            }
        }
    }
    assert!(bad.is_empty(), "unexplained gaps: {bad:#?}");
    for (a, b, why) in LONG_GAPS {
        assert!(
            used.contains(&(a, b)),
            "allow-list entry not in the data: {why}"
        );
    }
}

#[test]
fn the_network_is_connected() {
    let n = Network::embedded();
    let mut seen = vec![false; n.stations().len()];
    let mut queue = VecDeque::from([StationId(0)]);
    seen[0] = true;
    while let Some(u) = queue.pop_front() {
        for e in n.edges(u) {
            if !seen[e.to.0 as usize] {
                seen[e.to.0 as usize] = true;
                queue.push_back(e.to);
            }
        }
    }
    let missing: Vec<&str> = n
        .stations()
        .iter()
        .filter(|s| !seen[s.id.0 as usize])
        .map(|s| s.name.as_str())
        .collect();
    assert!(missing.is_empty(), "unreachable: {missing:?}");
}

#[test]
fn every_station_matches_kindmap_and_covers_its_lines() {
    let n = Network::embedded();
    let km = kindmap();
    let by_code: HashMap<&str, &KindMapStation> =
        km.iter().map(|s| (s.station_cd.as_str(), s)).collect();
    for s in n.stations() {
        let k = by_code
            .get(s.code.as_str())
            .unwrap_or_else(|| panic!("{} {} is not in KindMap", s.code, s.name));
        assert_eq!(
            (k.name.as_str(), k.line.as_str()),
            (s.name.as_str(), s.line.as_str()),
            "{}",
            s.code
        );
    }
    for k in km.iter().filter(|k| LINES.contains(&k.line.as_str())) {
        assert!(
            n.by_code(&k.station_cd).is_some(),
            "missing {} {} {}",
            k.station_cd,
            k.name,
            k.line
        );
    }
    let lines: BTreeSet<&str> = n.stations().iter().map(|s| s.line.as_str()).collect();
    assert_eq!(lines, LINES.iter().copied().collect());
}

#[test]
fn line_2_is_a_loop_and_its_branches_are_separate_sequences() {
    let n = Network::embedded();
    let seqs: Vec<_> = n.lines().iter().filter(|s| s.line == "2호선").collect();
    assert_eq!(seqs.iter().filter(|s| s.is_loop).count(), 1);
    assert_eq!(seqs.len(), 3);
    let lp = seqs.iter().find(|s| s.is_loop).unwrap();
    assert_eq!(lp.stations.len(), 43);
    // 시청 and 충정로 are neighbours across the loop's seam.
    let a = n.by_code("0201").unwrap();
    let b = n.by_code("0243").unwrap();
    assert!(n.edges(a).iter().any(|e| e.to == b));
    assert!(n.edges(b).iter().any(|e| e.to == a));
}

#[test]
fn same_named_stations_are_linked_unless_excluded() {
    let n = Network::embedded();
    let text = std::fs::read_to_string(data_dir().join("seoul/transfer_exclusions.csv")).unwrap();
    let mut excluded = HashSet::new();
    for rec in csv::Reader::from_reader(text.as_bytes()).records() {
        let rec = rec.unwrap();
        let (a, b) = (n.by_code(&rec[1]).unwrap(), n.by_code(&rec[2]).unwrap());
        excluded.insert((a.min(b), a.max(b)));
    }
    assert!(excluded.len() >= 2, "양평 and 신촌 are excluded");
    let linked: HashSet<(StationId, StationId)> = n
        .transfers()
        .iter()
        .map(|t| (t.a.min(t.b), t.a.max(t.b)))
        .collect();
    for t in n.transfers() {
        let (a, b) = (n.station(t.a), n.station(t.b));
        assert_eq!(a.name, b.name, "transfers join same-named stations");
        assert_ne!(a.line, b.line);
        assert!(
            haversine_m(a.lat, a.lon, b.lat, b.lon) <= 600.0,
            "{}",
            a.name
        );
    }
    for a in n.stations() {
        for b in n
            .stations()
            .iter()
            .filter(|b| b.id > a.id && b.name == a.name)
        {
            let pair = (a.id, b.id);
            if excluded.contains(&pair) {
                assert!(!linked.contains(&pair), "{} must not be linked", a.name);
            } else {
                assert!(
                    linked.contains(&pair),
                    "{} {}/{} not linked",
                    a.name,
                    a.line,
                    b.line
                );
            }
        }
    }
}

/// Rows of a shipped CSV file, counted as text (header excluded), not by
/// the loader under test.
fn csv_rows(file: &str) -> usize {
    let text = std::fs::read_to_string(data_dir().join("seoul").join(file)).unwrap();
    text.lines().filter(|l| !l.trim().is_empty()).count() - 1
}

/// The line-station `name` on `line`.
fn on_line(n: &Network, name: &str, line: &str) -> StationId {
    n.stations()
        .iter()
        .find(|s| s.name == name && s.line == line)
        .unwrap_or_else(|| panic!("no {name} on {line}"))
        .id
}

/// The transfer between `name` on `line_a` and on `line_b`.
fn transfer_at(n: &Network, name: &str, line_a: &str, line_b: &str) -> navcast::transit::Transfer {
    let (a, b) = (on_line(n, name, line_a), on_line(n, name, line_b));
    n.transfers()
        .iter()
        .find(|t| (t.a, t.b) == (a, b) || (t.a, t.b) == (b, a))
        .unwrap_or_else(|| panic!("no transfer at {name} {line_a}↔{line_b}"))
        .clone()
}

/// What data/README.md and KindMap say about the shipped network, checked
/// against a loaded copy: counts taken from the files as text and from
/// KindMap's list, and facts a rider of the Seoul subway knows.
fn assert_documented_facts(n: &Network) {
    // Sizes: every row became one item.
    assert_eq!(n.stations().len(), csv_rows("stations.csv"));
    assert_eq!(n.stations().len(), 602);
    assert_eq!(n.lines().len(), csv_rows("lines.csv"));
    assert_eq!(n.lines().len(), 21);
    assert_eq!(n.transfers().len(), csv_rows("transfers.csv"));
    assert_eq!(n.transfers().len(), 115);

    // Stations per line: as many as KindMap lists for that line.
    let mut kindmap_per_line: HashMap<&str, usize> = HashMap::new();
    let km = kindmap();
    for k in km.iter().filter(|k| LINES.contains(&k.line.as_str())) {
        *kindmap_per_line.entry(k.line.as_str()).or_default() += 1;
    }
    let mut per_line: HashMap<&str, usize> = HashMap::new();
    for s in n.stations() {
        *per_line.entry(s.line.as_str()).or_default() += 1;
    }
    assert_eq!(per_line, kindmap_per_line);
    // 2호선: 43 stations on the loop, 성수지선 and 신정지선 apart from it.
    assert_eq!(per_line["2호선"], 51);
    let line2: Vec<_> = n.lines().iter().filter(|s| s.line == "2호선").collect();
    let loops: Vec<_> = line2.iter().filter(|s| s.is_loop).collect();
    assert_eq!((line2.len(), loops.len()), (3, 1));
    assert_eq!(loops[0].stations.len(), 43);
    let on_loop = |name: &str| {
        loops[0]
            .stations
            .iter()
            .any(|id| n.station(*id).name == name)
    };
    for name in [
        "시청",
        "강남",
        "잠실",
        "홍대입구",
        "신도림",
        "성수",
        "충정로",
    ] {
        assert!(on_loop(name), "{name} is on the 2호선 loop");
    }
    for name in ["용답", "도림천", "까치산"] {
        assert!(!on_loop(name), "{name} is on a branch, not the loop");
    }
    // 6호선's 응암순환 is the one one-way loop.
    let oneway: Vec<&str> = n
        .lines()
        .iter()
        .filter(|s| s.oneway)
        .map(|s| s.line.as_str())
        .collect();
    assert_eq!(oneway, ["6호선"]);

    // Known transfers and their riders' walking figures.
    for (name, a, b, walk_m) in [
        ("고속터미널", "3호선", "9호선", 420.0),
        ("서울", "4호선", "공항철도", 450.0),
        ("김포공항", "5호선", "공항철도", 350.0),
        ("충무로", "3호선", "4호선", 30.0),
        ("금정", "1호선", "4호선", 20.0),
    ] {
        let t = transfer_at(n, name, a, b);
        assert_eq!(t.walk_m, walk_m, "{name} {a}↔{b}");
        assert!(!t.estimated, "{name} {a}↔{b} is a riders' figure");
    }
    assert_eq!(n.transfers().iter().filter(|t| !t.estimated).count(), 44);
    // The four transfers with stairs only, and no other.
    let stairs: BTreeSet<String> = n
        .transfers()
        .iter()
        .filter(|t| !t.step_free)
        .map(|t| n.station(t.a).name.clone())
        .collect();
    assert_eq!(
        stairs,
        ["신길", "종로3가", "노원", "동묘앞"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert!(!transfer_at(n, "신길", "1호선", "5호선").step_free);
    assert!(transfer_at(n, "강남", "2호선", "신분당선").step_free);

    // Estimated facilities, as the README counts them.
    let lacking = |f: fn(&navcast::transit::Facilities) -> bool| {
        n.stations().iter().filter(|s| !f(&s.facilities)).count()
    };
    assert_eq!(lacking(|f| f.escalator), 81);
    assert_eq!(lacking(|f| f.staff_help), 22);
    assert_eq!(lacking(|f| f.elevator), 15);
    assert_eq!(lacking(|f| f.visual_display), 15);
    assert_eq!(lacking(|f| f.audio_guide), 15);
    assert_eq!(lacking(|f| f.tactile_paving), 0);
    assert!(n.stations().iter().all(|s| s.facilities_estimated));
    let recollected = n
        .stations()
        .iter()
        .filter(|s| s.coord_source == "recollection")
        .count();
    assert_eq!(recollected, 36);
}

#[test]
fn the_shipped_files_and_the_embedded_copy_hold_the_documented_network() {
    let loaded = Network::load_dir(&data_dir().join("seoul")).unwrap();
    assert_documented_facts(&loaded);
    assert_documented_facts(&Network::embedded());
    let p = Profiles::load(&data_dir().join("profiles.toml")).unwrap();
    assert_eq!(p, Profiles::embedded());
}

/// Copies the shipped data into a tempdir, applies `edit` to one file and
/// loads the result.
fn load_edited(file: &str, edit: impl Fn(String) -> String) -> DataError {
    let dir = tempfile::tempdir().unwrap();
    for f in ["stations.csv", "lines.csv", "transfers.csv"] {
        let mut text = std::fs::read_to_string(data_dir().join("seoul").join(f)).unwrap();
        if f == file {
            text = edit(text);
        }
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    Network::load_dir(dir.path()).unwrap_err()
}

/// Replaces line `line` (1-based) of a text.
fn replace_line(text: &str, line: usize, f: impl Fn(&str) -> String) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| if i + 1 == line { f(l) } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_names(err: &DataError, file: &str, line: u64, field: &str) {
    match err {
        DataError::Invalid {
            file: f,
            line: l,
            field: fd,
            ..
        } => {
            assert!(f.ends_with(file), "{err}");
            assert_eq!((*l, fd.as_str()), (line, field), "{err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("{file}:{line}")) && text.contains(field),
                "{text}"
            );
        }
        other => panic!("expected Invalid, got {other}"),
    }
}

#[test]
fn a_bad_latitude_is_reported_with_file_line_and_field() {
    let err = load_edited("stations.csv", |t| {
        replace_line(&t, 5, |l| {
            let mut f: Vec<&str> = l.split(',').collect();
            f[3] = "north";
            f.join(",")
        })
    });
    assert_names(&err, "stations.csv", 5, "lat");
}

#[test]
fn an_unknown_code_in_a_sequence_is_reported() {
    let err = load_edited("lines.csv", |t| {
        replace_line(&t, 3, |l| l.replacen('|', "|9999|", 1))
    });
    assert_names(&err, "lines.csv", 3, "stations");
    assert!(err.to_string().contains("9999"));
}

#[test]
fn a_bad_flag_in_transfers_is_reported() {
    let err = load_edited("transfers.csv", |t| {
        replace_line(&t, 4, |l| {
            l.replace(",Y,", ",maybe,").replace(",N,", ",maybe,")
        })
    });
    assert_names(&err, "transfers.csv", 4, "step_free");
}

#[test]
fn a_missing_column_and_a_duplicate_code_are_reported() {
    let err = load_edited("stations.csv", |t| t.replacen("elevator,", "lift,", 1));
    assert_names(&err, "stations.csv", 1, "elevator");
    let err = load_edited("stations.csv", |t| {
        let second = t.lines().nth(1).unwrap().to_owned();
        format!("{t}{second}\n")
    });
    assert_names(&err, "stations.csv", 604, "code");
    assert!(err.to_string().contains("duplicate"), "{err}");
}

#[test]
fn a_station_on_the_wrong_line_is_reported() {
    // 0222 is 강남 on 2호선; put it into a 1호선 sequence.
    let err = load_edited("lines.csv", |t| {
        t.lines()
            .map(|l| {
                if l.starts_with("L1-main,") {
                    l.replacen("|", "|0222|", 1)
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    assert!(
        matches!(err, DataError::Invalid { ref field, .. } if field == "stations"),
        "{err}"
    );
    assert!(err.to_string().contains("2호선"), "{err}");
}

#[test]
fn a_missing_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = Network::load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }));
    assert!(err.to_string().contains("stations.csv"), "{err}");
}
