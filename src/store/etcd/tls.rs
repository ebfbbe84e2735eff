//! TLS to etcd: when it is used, the client options from the certificate files, and what a
//! failed handshake says about which setting is wrong.

use std::path::Path;

use etcd_client::{Certificate, Identity, TlsOptions};

use crate::config::{ConfigError, EtcdConfig};

/// TLS when an endpoint says `https://`, or when certificates are configured and no
/// endpoint says `http://` (a bare `host:port` then means https). Mixing the two schemes is
/// refused by the client.
pub fn wanted(cfg: &EtcdConfig) -> bool {
    let https = cfg.endpoints.iter().any(|e| e.starts_with("https://"));
    let http = cfg.endpoints.iter().any(|e| e.starts_with("http://"));
    https || (!http && (cfg.ca_file.is_some() || cfg.cert_file.is_some()))
}

fn setting(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

async fn read_pem(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| setting(key, format!("cannot read {}: {e}", path.display())))
}

/// The client's TLS options: the CA that signed the etcd certificates, and the client
/// certificate when one is configured.
pub async fn options(cfg: &EtcdConfig) -> Result<TlsOptions, ConfigError> {
    // This build carries no system CA roots (etcd-client's `tls` feature does not enable
    // them), and etcd clusters are normally signed by a private CA anyway: without a CA
    // file no server certificate could be verified, so say so now rather than fail every
    // call with a handshake error.
    let Some(ca_file) = &cfg.ca_file else {
        return Err(setting(
            "etcd_ca_file",
            "https etcd endpoints need etcd_ca_file (the CA that signed the etcd certificates)",
        ));
    };
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(
        read_pem("etcd_ca_file", ca_file).await?,
    ));
    if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
        let cert = read_pem("etcd_cert_file", cert).await?;
        let key = read_pem("etcd_key_file", key).await?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(tls)
}

/// `e` and every error under it, as one line: the TLS detail sits a few sources deep.
pub fn full_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = s.source();
    }
    text
}

/// The setting a failed TLS handshake with `endpoint` points at, judged from the error's
/// text (`detail`, as [`full_text`] gives it); `None` when it is no TLS problem.
pub fn misconfigured(cfg: &EtcdConfig, endpoint: &str, detail: &str) -> Option<ConfigError> {
    let has = |s: &str| detail.contains(s);
    let ca = cfg
        .ca_file
        .as_deref()
        .map_or_else(String::new, |p| p.display().to_string());
    if has("NotValidForName") {
        return Some(setting(
            "etcd_endpoints",
            format!("the certificate of {endpoint} is not valid for its host name ({detail})"),
        ));
    }
    if has("UnknownIssuer") || has("invalid peer certificate") {
        return Some(setting(
            "etcd_ca_file",
            format!("the certificate of {endpoint} is not signed by the CA in {ca} ({detail})"),
        ));
    }
    if has("CertificateRequired") || has("BadCertificate") || has("UnknownCA") {
        let message = if cfg.cert_file.is_none() {
            format!(
                "{endpoint} requires a client certificate: set etcd_cert_file and etcd_key_file ({detail})"
            )
        } else {
            format!("{endpoint} refused the client certificate ({detail})")
        };
        return Some(setting("etcd_cert_file", message));
    }
    if has("InvalidContentType") || has("corrupt message") {
        return Some(setting(
            "etcd_endpoints",
            format!("{endpoint} does not answer TLS: use http:// for it ({detail})"),
        ));
    }
    None
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A config naming `endpoints`, nothing else set (also for `connect`'s tests).
    pub(crate) fn cfg(endpoints: &[&str]) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            root: "/numgen".into(),
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }

    #[test]
    fn tls_follows_the_endpoints() {
        assert!(!wanted(&cfg(&["http://a:2379"])));
        assert!(wanted(&cfg(&["https://a:2379"])));
        assert!(!wanted(&cfg(&["a:2379"])));
        let mut with_ca = cfg(&["a:2379"]);
        with_ca.ca_file = Some("ca.pem".into());
        assert!(wanted(&with_ca));
        with_ca.endpoints = vec!["http://a:2379".into()];
        assert!(!wanted(&with_ca));
    }

    #[tokio::test]
    async fn missing_files_name_their_key() {
        let err = options(&cfg(&["https://a:1"])).await.unwrap_err();
        assert_eq!(err.key, "etcd_ca_file");
        let mut missing = cfg(&["https://a:1"]);
        missing.ca_file = Some("/nonexistent/ca.pem".into());
        let err = options(&missing).await.unwrap_err();
        assert_eq!(err.key, "etcd_ca_file");
        assert!(err.message.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn handshake_failures_name_the_setting() {
        let mut c = cfg(&["https://e:1"]);
        c.ca_file = Some("/etc/ca.pem".into());
        let cases = [
            ("invalid peer certificate: UnknownIssuer", "etcd_ca_file"),
            (
                "invalid peer certificate: NotValidForName",
                "etcd_endpoints",
            ),
            (
                "received fatal alert: CertificateRequired",
                "etcd_cert_file",
            ),
            ("received fatal alert: BadCertificate", "etcd_cert_file"),
            (
                "received corrupt message of type InvalidContentType",
                "etcd_endpoints",
            ),
        ];
        for (detail, key) in cases {
            let err = misconfigured(&c, "https://e:1", detail).expect(detail);
            assert_eq!(err.key, key, "{detail}");
            assert!(err.message.contains(detail), "{err}");
        }
        let err = misconfigured(&c, "https://e:1", "UnknownIssuer").unwrap();
        assert!(err.message.contains("/etc/ca.pem"), "{err}");
        assert!(misconfigured(&c, "https://e:1", "connection refused").is_none());
    }
}
