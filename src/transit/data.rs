//! Loading the network from its CSV files (format in `data/README.md`).
//!
//! The same parser serves the copy embedded in the binary and a directory
//! an operator points at, so a better data file needs no code change. Every
//! rejection names the file, the line and the field, because the people who
//! fix data files are rarely the people who read Rust.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{Facilities, LineSequence, Network, Station, StationId, Transfer};

const EMBEDDED_STATIONS: &str = include_str!("../../data/seoul/stations.csv");
const EMBEDDED_LINES: &str = include_str!("../../data/seoul/lines.csv");
const EMBEDDED_TRANSFERS: &str = include_str!("../../data/seoul/transfers.csv");

/// Why a data file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A row or field is malformed or inconsistent. Line 0 means the whole file.
    #[error("{file}:{line}: field `{field}`: {message}")]
    Invalid {
        file: String,
        line: u64,
        field: String,
        message: String,
    },
}

/// Parses the copy of `data/seoul/` compiled into the binary.
pub(super) fn parse_embedded() -> Result<Network, DataError> {
    parse(
        ("data/seoul/stations.csv", EMBEDDED_STATIONS),
        ("data/seoul/lines.csv", EMBEDDED_LINES),
        ("data/seoul/transfers.csv", EMBEDDED_TRANSFERS),
    )
}

/// Reads and parses the three files of a data directory.
pub(super) fn load_dir(dir: &Path) -> Result<Network, DataError> {
    let read = |name: &str| -> Result<(String, String), DataError> {
        let path = dir.join(name);
        let file = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((file, text)),
            Err(source) => Err(DataError::Io { file, source }),
        }
    };
    let (sf, st) = read("stations.csv")?;
    let (lf, lt) = read("lines.csv")?;
    let (tf, tt) = read("transfers.csv")?;
    parse((&sf, &st), (&lf, &lt), (&tf, &tt))
}

/// One CSV file being read: its name for errors and its column indices.
struct Table<'a> {
    file: &'a str,
    columns: HashMap<String, usize>,
    rows: Vec<(u64, csv::StringRecord)>,
}

impl<'a> Table<'a> {
    fn read(file: &'a str, text: &str, required: &[&str]) -> Result<Table<'a>, DataError> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let err = |line: u64, field: &str, message: String| DataError::Invalid {
            file: file.to_owned(),
            line,
            field: field.to_owned(),
            message,
        };
        let headers = rdr
            .headers()
            .map_err(|e| err(1, "header", e.to_string()))?
            .clone();
        let columns: HashMap<String, usize> = headers
            .iter()
            .enumerate()
            .map(|(i, h)| (h.trim_start_matches('\u{feff}').to_owned(), i))
            .collect();
        for col in required {
            if !columns.contains_key(*col) {
                return Err(err(1, col, "missing column in the header".to_owned()));
            }
        }
        let mut rows = Vec::new();
        for rec in rdr.records() {
            let rec = rec.map_err(|e| {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                err(line, "row", e.to_string())
            })?;
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            if rec.iter().all(|f| f.is_empty()) {
                continue;
            }
            rows.push((line, rec));
        }
        Ok(Table {
            file,
            columns,
            rows,
        })
    }

    fn err(&self, line: u64, field: &str, message: impl Into<String>) -> DataError {
        DataError::Invalid {
            file: self.file.to_owned(),
            line,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// A field's text; empty when an optional column is absent.
    fn get<'r>(&self, rec: &'r csv::StringRecord, col: &str) -> &'r str {
        self.columns
            .get(col)
            .and_then(|&i| rec.get(i))
            .unwrap_or("")
    }

    fn text(&self, line: u64, rec: &csv::StringRecord, col: &str) -> Result<String, DataError> {
        let v = self.get(rec, col);
        if v.is_empty() {
            return Err(self.err(line, col, "must not be empty"));
        }
        Ok(v.to_owned())
    }

    fn number(
        &self,
        line: u64,
        rec: &csv::StringRecord,
        col: &str,
        range: std::ops::RangeInclusive<f64>,
    ) -> Result<f64, DataError> {
        let v = self.get(rec, col);
        let x: f64 = v
            .parse()
            .map_err(|_| self.err(line, col, format!("`{v}` is not a number")))?;
        if !x.is_finite() || !range.contains(&x) {
            return Err(self.err(
                line,
                col,
                format!("{x} is outside {}..={}", range.start(), range.end()),
            ));
        }
        Ok(x)
    }

    /// `Y`/`N`; `default` applies when the column is absent or the field empty.
    fn flag(
        &self,
        line: u64,
        rec: &csv::StringRecord,
        col: &str,
        default: Option<bool>,
    ) -> Result<bool, DataError> {
        match (self.get(rec, col), default) {
            ("Y" | "y", _) => Ok(true),
            ("N" | "n", _) => Ok(false),
            ("", Some(d)) => Ok(d),
            (v, _) => Err(self.err(line, col, format!("`{v}` is not Y or N"))),
        }
    }
}

const STATION_COLUMNS: &[&str] = &[
    "code",
    "name",
    "line",
    "lat",
    "lon",
    "elevator",
    "escalator",
    "tactile_paving",
    "staff_help",
    "visual_display",
    "audio_guide",
];

