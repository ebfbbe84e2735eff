//! Configuration (SPEC section 5): one raw [`Settings`] shape read three times — from the
//! TOML file, from `NUMGEN_*` variables and from flags (clap reads the last two, flags
//! winning; [`settings`]) — merged in that order, then checked into a [`Config`] whose
//! errors name the key at fault. [`Settings::validate`] destructures the raw settings so
//! no key can be forgotten, and hands each group of keys to a small check of its own.
//! Secrets are [`Secret`]s: they print as `****`.

mod etcd;
mod secret;
mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use etcd::EtcdArgs;

use crate::id::{Layout, LayoutError, LayoutSettings, Policy, layout::DEFAULT_EPOCH_MS};

pub use secret::Secret;
pub use settings::{Cli, Command, LayoutArgs, Settings};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ETCD_ROOT: &str = "/numgen";
pub const DEFAULT_DATA_DIR: &str = "./data";

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

/// Connection settings for cluster mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub root: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub advertise_addr: Option<String>,
    pub data_dir: PathBuf,
    pub admin_token: Option<Secret>,
    /// This datacenter's etcd (cluster mode when set).
    pub etcd: Option<EtcdConfig>,
    /// The global etcd tier, when it is another cluster than `etcd` (`None`: the same
    /// cluster and credentials, as with one etcd for everything).
    pub global_etcd: Option<EtcdConfig>,
    pub dc_id: u64,
    pub worker_id: u64,
    pub lease_ttl_s: u64,
    pub max_backward_wait_ms: u64,
    pub max_skew_ms: u64,
    pub on_clock_backward: Policy,
    pub on_lease_loss: Policy,
    pub log_format: LogFormat,
    /// Per client address (SPEC 7); `None`: no limit.
    pub rate_limit: Option<RateLimit>,
    /// Open connections at most (SPEC 7).
    pub max_connections: usize,
    /// How long a request waits on the store (SPEC 3.5: default 2 s).
    pub store_timeout: Duration,
    pub layout: Layout,
}

/// `rate_limit_per_s` and `rate_limit_burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_s: u64,
    pub burst: u64,
}

/// Largest `rate_limit_per_s` and `rate_limit_burst`.
pub const MAX_RATE_LIMIT: u64 = 1_000_000;

impl Settings {
    /// The settings from every source: flags and variables (`self`, from clap) over the
    /// file they name, checked. `now_ms` checks the layout's epoch and lifetime.
    pub fn load(self, now_ms: u64) -> Result<Config, ConfigError> {
        self.with_file()?.validate(now_ms)
    }

    /// Checks every key; `now_ms` checks the layout's epoch and lifetime. With several bad
    /// keys, the first in this order is named.
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
        let layout = validate_layout(layout, now_ms)?;
        let listen = listen_addr(listen)?;
        let advertise_addr = advertise(advertise_addr)?;
        let dc_id = fits("dc_id", dc_id, layout.max_datacenter(), "datacenter_bits")?;
        let worker_id = fits("worker_id", worker_id, layout.max_worker(), "worker_bits")?;
        let lease_ttl_s = within("lease_ttl_s", lease_ttl_s.unwrap_or(10), 3, 300)?;
        let max_backward_wait_ms = within(
            "max_backward_wait_ms",
            max_backward_wait_ms.unwrap_or(5),
            0,
            1000,
        )?;
        let max_skew_ms = within("max_skew_ms", max_skew_ms.unwrap_or(1000), 1, u64::MAX)?;
        let on_clock_backward = policy("on_clock_backward", on_clock_backward)?;
        let on_lease_loss = policy("on_lease_loss", on_lease_loss)?;
        let log_format = log_format_of(log_format)?;
        let rate_limit = rate_limit_of(rate_limit_per_s, rate_limit_burst)?;
        let max_connections = within(
            "max_connections",
            max_connections.unwrap_or(crate::http::DEFAULT_MAX_CONNECTIONS as u64),
            1,
            1_000_000,
        )? as usize;
        let store_timeout = Duration::from_millis(within(
            "store_timeout_ms",
            store_timeout_ms.unwrap_or(crate::store::DEFAULT_TIMEOUT.as_millis() as u64),
            100,
            60_000,
        )?);
        let admin_token = token(admin_token)?;
        let (etcd, global_etcd) = etcd::validate(
            EtcdArgs {
                endpoints: etcd_endpoints,
                root: etcd_root,
                username: etcd_username,
                password: etcd_password,
                ca_file: etcd_ca_file,
                cert_file: etcd_cert_file,
                key_file: etcd_key_file,
            },
            EtcdArgs {
                endpoints: global_etcd_endpoints,
                root: None,
                username: global_etcd_username,
                password: global_etcd_password,
                ca_file: global_etcd_ca_file,
                cert_file: global_etcd_cert_file,
                key_file: global_etcd_key_file,
            },
            admin_token.is_some(),
        )?;
        Ok(Config {
            listen,
            advertise_addr,
            data_dir: data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            admin_token,
            etcd,
            global_etcd,
            dc_id,
            worker_id,
            lease_ttl_s,
            max_backward_wait_ms,
            max_skew_ms,
            on_clock_backward,
            on_lease_loss,
            log_format,
            rate_limit,
            max_connections,
            store_timeout,
            layout,
        })
    }
}

