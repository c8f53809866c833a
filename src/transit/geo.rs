//! Geometry on the scale of a city: great-circle distances and a local flat
//! projection.
//!
//! Haversine is exact enough for distances between stations; snapping a GPS
//! fix onto a polyline needs projections of points onto segments, which is
//! plain vector algebra once the neighbourhood is flattened with an
//! equirectangular projection centred on the fix. Over a few kilometres the
//! flattening error is far below GPS noise.

/// Mean Earth radius in metres (IUGG).
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres between two WGS84 points given in degrees.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// An equirectangular projection centred on a reference point: maps degrees
/// to metres east (`x`) and north (`y`) of that point.
#[derive(Debug, Clone, Copy)]
pub struct LocalProjection {
    lat0: f64,
    lon0: f64,
    /// Metres per degree of longitude at the reference latitude.
    kx: f64,
    /// Metres per degree of latitude.
    ky: f64,
}

impl LocalProjection {
    /// A projection centred on `(lat0, lon0)`.
    pub fn new(lat0: f64, lon0: f64) -> Self {
        let ky = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        Self {
            lat0,
            lon0,
            kx: ky * lat0.to_radians().cos(),
            ky,
        }
    }

    /// Metres east and north of the reference point.
    #[inline]
    pub fn project(&self, lat: f64, lon: f64) -> (f64, f64) {
        ((lon - self.lon0) * self.kx, (lat - self.lat0) * self.ky)
    }
}

/// The closest point of segment `a`–`b` to `p` (all projected, in metres):
/// returns the segment parameter `t` in `[0, 1]` and the distance.
#[inline]
pub fn project_on_segment(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (cx, cy) = (a.0 + t * dx, a.1 + t * dy);
    (t, ((p.0 - cx).powi(2) + (p.1 - cy).powi(2)).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_a_known_distance() {
        // One degree of latitude is about 111.2 km.
        let d = haversine_m(37.0, 127.0, 38.0, 127.0);
        assert!((d - 111_195.0).abs() < 50.0, "{d}");
        assert_eq!(haversine_m(37.5, 127.0, 37.5, 127.0), 0.0);
    }

    #[test]
    fn projection_agrees_with_haversine_nearby() {
        let p = LocalProjection::new(37.55, 126.97);
        let (x, y) = p.project(37.56, 126.99);
        let flat = (x * x + y * y).sqrt();
        let round = haversine_m(37.55, 126.97, 37.56, 126.99);
        assert!((flat - round).abs() < 1.0, "{flat} vs {round}");
    }

    #[test]
    fn segment_projection_clamps_to_the_ends() {
        let (t, d) = project_on_segment((5.0, 3.0), (0.0, 0.0), (10.0, 0.0));
        assert_eq!((t, d), (0.5, 3.0));
        let (t, d) = project_on_segment((-4.0, 3.0), (0.0, 0.0), (10.0, 0.0));
        assert_eq!((t, d), (0.0, 5.0));
    }
}