fn parse(
    (sfile, stext): (&str, &str),
    (lfile, ltext): (&str, &str),
    (tfile, ttext): (&str, &str),
) -> Result<Network, DataError> {
    // Stations.
    let t = Table::read(sfile, stext, STATION_COLUMNS)?;
    let mut stations = Vec::with_capacity(t.rows.len());
    let mut index: HashMap<String, (StationId, u64)> = HashMap::new();
    for (line, rec) in &t.rows {
        let line = *line;
        let code = t.text(line, rec, "code")?;
        if code.contains('|') {
            return Err(t.err(line, "code", format!("`{code}` must not contain `|`")));
        }
        let id = StationId(stations.len() as u32);
        if let Some((_, first)) = index.get(&code.to_ascii_uppercase()) {
            return Err(t.err(
                line,
                "code",
                format!("duplicate code {code} (first on line {first})"),
            ));
        }
        index.insert(code.to_ascii_uppercase(), (id, line));
        let facilities = Facilities {
            elevator: t.flag(line, rec, "elevator", None)?,
            escalator: t.flag(line, rec, "escalator", None)?,
            tactile_paving: t.flag(line, rec, "tactile_paving", None)?,
            staff_help: t.flag(line, rec, "staff_help", None)?,
            visual_display: t.flag(line, rec, "visual_display", None)?,
            audio_guide: t.flag(line, rec, "audio_guide", None)?,
        };
        let fsrc = t.get(rec, "facilities_source");
        stations.push(Station {
            id,
            code,
            name: t.text(line, rec, "name")?,
            line: t.text(line, rec, "line")?,
            lat: t.number(line, rec, "lat", -90.0..=90.0)?,
            lon: t.number(line, rec, "lon", -180.0..=180.0)?,
            facilities,
            facilities_estimated: fsrc.is_empty() || fsrc.eq_ignore_ascii_case("estimated"),
            coord_source: t.get(rec, "coord_source").to_owned(),
        });
    }
    if stations.is_empty() {
        return Err(t.err(0, "code", "no stations"));
    }
    let station_lines: Vec<u64> = t.rows.iter().map(|(l, _)| *l).collect();

    // Line sequences.
    let t = Table::read(lfile, ltext, &["sequence", "line", "loop", "stations"])?;
    let mut lines = Vec::with_capacity(t.rows.len());
    let mut seen_seq = HashSet::new();
    let mut in_sequence = vec![false; stations.len()];
    for (line, rec) in &t.rows {
        let line = *line;
        let name = t.text(line, rec, "sequence")?;
        if !seen_seq.insert(name.clone()) {
            return Err(t.err(line, "sequence", format!("duplicate sequence {name}")));
        }
        let line_name = t.text(line, rec, "line")?;
        let is_loop = t.flag(line, rec, "loop", None)?;
        let oneway = t.flag(line, rec, "oneway", Some(false))?;
        let mut ids = Vec::new();
        for code in t.text(line, rec, "stations")?.split('|') {
            let code = code.trim();
            let Some(&(id, _)) = index.get(&code.to_ascii_uppercase()) else {
                return Err(t.err(line, "stations", format!("unknown station code `{code}`")));
            };
            let s = &stations[id.ix()];
            if s.line != line_name {
                return Err(t.err(
                    line,
                    "stations",
                    format!(
                        "station {code} ({}) is on {}, not {line_name}",
                        s.name, s.line
                    ),
                ));
            }
            if ids.contains(&id) {
                return Err(t.err(line, "stations", format!("station {code} appears twice")));
            }
            in_sequence[id.ix()] = true;
            ids.push(id);
        }
        if ids.len() < 2 {
            return Err(t.err(line, "stations", "a sequence needs at least two stations"));
        }
        lines.push(LineSequence {
            name,
            line: line_name,
            is_loop,
            oneway,
            stations: ids,
        });
    }
    if let Some(i) = in_sequence.iter().position(|b| !b) {
        return Err(DataError::Invalid {
            file: sfile.to_owned(),
            line: station_lines[i],
            field: "code".to_owned(),
            message: format!(
                "station {} is in no line sequence of {lfile}",
                stations[i].code
            ),
        });
    }

    // Transfers.
    let t = Table::read(
        tfile,
        ttext,
        &["from_code", "to_code", "walk_m", "step_free"],
    )?;
    let mut transfers = Vec::with_capacity(t.rows.len());
    let mut seen_pair = HashSet::new();
    for (line, rec) in &t.rows {
        let line = *line;
        let id_of = |col: &str| -> Result<StationId, DataError> {
            let code = t.text(line, rec, col)?;
            index
                .get(&code.to_ascii_uppercase())
                .map(|&(id, _)| id)
                .ok_or_else(|| t.err(line, col, format!("unknown station code `{code}`")))
        };
        let (a, b) = (id_of("from_code")?, id_of("to_code")?);
        if a == b {
            return Err(t.err(line, "to_code", "a transfer needs two different stations"));
        }
        if !seen_pair.insert((a.min(b), a.max(b))) {
            return Err(t.err(line, "to_code", "duplicate transfer pair"));
        }
        let source = t.get(rec, "source");
        transfers.push(Transfer {
            a,
            b,
            walk_m: t.number(line, rec, "walk_m", 0.0..=5000.0)?,
            step_free: t.flag(line, rec, "step_free", None)?,
            estimated: source.is_empty() || source.eq_ignore_ascii_case("estimated"),
        });
    }

    Ok(Network::from_parts(stations, lines, transfers))
}