/// Off without `rate_limit_per_s`; the burst defaults to one second's worth.
fn rate_limit_of(per_s: Option<u64>, burst: Option<u64>) -> Result<Option<RateLimit>, ConfigError> {
    let Some(per_s) = per_s else {
        return match burst {
            Some(_) => Err(bad(
                "rate_limit_burst",
                "needs rate_limit_per_s (the limit is off without it)",
            )),
            None => Ok(None),
        };
    };
    let per_s = within("rate_limit_per_s", per_s, 1, MAX_RATE_LIMIT)?;
    let burst = within(
        "rate_limit_burst",
        burst.unwrap_or(per_s),
        1,
        MAX_RATE_LIMIT,
    )?;
    Ok(Some(RateLimit { per_s, burst }))
}

fn listen_addr(listen: Option<String>) -> Result<SocketAddr, ConfigError> {
    let text = listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    text.parse().map_err(|_| {
        bad(
            "listen",
            format!("'{text}' is not an IP address and port, like 127.0.0.1:8080"),
        )
    })
}

fn advertise(addr: Option<String>) -> Result<Option<String>, ConfigError> {
    match addr {
        Some(a) if a.is_empty() || a.contains(char::is_whitespace) => {
            Err(bad("advertise_addr", format!("'{a}' is not a host:port")))
        }
        other => Ok(other),
    }
}

/// A datacenter or worker ID (default 0) that must fit its field of the layout.
fn fits(key: &str, id: Option<u64>, largest: u64, bits: &str) -> Result<u64, ConfigError> {
    let id = id.unwrap_or(0);
    if id > largest {
        return Err(bad(
            key,
            format!("{id} does not fit layout.{bits} (largest: {largest})"),
        ));
    }
    Ok(id)
}

/// `value` if it is from `lo` to `hi` (`u64::MAX`: no upper bound).
fn within(key: &str, value: u64, lo: u64, hi: u64) -> Result<u64, ConfigError> {
    if (lo..=hi).contains(&value) {
        return Ok(value);
    }
    let range = match (lo, hi) {
        (_, u64::MAX) => format!("at least {lo}"),
        (0, _) => format!("at most {hi}"),
        _ => format!("from {lo} to {hi}"),
    };
    Err(bad(key, format!("must be {range} (got {value})")))
}

fn policy(key: &str, value: Option<String>) -> Result<Policy, ConfigError> {
    match value.as_deref() {
        None | Some("degrade") => Ok(Policy::Degrade),
        Some("reject") => Ok(Policy::Reject),
        Some(o) => Err(bad(
            key,
            format!("must be 'degrade' or 'reject' (got '{o}')"),
        )),
    }
}

fn log_format_of(value: Option<String>) -> Result<LogFormat, ConfigError> {
    match value.as_deref() {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(o) => Err(bad(
            "log_format",
            format!("must be 'text' or 'json' (got '{o}')"),
        )),
    }
}

