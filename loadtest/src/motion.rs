//! Where a rider is: along its route's stations at (compressed) subway
//! speed, or along a recorded GPS trace, with GPS drift on every fix.

use std::path::Path;

use anyhow::{Context, bail};
use navcast::transit::geo::haversine_m;

/// Metres per degree of latitude.
const M_PER_DEG: f64 = 111_320.0;

/// Moves `(lat, lon)` by `dist_m` towards `bearing` (radians from north).
pub(crate) fn offset(lat: f64, lon: f64, dist_m: f64, bearing: f64) -> (f64, f64) {
    let dlat = dist_m * bearing.cos() / M_PER_DEG;
    let dlon = dist_m * bearing.sin() / (M_PER_DEG * lat.to_radians().cos().max(0.01));
    (lat + dlat, lon + dlon)
}

/// A polyline through a route's stations, measured in metres.
#[derive(Debug, Clone)]
pub(crate) struct Walk {
    points: Vec<(f64, f64)>,
    /// Distance from the first point to each point.
    cum: Vec<f64>,
}

impl Walk {
    pub(crate) fn new(points: Vec<(f64, f64)>) -> Walk {
        let mut cum = Vec::with_capacity(points.len());
        let mut d = 0.0;
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                let q = points[i - 1];
                d += haversine_m(q.0, q.1, p.0, p.1);
            }
            cum.push(d);
        }
        Walk { points, cum }
    }

    pub(crate) fn length_m(&self) -> f64 {
        self.cum.last().copied().unwrap_or(0.0)
    }

    /// The point `d` metres along (clamped to the ends).
    pub(crate) fn at(&self, d: f64) -> (f64, f64) {
        let Some(first) = self.points.first() else {
            return (0.0, 0.0);
        };
        if d <= 0.0 || self.points.len() == 1 {
            return *first;
        }
        let i = self.cum.partition_point(|c| *c < d);
        if i >= self.points.len() {
            return *self.points.last().unwrap_or(first);
        }
        let (a, b) = (self.points[i - 1], self.points[i]);
        let span = self.cum[i] - self.cum[i - 1];
        let f = if span > 0.0 {
            (d - self.cum[i - 1]) / span
        } else {
            1.0
        };
        (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f)
    }
}

/// A recorded GPS trace: fixes with their time offsets, replayed in a loop.
#[derive(Debug, Clone)]
pub(crate) struct Trace {
    /// (seconds from the first fix, lat, lon), increasing in time.
    fixes: Vec<(f64, f64, f64)>,
}

impl Trace {
    pub(crate) fn load(path: &Path) -> anyhow::Result<Trace> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading trace {}", path.display()))?;
        let is_gpx = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gpx"))
            || text.trim_start().starts_with("<?xml")
            || text.contains("<gpx");
        let trace = if is_gpx {
            Trace::parse_gpx(&text)
        } else {
            Trace::parse_csv(&text)
        };
        trace.with_context(|| format!("trace {}", path.display()))
    }

    /// CSV `t,lat,lon` (a header line is skipped).
    pub(crate) fn parse_csv(text: &str) -> anyhow::Result<Trace> {
        let mut fixes = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            if cols.len() < 3 {
                bail!("line {}: expected t,lat,lon", n + 1);
            }
            let parsed: Result<Vec<f64>, _> = cols[..3].iter().map(|c| c.parse::<f64>()).collect();
            match parsed {
                Ok(v) => fixes.push((v[0], v[1], v[2])),
                Err(_) if fixes.is_empty() => continue, // header
                Err(_) => bail!("line {}: not numbers", n + 1),
            }
        }
        Trace::from_fixes(fixes)
    }

    /// GPX: every `<trkpt lat=… lon=…>` (or `<rtept>`/`<wpt>`), timed by
    /// its `<time>` when present, one second apart otherwise.
    pub(crate) fn parse_gpx(text: &str) -> anyhow::Result<Trace> {
        let mut fixes = Vec::new();
        let mut rest = text;
        let mut n = 0.0;
        while let Some(i) = ["<trkpt", "<rtept", "<wpt"]
            .iter()
            .filter_map(|tag| rest.find(tag))
            .min()
        {
            rest = &rest[i..];
            let tag_end = rest.find('>').context("unterminated point tag")?;
            let tag = &rest[..tag_end];
            let lat = attr(tag, "lat").context("point without lat")?;
            let lon = attr(tag, "lon").context("point without lon")?;
            let after = &rest[tag_end..];
            let close = ["</trkpt>", "</rtept>", "</wpt>", "<trkpt", "<rtept", "<wpt"]
                .iter()
                .filter_map(|t| after.find(t))
                .min()
                .unwrap_or(after.len());
            let body = if tag.ends_with('/') {
                ""
            } else {
                &after[..close]
            };
            let t = match (body.find("<time>"), body.find("</time>")) {
                (Some(a), Some(b)) if b > a => iso_seconds(&body[a + 6..b]),
                _ => None,
            };
            fixes.push((t.unwrap_or(n), lat, lon));
            n += 1.0;
            rest = &rest[tag_end..];
        }
        if let Some(t0) = fixes.first().map(|f| f.0) {
            for f in &mut fixes {
                f.0 -= t0;
            }
        }
        Trace::from_fixes(fixes)
    }

    fn from_fixes(mut fixes: Vec<(f64, f64, f64)>) -> anyhow::Result<Trace> {
        if fixes.len() < 2 {
            bail!("a trace needs at least two fixes");
        }
        for f in &fixes {
            if !(-90.0..=90.0).contains(&f.1) || !(-180.0..=180.0).contains(&f.2) {
                bail!("fix out of range: {f:?}");
            }
        }
        fixes.sort_by(|a, b| a.0.total_cmp(&b.0));
        let t0 = fixes[0].0;
        for f in &mut fixes {
            f.0 -= t0;
        }
        if fixes.last().map(|f| f.0).unwrap_or(0.0) <= 0.0 {
            bail!("a trace's fixes need increasing times");
        }
        Ok(Trace { fixes })
    }

    pub(crate) fn duration_s(&self) -> f64 {
        self.fixes.last().map(|f| f.0).unwrap_or(0.0)
    }

    /// The position `t` seconds in, looping over the trace.
    pub(crate) fn at(&self, t: f64) -> (f64, f64) {
        let d = self.duration_s();
        let t = if d > 0.0 { t.rem_euclid(d) } else { 0.0 };
        let i = self.fixes.partition_point(|f| f.0 <= t).max(1);
        if i >= self.fixes.len() {
            let l = self.fixes[self.fixes.len() - 1];
            return (l.1, l.2);
        }
        let (a, b) = (self.fixes[i - 1], self.fixes[i]);
        let f = if b.0 > a.0 {
            (t - a.0) / (b.0 - a.0)
        } else {
            0.0
        };
        (a.1 + (b.1 - a.1) * f, a.2 + (b.2 - a.2) * f)
    }
}

