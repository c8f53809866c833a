//! `navcast-load`: the companion load client (issue 5). The crate already
//! holds `navcast-bench`, the node's micro-benchmarks; the step-load client
//! itself is not built yet.

fn main() {
    eprintln!(
        "navcast-load: the step-load client is not built yet; see navcast-bench for the node benchmarks"
    );
    std::process::exit(2);
}
