//! The raw settings: every key optional, in one shape that clap fills from flags and
//! `NUMGEN_*` variables and serde fills from the TOML file; [`Settings::or`] layers them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Deserializer};

use super::{ConfigError, Secret, bad};

#[derive(Parser, Debug)]
#[command(
    name = "numgen",
    version,
    about = "numgen issues unique numbers (order numbers, invoices, ticket IDs) over HTTP.",
    long_about = "numgen issues unique numbers (order numbers, invoices, ticket IDs) over HTTP.\n\n\
        Every setting can come from the config file (--config), from an environment variable \
        (NUMGEN_ + the key in capitals) or from a flag (--key-with-dashes); flags override \
        variables, which override the file."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (standalone without --etcd-endpoints, cluster mode with them).
    Serve(Box<Settings>),
    /// Exit 0 when the server at `listen` answers GET /health (for container health checks).
    Health {
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Print the fields of an ID as JSON (uses the layout settings).
    Decode {
        /// The ID, a decimal integer.
        id: String,
        #[command(flatten)]
        settings: Box<Settings>,
    },
}

/// Every key, optional: as read from one source.
#[derive(Args, Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML config file.
    #[arg(long, env = "NUMGEN_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "NUMGEN_LISTEN")]
    pub listen: Option<String>,
    /// Address other nodes and clients reach this node at [default: the bound address].
    #[arg(long, env = "NUMGEN_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Standalone data directory (prefix configs, counters, high timestamps) [default: ./data].
    #[arg(long, env = "NUMGEN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Bearer token for /prefix-configs. Standalone without one: generated into the data dir.
    #[arg(long, env = "NUMGEN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// etcd endpoints, comma-separated; enables cluster mode.
    #[arg(long, env = "NUMGEN_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Root of numgen's keys in etcd [default: /numgen].
    #[arg(long, env = "NUMGEN_ETCD_ROOT")]
    pub etcd_root: Option<String>,
    /// etcd user name.
    #[arg(long, env = "NUMGEN_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// etcd password.
    #[arg(long, env = "NUMGEN_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<Secret>,
    /// CA certificate (PEM) for https etcd endpoints.
    #[arg(long, env = "NUMGEN_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, env = "NUMGEN_ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, env = "NUMGEN_ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
    /// The global etcd tier, comma-separated: prefix configs, sequence counters and the
    /// layout, one for every datacenter [default: the etcd_endpoints cluster, with its
    /// credentials].
    #[arg(long, env = "NUMGEN_GLOBAL_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub global_etcd_endpoints: Option<Vec<String>>,
    /// Global etcd user name (needs global_etcd_endpoints).
    #[arg(long, env = "NUMGEN_GLOBAL_ETCD_USERNAME")]
    pub global_etcd_username: Option<String>,
    /// Global etcd password (needs global_etcd_endpoints).
    #[arg(long, env = "NUMGEN_GLOBAL_ETCD_PASSWORD", hide_env_values = true)]
    pub global_etcd_password: Option<Secret>,
    /// CA certificate (PEM) for https global etcd endpoints.
    #[arg(long, env = "NUMGEN_GLOBAL_ETCD_CA_FILE")]
    pub global_etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for the global etcd.
    #[arg(long, env = "NUMGEN_GLOBAL_ETCD_CERT_FILE")]
    pub global_etcd_cert_file: Option<PathBuf>,
    /// Client key (PEM) for the global etcd.
    #[arg(long, env = "NUMGEN_GLOBAL_ETCD_KEY_FILE")]
    pub global_etcd_key_file: Option<PathBuf>,
    /// Datacenter ID [default: 0].
    #[arg(long, env = "NUMGEN_DC_ID")]
    pub dc_id: Option<u64>,
    /// Worker ID, standalone only (cluster mode leases one) [default: 0].
    #[arg(long, env = "NUMGEN_WORKER_ID")]
    pub worker_id: Option<u64>,
    /// etcd lease TTL in seconds [default: 10].
    #[arg(long, env = "NUMGEN_LEASE_TTL_S")]
    pub lease_ttl_s: Option<u64>,
    /// Largest clock step back waited out with normal numbers, ms [default: 5].
    #[arg(long, env = "NUMGEN_MAX_BACKWARD_WAIT_MS")]
    pub max_backward_wait_ms: Option<u64>,
    /// Largest offset from the peers' median clock before numbers are degraded, ms [default: 1000].
    #[arg(long, env = "NUMGEN_MAX_SKEW_MS")]
    pub max_skew_ms: Option<u64>,
    /// On a larger step back: degrade or reject [default: degrade].
    #[arg(long, env = "NUMGEN_ON_CLOCK_BACKWARD")]
    pub on_clock_backward: Option<String>,
    /// When the worker lease is lost: degrade or reject [default: degrade].
    #[arg(long, env = "NUMGEN_ON_LEASE_LOSS")]
    pub on_lease_loss: Option<String>,
    /// Log format: text or json [default: text]. Level: RUST_LOG.
    #[arg(long, env = "NUMGEN_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Requests a second per client address; off when unset [default: off].
    #[arg(long, env = "NUMGEN_RATE_LIMIT_PER_S")]
    pub rate_limit_per_s: Option<u64>,
    /// Requests a client address may send at once (needs rate_limit_per_s) [default: rate_limit_per_s].
    #[arg(long, env = "NUMGEN_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u64>,
    /// Open connections at most; beyond it new ones wait in the listen backlog [default: 10000].
    #[arg(long, env = "NUMGEN_MAX_CONNECTIONS")]
    pub max_connections: Option<u64>,
    /// How long a request waits on the store (etcd or redb) before 503 STORAGE_UNAVAILABLE, ms [default: 2000].
    #[arg(long, env = "NUMGEN_STORE_TIMEOUT_MS")]
    pub store_timeout_ms: Option<u64>,
    #[command(flatten)]
    #[serde(default)]
    pub layout: LayoutArgs,
}

