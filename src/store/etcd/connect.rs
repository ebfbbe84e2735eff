//! Connecting to one etcd cluster from its settings: the client options (timeouts and
//! keep-alives from `crate::timing`, authentication, TLS from the certificate files), one
//! client per member ([`Members`]), and a first request that turns a wrong password, CA or
//! certificate into an error naming its setting. Everything that needs etcd connects here,
//! so a second etcd tier connects the same way with its own [`EtcdConfig`].

use etcd_client::{Client, ConnectOptions};
use tokio::task::JoinSet;

use super::members::Members;
use super::tls;
use crate::config::{ConfigError, EtcdConfig};
use crate::store::StoreError;
use crate::timing::{
    CONNECT_DEADLINE, CONNECT_TIMEOUT, KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT, TCP_KEEPALIVE,
};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A setting is wrong: a password, a CA, a certificate, an endpoint's scheme.
    #[error(transparent)]
    Setting(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ConnectError> for StoreError {
    fn from(e: ConnectError) -> StoreError {
        match e {
            ConnectError::Setting(e) => StoreError::Unavailable(e.to_string()),
            ConnectError::Store(e) => e,
        }
    }
}

/// The client options for `cfg`. Certificate files are read here, so a missing one fails
/// at start-up. The user and password are not among them: [`Members`] logs each member's
/// client in before its first call, so that making a client needs no I/O.
async fn options(cfg: &EtcdConfig) -> Result<ConnectOptions, ConfigError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
        .with_keep_alive_while_idle(false)
        .with_tcp_keepalive(TCP_KEEPALIVE)
        // A member without a leader (cut off from the others) refuses at once, so the call
        // moves on to a member that has one instead of waiting for its deadline.
        .with_require_leader(true)
        // etcd's auth tokens expire (5 minutes by default); log in again instead of failing
        // every call after that (it applies once a client has credentials).
        .with_auto_token_refresh(true);
    if tls::wanted(cfg) {
        options = options.with_tls(tls::options(cfg).await?);
    }
    Ok(options)
}

/// What a failed login or first request says about the settings: a wrong user or
/// password, or a TLS problem; `None` when it says nothing about them (a member down).
fn misconfigured(cfg: &EtcdConfig, endpoint: &str, e: &etcd_client::Error) -> Option<ConfigError> {
    let bad = |key: &str, message: String| ConfigError {
        key: key.to_string(),
        message,
    };
    if let etcd_client::Error::GRpcStatus(s) = e {
        let said = s.message();
        let user = cfg.username.as_deref().unwrap_or("");
        if said.contains("authentication failed") {
            return Some(bad(
                "etcd_password",
                format!("etcd at {endpoint} refused user '{user}' with this password ({said})"),
            ));
        }
        if said.contains("authentication is not enabled") {
            return Some(bad(
                "etcd_username",
                format!(
                    "etcd at {endpoint} has authentication disabled; remove etcd_username and etcd_password ({said})"
                ),
            ));
        }
    }
    tls::misconfigured(cfg, endpoint, &tls::full_text(e))
}

/// How often [`connect`] asks a member before taking its failure as the member's state.
const FIRST_ASKS: u32 = 3;

/// How often it asks while a TLS connection is only seen closed: the server's alert can be
/// lost to a race (it closes with the client's first bytes unread, so the kernel resets the
/// connection and the alert in flight is dropped), and each new connection is a new chance
/// to read it (3 asks once all missed it in a CI run here).
const CLOSED_TLS_ASKS: u32 = 12;

const FIRST_ASK_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Member `i`'s status, asked up to [`FIRST_ASKS`] times while the failure names no
/// setting: with TLS 1.3 the server judges the client certificate after the client has
/// finished its handshake, so the first request on a refused connection only sees it
/// cancelled, and the next one sees the alert (`BadCertificate`) that names the setting.
/// `Err` carries the setting when one is wrong.
async fn first_answer(
    cfg: &EtcdConfig,
    members: &Members,
    i: usize,
) -> Result<(), Option<ConfigError>> {
    let mut asks = FIRST_ASKS;
    let mut asked = 0;
    loop {
        asked += 1;
        match members.probe(i, CONNECT_TIMEOUT).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                if let Some(bad) = misconfigured(cfg, &cfg.endpoints[i], &e) {
                    return Err(Some(bad));
                }
                if tls::wanted(cfg) && closed(&tls::full_text(&e)) {
                    asks = CLOSED_TLS_ASKS;
                }
            }
        }
        if asked >= asks {
            return Err(None);
        }
        tokio::time::sleep(FIRST_ASK_PAUSE).await;
    }
}

