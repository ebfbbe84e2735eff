//! The etcd keys of cluster mode (SPEC 5): this datacenter's etcd (`etcd_*`), and the
//! global tier (`global_etcd_*`), which defaults to the same cluster with the same
//! credentials. Each group is checked the same way, its errors naming its own keys.

use std::path::PathBuf;

use super::{ConfigError, DEFAULT_ETCD_ROOT, EtcdConfig, Secret, bad};

/// One tier's keys, as read.
pub(super) struct EtcdArgs {
    pub endpoints: Option<Vec<String>>,
    /// Only the local tier's: both tiers use the same root.
    pub root: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The endpoints, trimmed, without empty ones; a scheme other than http(s) is an error
/// naming `{tier}etcd_endpoints`.
fn endpoints_of(tier: &str, endpoints: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let endpoints: Vec<String> = endpoints
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    let scheme_ok = |e: &str| e.starts_with("http://") || e.starts_with("https://");
    match endpoints
        .iter()
        .find(|e| e.contains("://") && !scheme_ok(e))
    {
        Some(e) => Err(bad(
            &format!("{tier}etcd_endpoints"),
            format!("'{e}' must be http://host:port or https://host:port"),
        )),
        None => Ok(endpoints),
    }
}

/// Cluster mode when any `etcd_endpoints` is set; then an admin token is required too.
/// The second value is the global tier when `global_etcd_endpoints` names one (`None`: the
/// same cluster as `etcd_endpoints`, with its credentials).
pub(super) fn validate(
    local: EtcdArgs,
    global: EtcdArgs,
    has_token: bool,
) -> Result<(Option<EtcdConfig>, Option<EtcdConfig>), ConfigError> {
    let endpoints = endpoints_of("", local.endpoints.clone())?;
    let global_endpoints = endpoints_of("global_", global.endpoints.clone())?;
    if endpoints.is_empty() {
        if !global_endpoints.is_empty() {
            return Err(bad(
                "global_etcd_endpoints",
                "needs etcd_endpoints (this datacenter's etcd)",
            ));
        }
        return Ok((None, None));
    }
    if !has_token {
        return Err(bad(
            "admin_token",
            "is required in cluster mode (with etcd_endpoints)",
        ));
    }
    let root = local
        .root
        .clone()
        .unwrap_or_else(|| DEFAULT_ETCD_ROOT.to_string());
    if !root.starts_with('/') || (root.len() > 1 && root.ends_with('/')) {
        return Err(bad(
            "etcd_root",
            format!("'{root}' must start with '/' and not end with '/'"),
        ));
    }
    let local = tier("", endpoints, &root, local)?;
    if global_endpoints.is_empty() {
        let set = [
            ("global_etcd_username", global.username.is_some()),
            ("global_etcd_password", global.password.is_some()),
            ("global_etcd_ca_file", global.ca_file.is_some()),
            ("global_etcd_cert_file", global.cert_file.is_some()),
            ("global_etcd_key_file", global.key_file.is_some()),
        ];
        if let Some((key, _)) = set.into_iter().find(|(_, set)| *set) {
            return Err(bad(
                key,
                "needs global_etcd_endpoints (without them the global tier is etcd_endpoints, with its credentials)",
            ));
        }
        return Ok((Some(local), None));
    }
    let global = tier("global_", global_endpoints, &root, global)?;
    Ok((Some(local), Some(global)))
}

/// One tier's settings, checked; errors name `{prefix}etcd_*`.
fn tier(
    prefix: &str,
    endpoints: Vec<String>,
    root: &str,
    args: EtcdArgs,
) -> Result<EtcdConfig, ConfigError> {
    let EtcdArgs {
        endpoints: _,
        root: _,
        username,
        password,
        ca_file,
        cert_file,
        key_file,
    } = args;
    let https = endpoints.iter().any(|e| e.starts_with("https://"));
    let rules = [
        (
            cert_file.is_some() != key_file.is_some(),
            "etcd_cert_file",
            "etcd_cert_file and etcd_key_file go together",
        ),
        (
            https && ca_file.is_none(),
            "etcd_ca_file",
            "https etcd endpoints need etcd_ca_file (the CA that signed etcd's certificate)",
        ),
        (
            username.is_some() != password.is_some(),
            "etcd_username",
            "etcd_username and etcd_password go together",
        ),
    ];
    if let Some((_, key, message)) = rules.into_iter().find(|(broken, _, _)| *broken) {
        let message = match prefix {
            "" => message.to_string(),
            _ => message.replace("etcd_", &format!("{prefix}etcd_")),
        };
        return Err(bad(&format!("{prefix}{key}"), message));
    }
    Ok(EtcdConfig {
        endpoints,
        root: root.to_string(),
        username,
        password,
        ca_file,
        cert_file,
        key_file,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    const NOW: u64 = 1_763_700_000_000;

    fn checked(text: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let settings: Settings = toml::from_str(text).unwrap();
        settings.validate(NOW)
    }

    const LOCAL: &str = "etcd_endpoints = [\"http://l:1\"]\nadmin_token = \"t\"\n";

    #[test]
    fn without_global_endpoints_the_global_tier_is_the_local_one() {
        let c = checked(LOCAL).unwrap();
        assert!(c.etcd.is_some());
        assert!(c.global_etcd.is_none());
    }

    #[test]
    fn global_settings_are_their_own_and_share_the_root() {
        let text = format!(
            "{LOCAL}etcd_root = \"/r\"\nglobal_etcd_endpoints = [\" http://g:1 \", \"\"]\nglobal_etcd_username = \"g\"\nglobal_etcd_password = \"gsecret\"\n"
        );
        let c = checked(&text).unwrap();
        let g = c.global_etcd.clone().unwrap();
        assert_eq!(g.endpoints, ["http://g:1"]);
        assert_eq!(g.root, "/r");
        assert_eq!(g.username.as_deref(), Some("g"));
        assert_eq!(c.etcd.as_ref().unwrap().username, None);
        assert!(!format!("{c:?}").contains("gsecret"));
    }

    #[test]
    fn bad_global_values_name_their_key() {
        let cases = [
            (
                "global_etcd_endpoints = [\"http://g:1\"]",
                "global_etcd_endpoints",
            ),
            (
                "etcd_endpoints = [\"http://l:1\"]\nadmin_token = \"t\"\nglobal_etcd_endpoints = [\"ftp://g\"]",
                "global_etcd_endpoints",
            ),
            (
                "etcd_endpoints = [\"http://l:1\"]\nadmin_token = \"t\"\nglobal_etcd_endpoints = [\"https://g:1\"]",
                "global_etcd_ca_file",
            ),
            (
                "etcd_endpoints = [\"http://l:1\"]\nadmin_token = \"t\"\nglobal_etcd_endpoints = [\"http://g:1\"]\nglobal_etcd_username = \"u\"",
                "global_etcd_username",
            ),
            (
                "etcd_endpoints = [\"http://l:1\"]\nadmin_token = \"t\"\nglobal_etcd_endpoints = [\"http://g:1\"]\nglobal_etcd_key_file = \"k.pem\"",
                "global_etcd_cert_file",
            ),
            (
                "etcd_endpoints = [\"http://l:1\"]\nadmin_token = \"t\"\nglobal_etcd_password = \"p\"",
                "global_etcd_password",
            ),
        ];
        for (text, key) in cases {
            let err = checked(text).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn global_flags_and_variables_are_read() {
        use clap::Parser;
        let cli = crate::config::Cli::try_parse_from([
            "numgen",
            "serve",
            "--global-etcd-endpoints",
            "http://g:1,http://g:2",
            "--global-etcd-password",
            "gsecret",
        ])
        .unwrap();
        let crate::config::Command::Serve(s) = cli.command else {
            unreachable!()
        };
        assert_eq!(s.global_etcd_endpoints.as_ref().unwrap().len(), 2);
        assert!(!format!("{s:?}").contains("gsecret"));
    }
}
