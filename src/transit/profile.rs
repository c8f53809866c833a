//! Rider profiles: the weights that make the route engine accessible.
//!
//! A profile is data, not code: every disability type gets the same cost
//! model with its own walking speed, transfer penalties and per-facility
//! penalties. The embedded `data/profiles.toml` carries the reference app's
//! walking speeds; operators can load a tuned file without recompiling.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Facilities;
use super::data::DataError;

/// The embedded profile file, parsed by [`Profiles::embedded`].
const EMBEDDED_PROFILES: &str = include_str!("../../data/profiles.toml");

/// The rider's disability type, as spelled on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DisabilityType {
    /// Wheelchair users and others who need step-free paths.
    #[serde(rename = "PHY")]
    Physical,
    /// Blind and low-vision riders.
    #[serde(rename = "VIS")]
    Visual,
    /// Deaf and hard-of-hearing riders.
    #[serde(rename = "AUD")]
    Auditory,
    /// Elderly riders.
    #[serde(rename = "ELD")]
    Elderly,
    /// No particular needs.
    #[serde(rename = "NONE")]
    None,
}

impl DisabilityType {
    /// Every type, in wire order.
    pub const ALL: [DisabilityType; 5] = [
        DisabilityType::Physical,
        DisabilityType::Visual,
        DisabilityType::Auditory,
        DisabilityType::Elderly,
        DisabilityType::None,
    ];

    /// The wire spelling (`"PHY"`, `"VIS"`, `"AUD"`, `"ELD"`, `"NONE"`).
    pub fn as_str(self) -> &'static str {
        match self {
            DisabilityType::Physical => "PHY",
            DisabilityType::Visual => "VIS",
            DisabilityType::Auditory => "AUD",
            DisabilityType::Elderly => "ELD",
            DisabilityType::None => "NONE",
        }
    }

    /// A dense index (0..5) for per-type tables.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DisabilityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown disability type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown disability type `{0}` (expected PHY, VIS, AUD, ELD or NONE)")]
pub struct UnknownDisabilityType(pub String);

impl FromStr for DisabilityType {
    type Err = UnknownDisabilityType;

    /// Accepts the wire spelling in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DisabilityType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownDisabilityType(s.to_owned()))
    }
}

/// Minutes of generalised cost for a line-station lacking each facility.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacilityPenalties {
    pub elevator: f64,
    pub escalator: f64,
    pub tactile_paving: f64,
    pub staff_help: f64,
    pub visual_display: f64,
    pub audio_guide: f64,
}

impl FacilityPenalties {
    /// The summed penalty for the facilities a line-station lacks.
    pub fn for_missing(&self, f: &Facilities) -> f64 {
        let miss = |has: bool, w: f64| if has { 0.0 } else { w };
        miss(f.elevator, self.elevator)
            + miss(f.escalator, self.escalator)
            + miss(f.tactile_paving, self.tactile_paving)
            + miss(f.staff_help, self.staff_help)
            + miss(f.visual_display, self.visual_display)
            + miss(f.audio_guide, self.audio_guide)
    }
}

/// The route-engine weights of one disability type (see `data/profiles.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Walking speed on transfers, metres per second.
    pub walking_speed_mps: f64,
    /// Multiplier on transfer walking minutes in the generalised cost.
    pub walk_weight: f64,
    /// Flat generalised cost of a change of trains, minutes.
    pub transfer_penalty_min: f64,
    /// Extra cost of a transfer without a step-free path, minutes.
    pub non_step_free_transfer_penalty_min: f64,
    /// Cost of using a line-station without a facility, minutes.
    pub missing_facility_penalty_min: FacilityPenalties,
    /// Advice appended to transfer messages while tracking (may be empty).
    #[serde(default)]
    pub hint: String,
}

impl Profile {
    /// Real walking minutes for `walk_m` metres at this profile's speed.
    pub fn walk_minutes(&self, walk_m: f64) -> f64 {
        walk_m / (self.walking_speed_mps * 60.0)
    }
}

/// One profile per disability type.
#[derive(Debug, Clone, PartialEq)]
pub struct Profiles {
    by_type: [Profile; 5],
}

impl Profiles {
    /// The profiles shipped in `data/profiles.toml`.
    pub fn embedded() -> Profiles {
        Profiles::parse(EMBEDDED_PROFILES, "data/profiles.toml")
            .expect("the embedded data/profiles.toml is valid")
    }

