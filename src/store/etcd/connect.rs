//! Connecting to etcd: the client's timeouts and keep-alives (from `crate::timing`),
//! authentication, and TLS from the configured certificate files.

use std::path::Path;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::unavailable;
use crate::config::EtcdConfig;
use crate::store::{StoreError, bounded};
use crate::timing::{
    CONNECT_DEADLINE, CONNECT_TIMEOUT, KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT, TCP_KEEPALIVE,
};

/// A client on the configured endpoints. Certificate files are read here, and with a user
/// name the client authenticates here, so a wrong password or a missing file fails at
/// start-up. Without authentication the connection itself is made on the first call: a
/// dead etcd then shows up as the first call's `Timeout` or `Unavailable`.
pub async fn client(cfg: &EtcdConfig) -> Result<Client, StoreError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
        .with_keep_alive_while_idle(false)
        .with_tcp_keepalive(TCP_KEEPALIVE);
    if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
        // etcd's auth tokens expire (5 minutes by default); refresh them instead of
        // failing every call after that.
        options = options
            .with_user(user.clone(), password.expose())
            .with_auto_token_refresh(true);
    }
    let tls = wants_tls(cfg);
    if tls {
        options = options.with_tls(tls_options(cfg).await?);
    }
    tracing::info!(
        endpoints = ?cfg.endpoints,
        root = %cfg.root,
        tls,
        user = cfg.username.as_deref().unwrap_or(""),
        "connecting to etcd"
    );
    bounded(CONNECT_DEADLINE, async {
        Client::connect(&cfg.endpoints, Some(options))
            .await
            .map_err(unavailable)
    })
    .await
}

/// TLS when an endpoint says `https://`, or when certificates are configured and no
/// endpoint says `http://` (a bare `host:port` then means https). Mixing the two schemes is
/// refused by the client.
fn wants_tls(cfg: &EtcdConfig) -> bool {
    let https = cfg.endpoints.iter().any(|e| e.starts_with("https://"));
    let http = cfg.endpoints.iter().any(|e| e.starts_with("http://"));
    https || (!http && (cfg.ca_file.is_some() || cfg.cert_file.is_some()))
}

async fn read_pem(setting: &str, path: &Path) -> Result<Vec<u8>, StoreError> {
    tokio::fs::read(path).await.map_err(|e| {
        StoreError::Unavailable(format!("cannot read {setting} {}: {e}", path.display()))
    })
}

async fn tls_options(cfg: &EtcdConfig) -> Result<TlsOptions, StoreError> {
    // This build carries no system CA roots (etcd-client's `tls` feature does not enable
    // them), and etcd clusters are normally signed by a private CA anyway: without a CA
    // file no server certificate could be verified, so say so now rather than fail every
    // call with a handshake error.
    let Some(ca_file) = &cfg.ca_file else {
        return Err(StoreError::Unavailable(
            "https etcd endpoints need etcd_ca_file (the CA that signed the etcd certificates)"
                .into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoints: &[&str]) -> EtcdConfig {
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
        assert!(!wants_tls(&cfg(&["http://a:2379"])));
        assert!(wants_tls(&cfg(&["https://a:2379"])));
        assert!(!wants_tls(&cfg(&["a:2379"])));
        let mut with_ca = cfg(&["a:2379"]);
        with_ca.ca_file = Some("ca.pem".into());
        assert!(wants_tls(&with_ca));
        with_ca.endpoints = vec!["http://a:2379".into()];
        assert!(!wants_tls(&with_ca));
    }

    #[tokio::test]
    async fn https_without_a_ca_file_is_refused_at_connect() {
        let err = client(&cfg(&["https://127.0.0.1:1"])).await.err().unwrap();
        assert!(err.to_string().contains("etcd_ca_file"), "{err}");
        let mut missing = cfg(&["https://127.0.0.1:1"]);
        missing.ca_file = Some("/nonexistent/ca.pem".into());
        let err = client(&missing).await.err().unwrap();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[tokio::test]
    async fn a_plain_endpoint_connects_lazily() {
        // Nothing listens on port 1: the client is made, the first call would fail.
        assert!(client(&cfg(&["http://127.0.0.1:1"])).await.is_ok());
    }
}
