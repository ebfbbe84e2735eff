//! Configuration (SPEC section 5): one raw [`Settings`] shape read three times — from the
//! TOML file, from `NUMGEN_*` variables and from flags (clap reads the last two, flags
//! winning) — merged in that order, then checked into a [`Config`] whose errors name the
//! key at fault. `validate` destructures the raw settings so no key can be forgotten.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Deserializer};

use crate::id::{Layout, LayoutSettings, Policy, layout::DEFAULT_EPOCH_MS};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ETCD_ROOT: &str = "/numgen";

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
    pub admin_token: Option<String>,
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
    pub etcd_password: Option<String>,
    /// CA certificate (PEM) for https etcd endpoints.
    #[arg(long, env = "NUMGEN_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, env = "NUMGEN_ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, env = "NUMGEN_ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
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

/// A bad setting: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Connection settings for cluster mode. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub root: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The checked configuration. `Debug` hides the admin token.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub advertise_addr: Option<String>,
    pub data_dir: PathBuf,
    pub admin_token: Option<String>,
    pub etcd: Option<EtcdConfig>,
    pub dc_id: u64,
    pub worker_id: u64,
    pub lease_ttl_s: u64,
    pub max_backward_wait_ms: u64,
    pub max_skew_ms: u64,
    pub on_clock_backward: Policy,
    pub on_lease_loss: Policy,
    pub log_format: LogFormat,
    pub layout: Layout,
}