    /// Loads profiles from a TOML file of the same shape as the embedded one.
    pub fn load(path: &Path) -> Result<Profiles, DataError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            file: file.clone(),
            source,
        })?;
        Profiles::parse(&text, &file)
    }

    /// Parses profile TOML; `file` names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Profiles, DataError> {
        let tables: BTreeMap<String, Profile> = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0);
            DataError::Invalid {
                file: file.to_owned(),
                line: line as u64,
                field: "profile".to_owned(),
                message: e.message().to_owned(),
            }
        })?;
        let invalid = |field: String, message: String| DataError::Invalid {
            file: file.to_owned(),
            line: 0,
            field,
            message,
        };
        for key in tables.keys() {
            key.parse::<DisabilityType>()
                .map_err(|e| invalid(key.clone(), e.to_string()))?;
        }
        let get = |t: DisabilityType| -> Result<Profile, DataError> {
            let p = tables
                .get(t.as_str())
                .cloned()
                .ok_or_else(|| invalid(t.as_str().to_owned(), "table is missing".to_owned()))?;
            let pen = &p.missing_facility_penalty_min;
            let checks = [
                ("walking_speed_mps", p.walking_speed_mps, true),
                ("walk_weight", p.walk_weight, false),
                ("transfer_penalty_min", p.transfer_penalty_min, false),
                (
                    "non_step_free_transfer_penalty_min",
                    p.non_step_free_transfer_penalty_min,
                    false,
                ),
                ("missing_facility_penalty_min.elevator", pen.elevator, false),
                (
                    "missing_facility_penalty_min.escalator",
                    pen.escalator,
                    false,
                ),
                (
                    "missing_facility_penalty_min.tactile_paving",
                    pen.tactile_paving,
                    false,
                ),
                (
                    "missing_facility_penalty_min.staff_help",
                    pen.staff_help,
                    false,
                ),
                (
                    "missing_facility_penalty_min.visual_display",
                    pen.visual_display,
                    false,
                ),
                (
                    "missing_facility_penalty_min.audio_guide",
                    pen.audio_guide,
                    false,
                ),
            ];
            for (name, v, positive) in checks {
                let ok = v.is_finite() && if positive { v > 0.0 } else { v >= 0.0 };
                if !ok {
                    let want = if positive { "> 0" } else { ">= 0" };
                    return Err(invalid(
                        format!("{}.{name}", t.as_str()),
                        format!("must be a finite number {want}, got {v}"),
                    ));
                }
            }
            Ok(p)
        };
        Ok(Profiles {
            by_type: [
                get(DisabilityType::Physical)?,
                get(DisabilityType::Visual)?,
                get(DisabilityType::Auditory)?,
                get(DisabilityType::Elderly)?,
                get(DisabilityType::None)?,
            ],
        })
    }

    /// The profile of a disability type.
    pub fn get(&self, t: DisabilityType) -> &Profile {
        &self.by_type[t.index()]
    }
}

impl Default for Profiles {
    fn default() -> Self {
        Profiles::embedded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_profiles_carry_the_reference_walking_speeds() {
        let p = Profiles::embedded();
        assert_eq!(p.get(DisabilityType::Physical).walking_speed_mps, 0.79);
        assert_eq!(p.get(DisabilityType::Visual).walking_speed_mps, 0.76);
        assert_eq!(p.get(DisabilityType::Auditory).walking_speed_mps, 0.98);
        assert_eq!(p.get(DisabilityType::Elderly).walking_speed_mps, 0.65);
    }

    #[test]
    fn disability_type_round_trips() {
        for t in DisabilityType::ALL {
            assert_eq!(t.as_str().parse::<DisabilityType>(), Ok(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
        assert_eq!(
            "phy".parse::<DisabilityType>(),
            Ok(DisabilityType::Physical)
        );
        assert!("XYZ".parse::<DisabilityType>().is_err());
    }

    #[test]
    fn a_bad_profile_file_names_the_field() {
        let text = EMBEDDED_PROFILES.replace("walking_speed_mps = 0.79", "walking_speed_mps = -1");
        let err = Profiles::parse(&text, "p.toml").unwrap_err().to_string();
        assert!(err.contains("PHY.walking_speed_mps"), "{err}");
        let err = Profiles::parse("[PHY]\nwalking_speed_mps = \"x\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("p.toml:"), "{err}");
    }
}