/// The `[layout]` table.
#[derive(Args, Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutArgs {
    /// Timestamp zero: RFC 3339 or Unix ms [default: 2024-01-01T00:00:00Z].
    #[arg(long = "layout-epoch", env = "NUMGEN_LAYOUT_EPOCH")]
    #[serde(default, deserialize_with = "epoch_value")]
    pub epoch: Option<String>,
    /// Timestamp unit in ms [default: 1].
    #[arg(long = "layout-time-unit-ms", env = "NUMGEN_LAYOUT_TIME_UNIT_MS")]
    pub time_unit_ms: Option<u64>,
    /// [default: 41]
    #[arg(long = "layout-timestamp-bits", env = "NUMGEN_LAYOUT_TIMESTAMP_BITS")]
    pub timestamp_bits: Option<u32>,
    /// [default: 3]
    #[arg(long = "layout-datacenter-bits", env = "NUMGEN_LAYOUT_DATACENTER_BITS")]
    pub datacenter_bits: Option<u32>,
    /// [default: 6]
    #[arg(long = "layout-worker-bits", env = "NUMGEN_LAYOUT_WORKER_BITS")]
    pub worker_bits: Option<u32>,
    /// [default: 12]
    #[arg(long = "layout-sequence-bits", env = "NUMGEN_LAYOUT_SEQUENCE_BITS")]
    pub sequence_bits: Option<u32>,
}

/// `epoch` in TOML may be a string, an integer or a TOML date-time.
fn epoch_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Epoch {
        Int(u64),
        Text(String),
        Datetime(toml::value::Datetime),
    }
    Ok(Option::<Epoch>::deserialize(d)?.map(|e| match e {
        Epoch::Int(n) => n.to_string(),
        Epoch::Text(s) => s,
        Epoch::Datetime(dt) => dt.to_string(),
    }))
}

