//! The load client's tests run real nodes (`navcast::testing`, shared with
//! the node's own tests) and the real CLI in-process.
#![allow(dead_code)]

use std::path::PathBuf;

use clap::Parser;
use navcast_load::{Cli, Outcome};

pub use navcast::testing::TestNode as Node;

pub fn profile(name: &str) -> String {
    let p: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "config", "loadtest", name]
        .iter()
        .collect();
    p.display().to_string()
}

/// Runs the real CLI in-process.
pub async fn cli(args: &[&str]) -> anyhow::Result<Option<Outcome>> {
    let mut argv = vec!["navcast-load"];
    argv.extend_from_slice(args);
    navcast_load::run(Cli::parse_from(argv)).await
}

/// `messages_in` of one type, summed over nodes.
pub async fn messages_in(nodes: &[&Node], kind: &str) -> u64 {
    let mut n = 0;
    for node in nodes {
        n += node.stats().await["messages_in"][kind]
            .as_u64()
            .unwrap_or(0);
    }
    n
}