/// Secrets print as `****` (or `None`) in debug output and logs.
fn redact(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "****")
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("root", &self.root)
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("advertise_addr", &self.advertise_addr)
            .field("data_dir", &self.data_dir)
            .field("admin_token", &redact(&self.admin_token))
            .field("etcd", &self.etcd)
            .field("dc_id", &self.dc_id)
            .field("worker_id", &self.worker_id)
            .field("lease_ttl_s", &self.lease_ttl_s)
            .field("max_backward_wait_ms", &self.max_backward_wait_ms)
            .field("max_skew_ms", &self.max_skew_ms)
            .field("on_clock_backward", &self.on_clock_backward)
            .field("on_lease_loss", &self.on_lease_loss)
            .field("log_format", &self.log_format)
            .field("layout", self.layout.settings())
            .finish()
    }
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
            dc_id,
            worker_id,
            lease_ttl_s,
            max_backward_wait_ms,
            max_skew_ms,
            on_clock_backward,
            on_lease_loss,
            log_format,
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
            dc_id: dc_id.or(lower.dc_id),
            worker_id: worker_id.or(lower.worker_id),
            lease_ttl_s: lease_ttl_s.or(lower.lease_ttl_s),
            max_backward_wait_ms: max_backward_wait_ms.or(lower.max_backward_wait_ms),
            max_skew_ms: max_skew_ms.or(lower.max_skew_ms),
            on_clock_backward: on_clock_backward.or(lower.on_clock_backward),
            on_lease_loss: on_lease_loss.or(lower.on_lease_loss),
            log_format: log_format.or(lower.log_format),
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

    /// Checks every key; `now_ms` checks the layout's epoch and lifetime.
    pub fn validate(self, now_ms: u64) -> Result<Config, ConfigError> {
        let Settings {
            config: _,
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
            dc_id,
            worker_id,
            lease_ttl_s,
            max_backward_wait_ms,
            max_skew_ms,
            on_clock_backward,
            on_lease_loss,
            log_format,
            layout,
        } = self;
        let layout = validate_layout(layout, now_ms)?;
        let listen_text = listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            bad(
                "listen",
                format!("'{listen_text}' is not an IP address and port, like 127.0.0.1:8080"),
            )
        })?;
        if let Some(a) = &advertise_addr
            && (a.is_empty() || a.contains(char::is_whitespace))
        {
            return Err(bad("advertise_addr", format!("'{a}' is not a host:port")));
        }
        let dc_id = dc_id.unwrap_or(0);
        if dc_id > layout.max_datacenter() {
            return Err(bad(
                "dc_id",
                format!(
                    "{dc_id} does not fit layout.datacenter_bits (largest: {})",
                    layout.max_datacenter()
                ),
            ));
        }
        let worker_id = worker_id.unwrap_or(0);
        if worker_id > layout.max_worker() {
            return Err(bad(
                "worker_id",
                format!(
                    "{worker_id} does not fit layout.worker_bits (largest: {})",
                    layout.max_worker()
                ),
            ));
        }
        let lease_ttl_s = lease_ttl_s.unwrap_or(10);
        if !(3..=300).contains(&lease_ttl_s) {
            return Err(bad(
                "lease_ttl_s",
                format!("must be from 3 to 300 (got {lease_ttl_s})"),
            ));
        }
        let max_backward_wait_ms = max_backward_wait_ms.unwrap_or(5);
        if max_backward_wait_ms > 1000 {
            return Err(bad(
                "max_backward_wait_ms",
                format!("must be at most 1000 (got {max_backward_wait_ms})"),
            ));
        }
        let max_skew_ms = max_skew_ms.unwrap_or(1000);
        if max_skew_ms == 0 {
            return Err(bad("max_skew_ms", "must be at least 1"));
        }
        let policy = |key: &str, v: Option<String>| match v.as_deref() {
            None | Some("degrade") => Ok(Policy::Degrade),
            Some("reject") => Ok(Policy::Reject),
            Some(o) => Err(bad(
                key,
                format!("must be 'degrade' or 'reject' (got '{o}')"),
            )),
        };
        let on_clock_backward = policy("on_clock_backward", on_clock_backward)?;
        let on_lease_loss = policy("on_lease_loss", on_lease_loss)?;
        let log_format = match log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(o) => {
                return Err(bad(
                    "log_format",
                    format!("must be 'text' or 'json' (got '{o}')"),
                ));
            }
        };
        if let Some(t) = &admin_token
            && (t.is_empty() || t.contains(char::is_whitespace))
        {
            return Err(bad("admin_token", "must be non-empty, without spaces"));
        }
        let endpoints: Vec<String> = etcd_endpoints
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        let etcd = if endpoints.is_empty() {
            None
        } else {
            for e in &endpoints {
                if !(e.starts_with("http://") || e.starts_with("https://") || !e.contains("://")) {
                    return Err(bad(
                        "etcd_endpoints",
                        format!("'{e}' must be http://host:port or https://host:port"),
                    ));
                }
            }
            if admin_token.is_none() {
                return Err(bad(
                    "admin_token",
                    "is required in cluster mode (with etcd_endpoints)",
                ));
            }
            let root = etcd_root.unwrap_or_else(|| DEFAULT_ETCD_ROOT.to_string());
            if !root.starts_with('/') || (root.len() > 1 && root.ends_with('/')) {
                return Err(bad(
                    "etcd_root",
                    format!("'{root}' must start with '/' and not end with '/'"),
                ));
            }
            if etcd_cert_file.is_some() != etcd_key_file.is_some() {
                return Err(bad(
                    "etcd_cert_file",
                    "etcd_cert_file and etcd_key_file go together",
                ));
            }
            if endpoints.iter().any(|e| e.starts_with("https://")) && etcd_ca_file.is_none() {
                return Err(bad(
                    "etcd_ca_file",
                    "https etcd endpoints need etcd_ca_file (the CA that signed etcd's certificate)",
                ));
            }
            if etcd_username.is_some() != etcd_password.is_some() {
                return Err(bad(
                    "etcd_username",
                    "etcd_username and etcd_password go together",
                ));
            }
            Some(EtcdConfig {
                endpoints,
                root,
                username: etcd_username,
                password: etcd_password,
                ca_file: etcd_ca_file,
                cert_file: etcd_cert_file,
                key_file: etcd_key_file,
            })
        };
        Ok(Config {
            listen,
            advertise_addr,
            data_dir: data_dir.unwrap_or_else(|| PathBuf::from("./data")),
            admin_token,
            etcd,
            dc_id,
            worker_id,
            lease_ttl_s,
            max_backward_wait_ms,
            max_skew_ms,
            on_clock_backward,
            on_lease_loss,
            log_format,
            layout,
        })
    }
}

/// Parses `epoch` (RFC 3339 or Unix ms).
fn parse_epoch(text: &str) -> Option<u64> {
    if let Ok(ms) = text.parse::<u64>() {
        return Some(ms);
    }
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    u64::try_from(t.timestamp_millis()).ok()
}

