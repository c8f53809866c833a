//! Small synthetic networks written to a tempdir, so engine behaviour can be
//! tested independently of the shipped (partly estimated) data.

use navcast::transit::Network;

/// A station row with every facility present.
pub fn station(code: &str, name: &str, line: &str, lat: f64, lon: f64) -> String {
    format!("{code},{name},{line},{lat},{lon},test,Y,Y,Y,Y,Y,Y,test")
}

/// A station row with explicit facility flags (`"YYYYYY"` order: elevator,
/// escalator, tactile_paving, staff_help, visual_display, audio_guide).
pub fn station_with(code: &str, name: &str, line: &str, lat: f64, lon: f64, flags: &str) -> String {
    let f: Vec<String> = flags.chars().map(|c| c.to_string()).collect();
    format!("{code},{name},{line},{lat},{lon},test,{},test", f.join(","))
}

/// Writes the three files and loads them.
pub fn network(stations: &[String], lines: &[&str], transfers: &[&str]) -> Network {
    let dir = tempfile::tempdir().unwrap();
    let head = "code,name,line,lat,lon,coord_source,elevator,escalator,tactile_paving,staff_help,visual_display,audio_guide,facilities_source";
    std::fs::write(
        dir.path().join("stations.csv"),
        format!("{head}\n{}\n", stations.join("\n")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("lines.csv"),
        format!("sequence,line,loop,oneway,stations\n{}\n", lines.join("\n")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("transfers.csv"),
        format!(
            "from_code,to_code,walk_m,step_free,source\n{}\n",
            transfers.join("\n")
        ),
    )
    .unwrap();
    Network::load_dir(dir.path()).unwrap()
}

/// Two parallel east–west lines A (south) and B (north) joined at two
/// places: a short transfer at X (no step-free path) and a step-free one at
/// Y farther east. Riding from A1 (west end of A) to B-only station BZ.
///
/// ```text
///   B:  BW --- X(B) --- BM --- Y(B) --- BZ
///   A:  A1 --- X(A) --------- Y(A)
/// ```
pub fn two_lines(x_step_free: bool, x_flags: &str) -> Network {
    two_lines_with(x_step_free, x_flags, true)
}

/// [`two_lines`], optionally without the transfer at Y.
pub fn two_lines_with(x_step_free: bool, x_flags: &str, with_y: bool) -> Network {
    let lat_a = 37.50;
    let lat_b = 37.501;
    let stations = vec![
        station("A1", "에이일", "A선", lat_a, 127.000),
        station_with("A2", "엑스", "A선", lat_a, 127.010, x_flags),
        station("A3", "와이", "A선", lat_a, 127.040),
        station("B1", "비서", "B선", lat_b, 126.990),
        station_with("B2", "엑스", "B선", lat_b, 127.010, x_flags),
        station("B3", "비중", "B선", lat_b, 127.025),
        station("B4", "와이", "B선", lat_b, 127.040),
        station("B5", "비끝", "B선", lat_b, 127.060),
    ];
    let x = if x_step_free {
        "A2,B2,100,Y,test"
    } else {
        "A2,B2,100,N,test"
    };
    network(
        &stations,
        &["A,A선,N,N,A1|A2|A3", "B,B선,N,N,B1|B2|B3|B4|B5"],
        &[x, "A3,B4,150,Y,test"][..if with_y { 2 } else { 1 }],
    )
}