fn attr(tag: &str, name: &str) -> Option<f64> {
    for quote in ['"', '\''] {
        let key = format!(" {name}={quote}");
        if let Some(i) = tag.find(&key) {
            let rest = &tag[i + key.len()..];
            let end = rest.find(quote)?;
            return rest[..end].trim().parse().ok();
        }
    }
    None
}

/// `YYYY-MM-DDTHH:MM:SS[.fff][Z]` as seconds since 1970 (UTC assumed).
fn iso_seconds(s: &str) -> Option<f64> {
    let s = s.trim().trim_end_matches('Z');
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.split(['+']).next()?;
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let ss = t.next().unwrap_or("0").parse::<f64>().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_interpolates_and_clamps() {
        let w = Walk::new(vec![(37.50, 127.00), (37.51, 127.00), (37.51, 127.01)]);
        assert!(
            (w.length_m() - (1112.0 + 883.0)).abs() < 20.0,
            "{}",
            w.length_m()
        );
        let mid = w.at(556.0);
        assert!((mid.0 - 37.505).abs() < 1e-4);
        assert_eq!(w.at(-5.0), (37.50, 127.00));
        assert_eq!(w.at(1e9), (37.51, 127.01));
    }

    #[test]
    fn offset_moves_by_the_distance() {
        let (lat, lon) = offset(37.5, 127.0, 1000.0, 1.0);
        let d = haversine_m(37.5, 127.0, lat, lon);
        assert!((d - 1000.0).abs() < 5.0, "{d}");
    }

    #[test]
    fn csv_and_gpx_traces() {
        let t = Trace::parse_csv("t,lat,lon\n0,37.5,127.0\n10,37.6,127.0\n").unwrap();
        let (lat, _) = t.at(5.0);
        assert!((lat - 37.55).abs() < 1e-9);
        let (lat, _) = t.at(15.0);
        assert!((lat - 37.55).abs() < 1e-9, "loops");
        let gpx = r#"<?xml version="1.0"?><gpx><trk><trkseg>
<trkpt lat="37.5" lon="127.0"><time>2024-05-01T10:00:00Z</time></trkpt>
<trkpt lat="37.6" lon="127.1"><time>2024-05-01T10:00:20Z</time></trkpt>
</trkseg></trk></gpx>"#;
        let t = Trace::parse_gpx(gpx).unwrap();
        assert_eq!(t.duration_s(), 20.0);
        let (lat, lon) = t.at(10.0);
        assert!((lat - 37.55).abs() < 1e-9 && (lon - 127.05).abs() < 1e-9);
        assert!(Trace::parse_csv("0,1,2\n").is_err());
    }
}