/// True when an error says only that the connection went away (no alert, no status).
fn closed(text: &str) -> bool {
    ["anceled", "connection closed", "reset", "broken pipe"]
        .iter()
        .any(|t| text.contains(t))
}

/// A client per member of `cfg`'s cluster, in the order listed (the first is preferred
/// at first). Every member is asked for its status at once (after logging in, with a user);
/// this returns as soon as one answers, or when every one has failed or
/// [`CONNECT_DEADLINE`] has passed. A failure that names a setting (a wrong password, CA
/// or certificate) is the error; a cluster that is merely down is not (its first call
/// says so), and members that do not answer yet are logged in when they do.
pub async fn connect(cfg: &EtcdConfig) -> Result<Members, ConnectError> {
    let options = options(cfg).await?;
    tracing::info!(
        endpoints = ?cfg.endpoints,
        root = %cfg.root,
        tls = tls::wanted(cfg),
        user = cfg.username.as_deref().unwrap_or(""),
        "connecting to etcd"
    );
    let mut clients = Vec::with_capacity(cfg.endpoints.len());
    for endpoint in &cfg.endpoints {
        // No I/O yet: the channel connects on its first request.
        let client = Client::connect([endpoint.as_str()], Some(options.clone()))
            .await
            .map_err(|e| ConfigError {
                key: "etcd_endpoints".into(),
                message: format!("{endpoint}: {e}"),
            })?;
        clients.push((endpoint.clone(), client));
    }
    let login = cfg.username.clone().zip(cfg.password.clone());
    let members = Members::new(clients, login);
    let mut asks = JoinSet::new();
    for i in 0..members.len() {
        let m = members.clone();
        let cfg = cfg.clone();
        asks.spawn(async move { first_answer(&cfg, &m, i).await });
    }
    let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE;
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, asks.join_next()).await {
        match joined {
            Ok(Ok(())) => break,
            Ok(Err(Some(bad))) => return Err(bad.into()),
            Ok(Err(None)) | Err(_) => {}
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::super::tls::tests::cfg;
    use super::*;

    #[test]
    fn only_a_connection_gone_away_counts_as_closed() {
        assert!(closed("operation was canceled, connection closed"));
        assert!(closed("Connection reset by peer (os error 104)"));
        assert!(!closed("received fatal alert: BadCertificate"));
        assert!(!closed("Connection refused (os error 111)"));
    }

    #[tokio::test]
    async fn https_without_a_ca_file_is_a_setting_error() {
        match connect(&cfg(&["https://127.0.0.1:1"])).await {
            Err(ConnectError::Setting(e)) => assert_eq!(e.key, "etcd_ca_file"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_cluster_that_is_down_is_no_setting_error() {
        // Nothing listens on port 1: the members are made, the first call would fail.
        let members = connect(&cfg(&["http://127.0.0.1:1", "http://127.0.0.1:2"]))
            .await
            .unwrap();
        assert_eq!(members.endpoints().count(), 2);
    }

    #[test]
    fn refusals_of_the_user_name_the_password_or_user() {
        let mut c = cfg(&["http://e:1"]);
        c.username = Some("numgen".into());
        let status = |m: &str| {
            etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument(m.to_string()))
        };
        let e = misconfigured(
            &c,
            "http://e:1",
            &status("etcdserver: authentication failed, invalid user ID or password"),
        )
        .unwrap();
        assert_eq!(e.key, "etcd_password");
        assert!(e.message.contains("'numgen'"), "{e}");
        let e = misconfigured(
            &c,
            "http://e:1",
            &status("etcdserver: authentication is not enabled"),
        )
        .unwrap();
        assert_eq!(e.key, "etcd_username");
        assert!(misconfigured(&c, "http://e:1", &status("etcdserver: no leader")).is_none());
    }
}
