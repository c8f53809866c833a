//! The Seoul subway network and the accessible route engine built on it.
//!
//! This module owns the network data (stations as line-nodes, running
//! sequences, transfer links, per-station facilities), the lookups the node
//! needs (by code, by normalised name, by prefix, nearest station), the
//! route engine and the progress tracker. It does no I/O except the explicit
//! directory loader, and nothing here is async: the node calls it from its
//! tasks and shares the immutable [`Network`] behind an `Arc`.
//!
//! A *station* here is one line's node (서울 on 1호선 and 서울 on 4호선 are two
//! stations, linked by a transfer). Station ids are dense indices, so graph
//! algorithms can use plain vectors.

pub mod geo;

mod data;
mod profile;
mod routing;
mod tracking;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

pub use data::DataError;
pub use profile::{DisabilityType, FacilityPenalties, Profile, Profiles, UnknownDisabilityType};
pub use routing::{CacheStats, Route, RouteEngine, RouteError, RouteSet};
pub use tracking::{NavProgress, TrackOutcome, TrackState, Tracker, TrackerConfig};

/// How far outside the stations' bounding box a fix is still accepted, in
/// degrees (about 5.5 km north–south, 4.4 km east–west at Seoul's latitude).
const BBOX_MARGIN_DEG: f64 = 0.05;

/// Index of a line-station in [`Network::stations`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StationId(pub u32);

impl StationId {
    #[inline]
    pub(crate) fn ix(self) -> usize {
        self.0 as usize
    }
}

/// Accessibility facilities of one line-station.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facilities {
    /// A step-free route from street to platform.
    pub elevator: bool,
    pub escalator: bool,
    pub tactile_paving: bool,
    /// Staff who help with boarding (ramps, guidance) on request.
    pub staff_help: bool,
    /// Visual train-arrival and announcement displays.
    pub visual_display: bool,
    /// Audible guidance (announcements, guide chimes).
    pub audio_guide: bool,
}

/// One line's node of a station.
#[derive(Debug, Clone, PartialEq)]
pub struct Station {
    pub id: StationId,
    /// The KindMap station code (e.g. `0222` for 강남 on 2호선).
    pub code: String,
    pub name: String,
    pub line: String,
    pub lat: f64,
    pub lon: f64,
    pub facilities: Facilities,
    /// True when the facilities are estimated rather than surveyed.
    pub facilities_estimated: bool,
    /// Where the coordinates come from (free text from the data file).
    pub coord_source: String,
}

/// One running sequence of a line (a line may have several: branches).
#[derive(Debug, Clone, PartialEq)]
pub struct LineSequence {
    /// The sequence's id in the data (e.g. `L2-loop`).
    pub name: String,
    pub line: String,
    /// The last station connects back to the first.
    pub is_loop: bool,
    /// Trains run only in the listed order.
    pub oneway: bool,
    pub stations: Vec<StationId>,
}

/// A walking link between two line-stations of the same station.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    pub a: StationId,
    pub b: StationId,
    pub walk_m: f64,
    /// A path without stairs exists.
    pub step_free: bool,
    /// True when walk and step-free status are estimated.
    pub estimated: bool,
}

/// What a directed edge of the network graph is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Link {
    /// Riding a train to the next station of a sequence.
    Ride { distance_m: f64 },
    /// Walking to another line's platform; indexes [`Network::transfers`].
    Transfer { index: u32 },
}

/// A directed edge of the network graph.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edge {
    pub to: StationId,
    pub link: Link,
}

/// An invalid GPS fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LocationError {
    #[error("latitude and longitude must be finite numbers")]
    NotFinite,
    #[error("latitude must be within ±90 and longitude within ±180")]
    OutOfRange,
    #[error("the location is outside the area served by the network")]
    OutsideNetwork,
    #[error("accuracy must be a finite, non-negative number of metres")]
    InvalidAccuracy,
}

impl LocationError {
    /// The protocol error code.
    pub fn code(&self) -> &'static str {
        "INVALID_LOCATION"
    }
}