fn token(token: Option<Secret>) -> Result<Option<Secret>, ConfigError> {
    match token {
        Some(t) if t.expose().is_empty() || t.expose().contains(char::is_whitespace) => {
            Err(bad("admin_token", "must be non-empty, without spaces"))
        }
        other => Ok(other),
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
            LayoutError::ZeroWidth(f) => format!("layout.{f}"),
            LayoutError::BadUnit => "layout.time_unit_ms".into(),
            LayoutError::EpochInFuture => "layout.epoch".into(),
            _ => "layout.timestamp_bits".into(),
        };
        bad(&key, e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
        assert_eq!(c.rate_limit, None);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.store_timeout, Duration::from_secs(2));
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
        const CLUSTER: &str = "etcd_endpoints = [\"http://x:1\"]\nadmin_token = \"t\"\n";
        let cases = [
            ("listen = \"localhost\"", "listen"),
            ("advertise_addr = \"a b\"", "advertise_addr"),
            ("dc_id = 8", "dc_id"),
            ("worker_id = 64", "worker_id"),
            ("lease_ttl_s = 1", "lease_ttl_s"),
            ("max_backward_wait_ms = 5000", "max_backward_wait_ms"),
            ("max_skew_ms = 0", "max_skew_ms"),
            ("on_clock_backward = \"panic\"", "on_clock_backward"),
            ("on_lease_loss = \"x\"", "on_lease_loss"),
            ("log_format = \"xml\"", "log_format"),
            ("rate_limit_per_s = 0", "rate_limit_per_s"),
            (
                "rate_limit_per_s = 1\nrate_limit_burst = 0",
                "rate_limit_burst",
            ),
            ("rate_limit_burst = 5", "rate_limit_burst"),
            ("max_connections = 0", "max_connections"),
            ("store_timeout_ms = 99", "store_timeout_ms"),
            ("store_timeout_ms = 60001", "store_timeout_ms"),
            ("admin_token = \"\"", "admin_token"),
            (
                "etcd_endpoints = [\"http://127.0.0.1:2379\"]",
                "admin_token",
            ),
            (
                "etcd_endpoints = [\"ftp://x\"]\nadmin_token = \"t\"",
                "etcd_endpoints",
            ),
            ("etcd_root = \"numgen\"", "etcd_root"),
            ("etcd_root = \"/numgen/\"", "etcd_root"),
            ("etcd_cert_file = \"c.pem\"", "etcd_cert_file"),
            ("etcd_username = \"u\"", "etcd_username"),
            ("[layout]\nworker_bits = 7", "layout.timestamp_bits"),
            (
                "[layout]\nsequence_bits = 0\nworker_bits = 18",
                "layout.sequence_bits",
            ),
            ("[layout]\nepoch = \"tomorrow\"", "layout.epoch"),
            ("[layout]\nepoch = \"2999-01-01T00:00:00Z\"", "layout.epoch"),
            ("[layout]\ntime_unit_ms = 0", "layout.time_unit_ms"),
        ];
        for (toml_text, key) in cases {
            // The etcd keys are checked in cluster mode only.
            let text = if key.starts_with("etcd_") && !toml_text.contains("endpoints") {
                format!("{CLUSTER}{toml_text}")
            } else {
                toml_text.to_string()
            };
            let settings: Settings = toml::from_str(&text).unwrap();
            let err = settings.validate(NOW).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
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
        // The raw settings too, as clap and serde read them.
        let raw = parse(&[
            "--admin-token",
            "admin-secret",
            "--etcd-password",
            "etcd-secret",
        ])
        .unwrap();
        let shown = format!("{raw:?}");
        assert!(
            !shown.contains("admin-secret") && !shown.contains("etcd-secret"),
            "{shown}"
        );
        assert_eq!(raw.admin_token.unwrap().expose(), "admin-secret");
    }

    #[test]
    fn load_reads_the_named_file_under_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("numgen.toml");
        std::fs::write(&path, "admin_token = \"from-file\"\nmax_skew_ms = 50\n").unwrap();
        let s = parse(&["--config", path.to_str().unwrap(), "--max-skew-ms", "70"]).unwrap();
        let c = s.load(NOW).unwrap();
        assert_eq!(c.admin_token.unwrap().expose(), "from-file");
        assert_eq!(c.max_skew_ms, 70);
    }

    #[test]
    fn range_errors_say_the_range_and_the_value() {
        let message = |s: Settings| s.validate(NOW).unwrap_err().message;
        let lease = message(Settings {
            lease_ttl_s: Some(301),
            ..Default::default()
        });
        assert_eq!(lease, "must be from 3 to 300 (got 301)");
        let wait = message(Settings {
            max_backward_wait_ms: Some(1001),
            ..Default::default()
        });
        assert_eq!(wait, "must be at most 1000 (got 1001)");
        let skew = message(Settings {
            max_skew_ms: Some(0),
            ..Default::default()
        });
        assert_eq!(skew, "must be at least 1 (got 0)");
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
    fn the_rate_limit_comes_from_the_file_env_or_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("numgen.toml");
        std::fs::write(&path, "rate_limit_per_s = 50\nrate_limit_burst = 200\n").unwrap();
        let s = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--rate-limit-per-s",
            "20",
        ])
        .unwrap();
        let c = s.load(NOW).unwrap();
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                per_s: 20,
                burst: 200
            })
        );
        // The burst defaults to one second's worth.
        let c = parse(&["--rate-limit-per-s", "7"])
            .unwrap()
            .validate(NOW)
            .unwrap();
        assert_eq!(c.rate_limit, Some(RateLimit { per_s: 7, burst: 7 }));
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
