//! `navcast-load`: the companion load client. Not built yet (issue 5); the
//! binary exists so the workspace layout is final from the start.

fn main() {
    eprintln!("navcast-load: not implemented yet; see issue 5");
    std::process::exit(2);
}