/// The subway network: immutable after loading.
#[derive(Debug)]
pub struct Network {
    /// Line-stations; a station's id is its index here.
    stations: Vec<Station>,
    /// Running sequences, as loaded (kept for validation and the tests).
    lines: Vec<LineSequence>,
    /// Transfer links; `Link::Transfer` indexes this.
    transfers: Vec<Transfer>,
    /// CSR adjacency: the edges of station `i` are `edges[edge_start[i]..edge_start[i + 1]]`.
    edge_start: Vec<u32>,
    edges: Vec<Edge>,
    /// Upper-cased code → station.
    by_code: HashMap<String, StationId>,
    /// Normalised name → its line-stations, in id order. A BTreeMap so that
    /// prefix search is a range scan in a deterministic order.
    by_name: BTreeMap<String, Vec<StationId>>,
    /// Per station, the id of its complex: line-stations joined by transfers.
    complex: Vec<u32>,
    /// (min lat, max lat, min lon, max lon) of all stations.
    bbox: (f64, f64, f64, f64),
}

/// Normalises a station query: drops whitespace and a trailing 역, folds
/// ASCII case (codes such as `102C`).
pub fn normalise(query: &str) -> String {
    let mut s: String = query
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if s.chars().count() > 1 && s.ends_with('역') {
        s.truncate(s.len() - '역'.len_utf8());
    }
    s
}

impl Network {
    /// The network shipped in `data/seoul/`, parsed once per process.
    pub fn embedded() -> Arc<Network> {
        static EMBEDDED: OnceLock<Arc<Network>> = OnceLock::new();
        EMBEDDED
            .get_or_init(|| {
                Arc::new(data::parse_embedded().expect("the embedded network data is valid"))
            })
            .clone()
    }

    /// Loads `stations.csv`, `lines.csv` and `transfers.csv` from `dir`.
    pub fn load_dir(dir: &std::path::Path) -> Result<Network, DataError> {
        data::load_dir(dir)
    }

    /// Builds the indices over validated parts (called by the loader).
    fn from_parts(
        stations: Vec<Station>,
        lines: Vec<LineSequence>,
        transfers: Vec<Transfer>,
    ) -> Network {
        let n = stations.len();
        let mut adj: Vec<Vec<Edge>> = vec![Vec::new(); n];
        let mut push = |from: StationId, to: StationId, link: Link| {
            let list = &mut adj[from.ix()];
            if !list.iter().any(|e| e.to == to) {
                list.push(Edge { to, link });
            }
        };
        for seq in &lines {
            let s = &seq.stations;
            let mut pairs: Vec<(StationId, StationId)> =
                s.windows(2).map(|w| (w[0], w[1])).collect();
            if seq.is_loop && s.len() > 2 {
                pairs.push((s[s.len() - 1], s[0]));
            }
            for (a, b) in pairs {
                let (sa, sb) = (&stations[a.ix()], &stations[b.ix()]);
                let distance_m = geo::haversine_m(sa.lat, sa.lon, sb.lat, sb.lon);
                push(a, b, Link::Ride { distance_m });
                if !seq.oneway {
                    push(b, a, Link::Ride { distance_m });
                }
            }
        }
        for (i, t) in transfers.iter().enumerate() {
            let link = Link::Transfer { index: i as u32 };
            push(t.a, t.b, link);
            push(t.b, t.a, link);
        }
        let mut edge_start = Vec::with_capacity(n + 1);
        let mut edges = Vec::new();
        for list in adj {
            edge_start.push(edges.len() as u32);
            edges.extend(list);
        }
        edge_start.push(edges.len() as u32);

        let mut by_code = HashMap::with_capacity(n);
        let mut by_name: BTreeMap<String, Vec<StationId>> = BTreeMap::new();
        let mut bbox = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for s in &stations {
            by_code.insert(s.code.to_ascii_uppercase(), s.id);
            by_name.entry(normalise(&s.name)).or_default().push(s.id);
            bbox = (
                bbox.0.min(s.lat),
                bbox.1.max(s.lat),
                bbox.2.min(s.lon),
                bbox.3.max(s.lon),
            );
        }

        // Complexes: union-find over transfer links.
        let mut parent: Vec<u32> = (0..n as u32).collect();
        fn find(p: &mut [u32], mut x: u32) -> u32 {
            while p[x as usize] != x {
                p[x as usize] = p[p[x as usize] as usize];
                x = p[x as usize];
            }
            x
        }
        for t in &transfers {
            let (ra, rb) = (find(&mut parent, t.a.0), find(&mut parent, t.b.0));
            if ra != rb {
                parent[ra.max(rb) as usize] = ra.min(rb);
            }
        }
        let complex = (0..n as u32).map(|i| find(&mut parent, i)).collect();

        Network {
            stations,
            lines,
            transfers,
            edge_start,
            edges,
            by_code,
            by_name,
            complex,
            bbox,
        }
    }