/// Checks the `[layout]` table into a [`Layout`].
pub fn validate_layout(args: LayoutArgs, now_ms: u64) -> Result<Layout, ConfigError> {
    let d = LayoutSettings::default();
    let LayoutArgs {
        epoch,
        time_unit_ms,
        timestamp_bits,
        datacenter_bits,
        worker_bits,
        sequence_bits,
    } = args;
    let epoch_ms = match epoch {
        None => DEFAULT_EPOCH_MS,
        Some(text) => parse_epoch(&text).ok_or_else(|| {
            bad(
                "layout.epoch",
                format!("'{text}' is neither RFC 3339 (2024-01-01T00:00:00Z) nor Unix ms"),
            )
        })?,
    };
    let settings = LayoutSettings {
        epoch_ms,
        time_unit_ms: time_unit_ms.unwrap_or(d.time_unit_ms),
        timestamp_bits: timestamp_bits.unwrap_or(d.timestamp_bits),
        datacenter_bits: datacenter_bits.unwrap_or(d.datacenter_bits),
        worker_bits: worker_bits.unwrap_or(d.worker_bits),
        sequence_bits: sequence_bits.unwrap_or(d.sequence_bits),
    };
    Layout::new(settings, now_ms).map_err(|e| {
        let key = match &e {
            crate::id::LayoutError::ZeroWidth(f) => format!("layout.{f}"),
            crate::id::LayoutError::BadUnit => "layout.time_unit_ms".into(),
            crate::id::LayoutError::EpochInFuture => "layout.epoch".into(),
            _ => "layout.timestamp_bits".into(),
        };
        bad(&key, e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_763_700_000_000;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        let mut all = vec!["numgen", "serve"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all)?.command {
            Command::Serve(s) => Ok(*s),
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults() {
        let c = Settings::default().validate(NOW).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!((c.dc_id, c.worker_id, c.lease_ttl_s), (0, 0, 10));
        assert_eq!((c.max_backward_wait_ms, c.max_skew_ms), (5, 1000));
        assert_eq!(
            (c.on_clock_backward, c.on_lease_loss),
            (Policy::Degrade, Policy::Degrade)
        );
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.etcd.is_none());
        assert_eq!(c.layout.settings(), &LayoutSettings::default());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("numgen.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nworker_id = 3\nlease_ttl_s = 20\n[layout]\nworker_bits = 7\ndatacenter_bits = 2\nepoch = 2024-01-01T00:00:00Z\n",
        )
        .unwrap();
        let s = parse(&["--config", path.to_str().unwrap(), "--worker-id", "100"]).unwrap();
        let c = s.with_file().unwrap().validate(NOW).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.worker_id, 100);
        assert_eq!(c.lease_ttl_s, 20);
        assert_eq!(c.layout.max_worker(), 127);
        assert_eq!(c.layout.settings().epoch_ms, DEFAULT_EPOCH_MS);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(Settings, &str)> = vec![
            (
                Settings {
                    listen: Some("localhost".into()),
                    ..Default::default()
                },
                "listen",
            ),
            (
                Settings {
                    dc_id: Some(8),
                    ..Default::default()
                },
                "dc_id",
            ),
            (
                Settings {
                    worker_id: Some(64),
                    ..Default::default()
                },
                "worker_id",
            ),
            (
                Settings {
                    lease_ttl_s: Some(1),
                    ..Default::default()
                },
                "lease_ttl_s",
            ),
            (
                Settings {
                    max_backward_wait_ms: Some(5000),
                    ..Default::default()
                },
                "max_backward_wait_ms",
            ),
            (
                Settings {
                    max_skew_ms: Some(0),
                    ..Default::default()
                },
                "max_skew_ms",
            ),
            (
                Settings {
                    on_clock_backward: Some("panic".into()),
                    ..Default::default()
                },
                "on_clock_backward",
            ),
            (
                Settings {
                    on_lease_loss: Some("x".into()),
                    ..Default::default()
                },
                "on_lease_loss",
            ),
            (
                Settings {
                    log_format: Some("xml".into()),
                    ..Default::default()
                },
                "log_format",
            ),
            (
                Settings {
                    admin_token: Some("".into()),
                    ..Default::default()
                },
                "admin_token",
            ),
            (
                Settings {
                    etcd_endpoints: Some(vec!["http://127.0.0.1:2379".into()]),
                    ..Default::default()
                },
                "admin_token",
            ),
            (
                Settings {
                    etcd_endpoints: Some(vec!["ftp://x".into()]),
                    admin_token: Some("t".into()),
                    ..Default::default()
                },
                "etcd_endpoints",
            ),
            (
                Settings {
                    etcd_endpoints: Some(vec!["http://x:1".into()]),
                    admin_token: Some("t".into()),
                    etcd_root: Some("numgen".into()),
                    ..Default::default()
                },
                "etcd_root",
            ),
            (
                Settings {
                    etcd_endpoints: Some(vec!["http://x:1".into()]),
                    admin_token: Some("t".into()),
                    etcd_cert_file: Some("c.pem".into()),
                    ..Default::default()
                },
                "etcd_cert_file",
            ),
            (
                Settings {
                    etcd_endpoints: Some(vec!["http://x:1".into()]),
                    admin_token: Some("t".into()),
                    etcd_username: Some("u".into()),
                    ..Default::default()
                },
                "etcd_username",
            ),
            (
                Settings {
                    layout: LayoutArgs {
                        worker_bits: Some(7),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "layout.timestamp_bits",
            ),
            (
                Settings {
                    layout: LayoutArgs {
                        sequence_bits: Some(0),
                        worker_bits: Some(18),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "layout.sequence_bits",
            ),
            (
                Settings {
                    layout: LayoutArgs {
                        epoch: Some("tomorrow".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "layout.epoch",
            ),
            (
                Settings {
                    layout: LayoutArgs {
                        epoch: Some("2999-01-01T00:00:00Z".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "layout.epoch",
            ),
            (
                Settings {
                    layout: LayoutArgs {
                        time_unit_ms: Some(0),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "layout.time_unit_ms",
            ),
        ];
        for (s, key) in cases {
            let err = s.validate(NOW).unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(err.to_string().contains(key));
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = Settings {
            etcd_endpoints: Some(vec!["http://127.0.0.1:2379".into()]),
            admin_token: Some("admin-secret".into()),
            etcd_username: Some("u".into()),
            etcd_password: Some("etcd-secret".into()),
            ..Default::default()
        }
        .validate(NOW)
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("admin-secret") && !shown.contains("etcd-secret"),
            "{shown}"
        );
        assert!(shown.contains("****"));
    }

    #[test]
    fn https_endpoints_need_a_ca() {
        let err = Settings {
            etcd_endpoints: Some(vec!["https://127.0.0.1:2379".into()]),
            admin_token: Some("t".into()),
            ..Default::default()
        }
        .validate(NOW)
        .unwrap_err();
        assert_eq!(err.key, "etcd_ca_file");
    }

    #[test]
    fn cluster_settings() {
        let s = parse(&[
            "--etcd-endpoints",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--admin-token",
            "secret",
            "--layout-epoch",
            "1704067200000",
        ])
        .unwrap();
        let c = s.validate(NOW).unwrap();
        let etcd = c.etcd.unwrap();
        assert_eq!(etcd.endpoints.len(), 2);
        assert_eq!(etcd.root, "/numgen");
    }

    #[test]
    fn a_bad_flag_value_names_the_flag() {
        let err = parse(&["--lease-ttl-s", "ten"]).unwrap_err().to_string();
        assert!(err.contains("--lease-ttl-s"), "{err}");
    }

    #[test]
    fn a_bad_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "lease_ttl_s = \"ten\"\n").unwrap();
        let s = Settings {
            config: Some(path.clone()),
            ..Default::default()
        };
        let err = s.with_file().unwrap_err();
        assert_eq!(err.key, "config");
        assert!(err.message.contains("lease_ttl_s"), "{err}");
        std::fs::write(&path, "colour = 1\n").unwrap();
        let s = Settings {
            config: Some(path.clone()),
            ..Default::default()
        };
        assert!(s.with_file().unwrap_err().message.contains("colour"));
        let missing = Settings {
            config: Some(dir.path().join("nope.toml")),
            ..Default::default()
        };
        assert!(
            missing
                .with_file()
                .unwrap_err()
                .message
                .contains("cannot read")
        );
    }
}
