//! Latency histograms (HDR, microseconds) and their exact serialised form.
//!
//! Histograms are written with hdrhistogram's V2 encoding, base64 in JSON,
//! so summaries made by several processes or machines merge exactly
//! (`navcast-load merge`). A histogram is allocated only when it gets its
//! first sample: a stage or metric without samples costs nothing.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Largest latency kept, µs (60 s); larger samples are clamped to it.
pub(crate) const HIGHEST_US: u64 = 60_000_000;
/// Significant digits: 3 keeps every value within 0.1 %.
pub(crate) const SIGFIG: u8 = 3;

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG).expect("valid histogram bounds")
}

/// A lazily allocated latency histogram in µs.
#[derive(Clone, Default)]
pub struct Hist(Option<Box<Histogram<u64>>>);

impl std::fmt::Debug for Hist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hist(n={})", self.len())
    }
}

impl Hist {
    pub(crate) fn record(&mut self, us: u64) {
        self.0
            .get_or_insert_with(|| Box::new(new_histogram()))
            .saturating_record(us.clamp(1, HIGHEST_US));
    }

    pub(crate) fn add(&mut self, other: &Hist) {
        if let Some(o) = &other.0
            && !o.is_empty()
        {
            let h = self.0.get_or_insert_with(|| Box::new(new_histogram()));
            // Same bounds on both sides, so this cannot fail; a histogram
            // read from a foreign file with wider bounds is added value by value.
            if h.add(o.as_ref()).is_err() {
                for v in o.iter_recorded() {
                    h.saturating_record_n(
                        v.value_iterated_to().min(HIGHEST_US),
                        v.count_at_value(),
                    );
                }
            }
        }
    }

    /// Removes `other`'s samples (for sliding windows); `other` must have
    /// been added before.
    pub(crate) fn subtract(&mut self, other: &Hist) {
        if let (Some(h), Some(o)) = (&mut self.0, &other.0) {
            let _ = h.subtract(o.as_ref());
        }
    }

    pub fn len(&self) -> u64 {
        self.0.as_ref().map(|h| h.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Samples at or below `us` (within the histogram's precision).
    pub(crate) fn count_at_most(&self, us: u64) -> u64 {
        self.0
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.count_between(0, us))
            .unwrap_or(0)
    }

    /// The value at quantile `q` (0..=1), µs; `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        self.0
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(q))
    }

    pub fn min(&self) -> Option<u64> {
        self.0.as_ref().filter(|h| !h.is_empty()).map(|h| h.min())
    }

    pub(crate) fn max(&self) -> Option<u64> {
        self.0.as_ref().filter(|h| !h.is_empty()).map(|h| h.max())
    }

    pub(crate) fn reset(&mut self) {
        if let Some(h) = &mut self.0 {
            h.reset();
        }
    }

    /// V2 encoding; empty for an empty histogram.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(h) = &self.0
            && !h.is_empty()
        {
            V2Serializer::new()
                .serialize(h.as_ref(), &mut out)
                .expect("V2 serialisation into memory");
        }
        out
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> anyhow::Result<Hist> {
        if bytes.is_empty() {
            return Ok(Hist::default());
        }
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| anyhow::anyhow!("bad histogram: {e:?}"))?;
        let mut out = Hist::default();
        out.add(&Hist(Some(Box::new(h))));
        Ok(out)
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(self.to_bytes()))
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hist, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = STANDARD.decode(text).map_err(serde::de::Error::custom)?;
        Hist::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// A histogram kept in its encoded form (history rows: one per metric
/// per second would be too big as live histograms).
#[derive(Clone, Default, PartialEq)]
pub(crate) struct PackedHist(pub(crate) Vec<u8>);

impl std::fmt::Debug for PackedHist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedHist({} bytes)", self.0.len())
    }
}

impl PackedHist {
    pub(crate) fn unpack(&self) -> Hist {
        Hist::from_bytes(&self.0).unwrap_or_default()
    }
}

impl Serialize for PackedHist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for PackedHist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PackedHist, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = STANDARD.decode(text).map_err(serde::de::Error::custom)?;
        Hist::from_bytes(&bytes).map_err(serde::de::Error::custom)?;
        Ok(PackedHist(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_merges_exactly() {
        let mut a = Hist::default();
        let mut b = Hist::default();
        for v in 1..=1000 {
            a.record(v);
            b.record(v * 7);
        }
        let json = serde_json::to_string(&a).unwrap();
        let back: Hist = serde_json::from_str(&json).unwrap();
        assert_eq!(back.len(), 1000);
        assert_eq!(back.quantile(0.5), a.quantile(0.5));
        let mut both = a.clone();
        both.add(&b);
        let mut both2 = back;
        both2.add(&Hist::from_bytes(&b.to_bytes()).unwrap());
        assert_eq!(both.len(), 2000);
        for q in [0.5, 0.9, 0.99, 1.0] {
            assert_eq!(both.quantile(q), both2.quantile(q));
        }
        both.subtract(&b);
        assert_eq!(both.quantile(1.0), a.quantile(1.0));
        assert!(Hist::default().quantile(0.5).is_none());
        assert_eq!(serde_json::to_string(&Hist::default()).unwrap(), "\"\"");
    }

    #[test]
    fn clamps_out_of_range() {
        let mut h = Hist::default();
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.len(), 2);
        assert!(h.max().unwrap() >= HIGHEST_US);
    }
}