    /// All line-stations, indexed by [`StationId`].
    pub fn stations(&self) -> &[Station] {
        &self.stations
    }

    /// One line-station. Panics on an id from another network.
    pub fn station(&self, id: StationId) -> &Station {
        &self.stations[id.ix()]
    }

    /// The running sequences of every line.
    pub fn lines(&self) -> &[LineSequence] {
        &self.lines
    }

    /// The transfer links.
    pub fn transfers(&self) -> &[Transfer] {
        &self.transfers
    }

    /// The directed edges leaving a station (rides and transfers).
    pub fn edges(&self, id: StationId) -> &[Edge] {
        let (a, b) = (self.edge_start[id.ix()], self.edge_start[id.ix() + 1]);
        &self.edges[a as usize..b as usize]
    }

    /// Range of a station's edges in the flat edge array (used by the engine).
    pub(crate) fn edge_range(&self, id: StationId) -> std::ops::Range<usize> {
        self.edge_start[id.ix()] as usize..self.edge_start[id.ix() + 1] as usize
    }

    /// All directed edges, flat (indexed by the engine's per-edge tables).
    pub(crate) fn all_edges(&self) -> &[Edge] {
        &self.edges
    }

    /// The station with this KindMap code (any letter case).
    pub fn by_code(&self, code: &str) -> Option<StationId> {
        self.by_code.get(&code.trim().to_ascii_uppercase()).copied()
    }

    /// The line-stations of the same station complex (joined by transfers),
    /// including `id` itself, in id order.
    pub fn complex_of(&self, id: StationId) -> Vec<StationId> {
        let c = self.complex[id.ix()];
        let name = &self.station(id).name;
        let mut out: Vec<StationId> = self
            .by_name
            .get(&normalise(name))
            .into_iter()
            .flatten()
            .copied()
            .filter(|s| self.complex[s.ix()] == c)
            .collect();
        if out.is_empty() {
            out.push(id);
        }
        out
    }

    /// True when two line-stations belong to the same station complex.
    pub fn same_complex(&self, a: StationId, b: StationId) -> bool {
        self.complex[a.ix()] == self.complex[b.ix()]
    }

    /// Resolves a user's station query to line-stations.
    ///
    /// An exact (normalised) name gives every line-station of that name; a
    /// code gives the line-stations of its complex; a prefix matching exactly
    /// one name gives that name's line-stations. Anything else is
    /// [`RouteError::StationNotFound`] with up to five close names.
    pub fn resolve(&self, query: &str) -> Result<Vec<StationId>, RouteError> {
        let key = normalise(query);
        if !key.is_empty() {
            if let Some(ids) = self.by_name.get(&key) {
                return Ok(ids.clone());
            }
            if let Some(id) = self.by_code(query) {
                return Ok(self.complex_of(id));
            }
            let mut names = self
                .by_name
                .range(key.clone()..)
                .take_while(|(k, _)| k.starts_with(&key));
            if let (Some((_, ids)), None) = (names.next(), names.next()) {
                return Ok(ids.clone());
            }
        }
        Err(RouteError::StationNotFound {
            query: query.to_owned(),
            suggestions: self.suggestions(&key, 5),
        })
    }