impl Settings {
    /// Fills every unset key of `self` from `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        let Settings {
            config,
            listen,
            advertise_addr,
            data_dir,
            admin_token,
            etcd_endpoints,
            etcd_root,
            etcd_username,
            etcd_password,
            etcd_ca_file,
            etcd_cert_file,
            etcd_key_file,
            global_etcd_endpoints,
            global_etcd_username,
            global_etcd_password,
            global_etcd_ca_file,
            global_etcd_cert_file,
            global_etcd_key_file,
            dc_id,
            worker_id,
            lease_ttl_s,
            max_backward_wait_ms,
            max_skew_ms,
            on_clock_backward,
            on_lease_loss,
            log_format,
            rate_limit_per_s,
            rate_limit_burst,
            max_connections,
            store_timeout_ms,
            layout,
        } = self;
        let LayoutArgs {
            epoch,
            time_unit_ms,
            timestamp_bits,
            datacenter_bits,
            worker_bits,
            sequence_bits,
        } = layout;
        Settings {
            config: config.or(lower.config),
            listen: listen.or(lower.listen),
            advertise_addr: advertise_addr.or(lower.advertise_addr),
            data_dir: data_dir.or(lower.data_dir),
            admin_token: admin_token.or(lower.admin_token),
            etcd_endpoints: etcd_endpoints.or(lower.etcd_endpoints),
            etcd_root: etcd_root.or(lower.etcd_root),
            etcd_username: etcd_username.or(lower.etcd_username),
            etcd_password: etcd_password.or(lower.etcd_password),
            etcd_ca_file: etcd_ca_file.or(lower.etcd_ca_file),
            etcd_cert_file: etcd_cert_file.or(lower.etcd_cert_file),
            etcd_key_file: etcd_key_file.or(lower.etcd_key_file),
            global_etcd_endpoints: global_etcd_endpoints.or(lower.global_etcd_endpoints),
            global_etcd_username: global_etcd_username.or(lower.global_etcd_username),
            global_etcd_password: global_etcd_password.or(lower.global_etcd_password),
            global_etcd_ca_file: global_etcd_ca_file.or(lower.global_etcd_ca_file),
            global_etcd_cert_file: global_etcd_cert_file.or(lower.global_etcd_cert_file),
            global_etcd_key_file: global_etcd_key_file.or(lower.global_etcd_key_file),
            dc_id: dc_id.or(lower.dc_id),
            worker_id: worker_id.or(lower.worker_id),
            lease_ttl_s: lease_ttl_s.or(lower.lease_ttl_s),
            max_backward_wait_ms: max_backward_wait_ms.or(lower.max_backward_wait_ms),
            max_skew_ms: max_skew_ms.or(lower.max_skew_ms),
            on_clock_backward: on_clock_backward.or(lower.on_clock_backward),
            on_lease_loss: on_lease_loss.or(lower.on_lease_loss),
            log_format: log_format.or(lower.log_format),
            rate_limit_per_s: rate_limit_per_s.or(lower.rate_limit_per_s),
            rate_limit_burst: rate_limit_burst.or(lower.rate_limit_burst),
            max_connections: max_connections.or(lower.max_connections),
            store_timeout_ms: store_timeout_ms.or(lower.store_timeout_ms),
            layout: LayoutArgs {
                epoch: epoch.or(lower.layout.epoch),
                time_unit_ms: time_unit_ms.or(lower.layout.time_unit_ms),
                timestamp_bits: timestamp_bits.or(lower.layout.timestamp_bits),
                datacenter_bits: datacenter_bits.or(lower.layout.datacenter_bits),
                worker_bits: worker_bits.or(lower.layout.worker_bits),
                sequence_bits: sequence_bits.or(lower.layout.sequence_bits),
            },
        }
    }

    /// Flags and variables (`self`, from clap) over the file named by `config`, if any.
    pub fn with_file(self) -> Result<Settings, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
        let file: Settings = toml::from_str(&text).map_err(|e| {
            bad(
                "config",
                format!("{}: {}", path.display(), e.to_string().trim()),
            )
        })?;
        Ok(self.or(file))
    }
}
