//! The `navcast` command line, kept in the library so tests can parse it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::config::{Config, ConfigError, LogFormat, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "navcast",
    version,
    about = "WebSocket navigation node for accessible transit"
)]
pub struct Cli {
    /// TOML config file (see config/navcast.example.toml).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Listen address, e.g. 0.0.0.0:8080.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Node id shown to clients and operators.
    #[arg(long)]
    pub node_id: Option<String>,
    /// Redis URL (cluster mode).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level / filter directives.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Directory with network data replacing the embedded Seoul network.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the merged configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl Cli {
    /// Merges defaults, the config file, the process environment and flags.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let overrides = Overrides {
            listen: self.listen,
            node_id: self.node_id.clone(),
            redis_url: self.redis_url.clone(),
            log_format: self.log_format,
            log_level: self.log_level.clone(),
            data_dir: self.data_dir.clone(),
        };
        Config::load(self.config.as_deref(), std::env::vars(), &overrides)
    }
}