    /// Station names close to a normalised query: prefix matches, then names
    /// containing it, then names within a small edit distance.
    fn suggestions(&self, key: &str, limit: usize) -> Vec<String> {
        if key.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::new();
        let name_of = |ids: &Vec<StationId>| self.station(ids[0]).name.clone();
        for (k, ids) in self.by_name.range(key.to_owned()..) {
            if !k.starts_with(key) || out.len() >= limit {
                break;
            }
            out.push(name_of(ids));
        }
        for (k, ids) in &self.by_name {
            if out.len() >= limit {
                break;
            }
            let name = name_of(ids);
            if k.contains(key) && !out.contains(&name) {
                out.push(name);
            }
        }
        if out.len() < limit {
            let klen = key.chars().count();
            let max = (klen / 3).max(1);
            let mut near: Vec<(usize, &String, String)> = self
                .by_name
                .iter()
                .filter_map(|(k, ids)| {
                    let d = edit_distance(key, k);
                    (d <= max).then(|| (d, k, name_of(ids)))
                })
                .collect();
            near.sort();
            for (_, _, name) in near {
                if out.len() >= limit {
                    break;
                }
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// Line-stations whose normalised name starts with the normalised
    /// `prefix`: exact name first, then shorter names, then by name, line
    /// and code. An empty prefix matches nothing.
    pub fn search(&self, prefix: &str, limit: usize) -> Vec<&Station> {
        let key = normalise(prefix);
        if key.is_empty() || limit == 0 {
            return Vec::new();
        }
        let mut names: Vec<(&String, &Vec<StationId>)> = self
            .by_name
            .range(key.clone()..)
            .take_while(|(k, _)| k.starts_with(&key))
            .collect();
        names.sort_by(|a, b| {
            (a.0 != &key, a.0.chars().count(), a.0).cmp(&(b.0 != &key, b.0.chars().count(), b.0))
        });
        let mut out = Vec::new();
        for (_, ids) in names {
            let mut group: Vec<&Station> = ids.iter().map(|&id| self.station(id)).collect();
            group.sort_by(|a, b| (&a.line, &a.code).cmp(&(&b.line, &b.code)));
            for s in group {
                if out.len() == limit {
                    return out;
                }
                out.push(s);
            }
        }
        out
    }

    /// Checks that a fix is a usable location inside the network's area.
    pub fn check_location(&self, lat: f64, lon: f64) -> Result<(), LocationError> {
        if !lat.is_finite() || !lon.is_finite() {
            return Err(LocationError::NotFinite);
        }
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Err(LocationError::OutOfRange);
        }
        let (a, b, c, d) = self.bbox;
        let m = BBOX_MARGIN_DEG;
        if lat < a - m || lat > b + m || lon < c - m || lon > d + m {
            return Err(LocationError::OutsideNetwork);
        }
        Ok(())
    }

    /// The bounding box of all stations: (min lat, max lat, min lon, max lon).
    pub fn bounding_box(&self) -> (f64, f64, f64, f64) {
        self.bbox
    }

    /// The nearest line-station to a point and its distance in metres (the
    /// lowest id wins a tie). Panics on an empty network.
    pub fn nearest_station(&self, lat: f64, lon: f64) -> (StationId, f64) {
        let proj = geo::LocalProjection::new(lat, lon);
        let mut best = (StationId(0), f64::INFINITY);
        for s in &self.stations {
            let (x, y) = proj.project(s.lat, s.lon);
            let d2 = x * x + y * y;
            if d2 < best.1 {
                best = (s.id, d2);
            }
        }
        let s = self.station(best.0);
        (best.0, geo::haversine_m(lat, lon, s.lat, s.lon))
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_drops_spaces_and_the_trailing_station_word() {
        assert_eq!(normalise(" 서울 역 "), "서울");
        assert_eq!(normalise("역삼"), "역삼");
        assert_eq!(normalise("역"), "역");
        assert_eq!(normalise("102c"), "102c");
    }

    #[test]
    fn edit_distance_counts_characters() {
        assert_eq!(edit_distance("강남", "강남"), 0);
        assert_eq!(edit_distance("강냠", "강남"), 1);
        assert_eq!(edit_distance("", "홍대"), 2);
    }
}
