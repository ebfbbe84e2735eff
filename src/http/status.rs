//! `GET /`: the status page for operators (SPEC 3.4). One self-contained HTML document —
//! no external asset, inline style and script only — that shows this node (worker, lease,
//! clock offset, readiness), the cluster's nodes with the readiness each one reports on its
//! own `/ready`, and every prefix with its mode, format and this node's counts. An inline
//! script fetches the page again every [`REFRESH_MS`] and swaps the content in, and says
//! so when the node stops answering; without script a `<noscript>` refresh does the same.
//!
//! [`gather`] collects a [`Snapshot`] (the only part that awaits: the registry read and the
//! peers' `/ready`); [`render`] turns it into HTML, escaping every value.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

use http::{HeaderValue, StatusCode, header};

use super::{HttpResponse, respond};
use crate::cluster::{ClusterView, NodeInfo, peer};
use crate::metrics::Metrics;
use crate::prefix::Mode;
use crate::service::Service;

/// How often the page fetches itself again.
pub const REFRESH_MS: u64 = 2000;
/// How long a peer gets to answer its `/ready` (in parallel, once per page).
const PEER_TIMEOUT: Duration = Duration::from_millis(800);
/// At most this many prefixes are listed (by key); the page says how many more there are.
const MAX_PREFIXES: usize = 1000;

/// What a node's `/ready` said.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeReady {
    /// `ok`, `degraded` or `not_ready`, with the reasons.
    Said {
        status: String,
        reasons: Vec<String>,
    },
    /// No JSON answer within the timeout.
    Unreachable,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeRow {
    pub info: NodeInfo,
    pub me: bool,
    pub ready: NodeReady,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PrefixRow {
    pub key: String,
    pub mode: Mode,
    pub format: String,
    /// `reset`, `strict`, `utc_offset` where they are not the defaults.
    pub notes: Vec<String>,
    pub issued: u64,
    pub degraded: u64,
}

/// Everything the page shows, read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub now_ms: u64,
    pub node_id: String,
    pub clustered: bool,
    /// (dc, worker) held, if any.
    pub worker: Option<(u64, u64)>,
    pub lease_lost: bool,
    /// Unix ms up to which this node's timestamps are reserved.
    pub reserved_until_ms: Option<u64>,
    pub clock_offset_ms: f64,
    pub ready: NodeReady,
    /// Degraded numbers issued by this node, by reason.
    pub degraded_by_reason: Vec<(String, u64)>,
    pub layout_ends_ms: u64,
    /// The registry, or why it could not be read.
    pub nodes: Result<Vec<NodeRow>, String>,
    pub prefixes: Vec<PrefixRow>,
    pub prefix_count: usize,
}

/// Reads everything the page shows.
pub async fn gather(service: &Service, cluster: &dyn ClusterView) -> Snapshot {
    let node = service.node();
    let metrics = service.metrics();
    let layout = node.layout();
    let readiness = node.readiness();
    let ready = NodeReady::Said {
        status: readiness.status.to_string(),
        reasons: readiness.reasons.iter().map(|r| r.to_string()).collect(),
    };
    let grant = node.grant();
    let nodes = match cluster.nodes().await {
        Ok(nodes) => Ok(node_rows(nodes, cluster.node_id(), &ready).await),
        Err(e) => Err(e.to_string()),
    };
    let (prefixes, prefix_count) = prefix_rows(service);
    Snapshot {
        now_ms: node.clock().now_ms(),
        node_id: cluster.node_id().to_string(),
        clustered: cluster.clustered(),
        worker: grant.map(|g| (g.dc, g.worker)),
        lease_lost: node.lease_lost(),
        reserved_until_ms: grant.map(|g| layout.unix_ms_at(g.ceiling)),
        clock_offset_ms: metrics.clock_offset.get() * 1000.0,
        ready,
        degraded_by_reason: crate::id::DegradeReason::ALL
            .iter()
            .map(|r| {
                let n = metrics.degraded.with_label_values(&[r.as_str()]).get();
                (r.as_str().to_string(), n)
            })
            .collect(),
        layout_ends_ms: layout.expires_at_ms(),
        nodes,
        prefixes,
        prefix_count,
    }
}

/// The registry's nodes, each with what its own `/ready` says (this node's from memory).
async fn node_rows(nodes: Vec<NodeInfo>, me: &str, my_ready: &NodeReady) -> Vec<NodeRow> {
    let mut asks = tokio::task::JoinSet::new();
    for (i, n) in nodes.iter().enumerate().filter(|(_, n)| n.node_id != me) {
        let addr = n.addr.clone();
        asks.spawn(async move { (i, peer::get_json(&addr, "/ready", PEER_TIMEOUT).await) });
    }
    let mut said = HashMap::new();
    while let Some(Ok((i, answer))) = asks.join_next().await {
        let ready = answer
            .and_then(|(_, v)| {
                let status = v.get("status")?.as_str()?.to_string();
                let reasons = v.get("reasons")?.as_array()?;
                let reasons = reasons.iter().filter_map(|r| Some(r.as_str()?.to_string()));
                Some(NodeReady::Said {
                    status,
                    reasons: reasons.collect(),
                })
            })
            .unwrap_or(NodeReady::Unreachable);
        said.insert(i, ready);
    }
    nodes
        .into_iter()
        .enumerate()
        .map(|(i, info)| {
            let mine = info.node_id == me;
            let ready = match said.remove(&i) {
                Some(r) => r,
                None if mine => my_ready.clone(),
                None => NodeReady::Unreachable,
            };
            NodeRow {
                info,
                me: mine,
                ready,
            }
        })
        .collect()
}

/// The first [`MAX_PREFIXES`] prefixes by key with this node's counts, and how many there are.
fn prefix_rows(service: &Service) -> (Vec<PrefixRow>, usize) {
    let mut entries = service.registry().entries();
    let count = entries.len();
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries.truncate(MAX_PREFIXES);
    let issued = Metrics::by_prefix(&service.metrics().issued);
    let degraded = Metrics::by_prefix(&service.metrics().degraded_by_prefix);
    let rows = entries
        .iter()
        .map(|e| {
            let c = &e.config;
            let mut notes = Vec::new();
            if c.mode == Mode::Sequence && c.reset != crate::prefix::Reset::Never {
                notes.push(format!("reset {}", c.reset.as_str()));
            }
            if c.strict {
                notes.push("strict".to_string());
            }
            let offset = c.utc_offset.to_string();
            if offset != "+00:00" {
                notes.push(format!("UTC{offset}"));
            }
            PrefixRow {
                key: e.key.to_string(),
                mode: c.mode,
                format: c.format.clone(),
                notes,
                issued: issued.get(&*e.key).copied().unwrap_or(0),
                degraded: degraded.get(&*e.key).copied().unwrap_or(0),
            }
        })
        .collect();
    (rows, count)
}

/// The page as a response: HTML that loads nothing from anywhere (its CSP says so).
pub fn response(snapshot: &Snapshot) -> HttpResponse {
    let mut resp = respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        render(snapshot).into_bytes(),
    );
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// `s` with `& < > " '` escaped, for text and attribute values alike.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// RFC 3339 (UTC, seconds) of Unix ms.
fn time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || ms.to_string(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
}

/// Milliseconds with a sign, and no `-0.0`.
fn signed_ms(ms: f64) -> String {
    let ms = if ms.abs() < 0.05 { 0.0 } else { ms };
    format!("{ms:+.1} ms")
}

/// How long ago a heartbeat stamped by another node's clock was, by this node's clock.
fn age(now_ms: u64, then_ms: u64) -> String {
    let s = (now_ms as f64 - then_ms as f64) / 1000.0;
    if s >= 0.0 {
        format!("{s:.1} s ago")
    } else {
        // Stamped by a clock ahead of this node's.
        format!("{:.1} s ahead", -s)
    }
}

/// A readiness as a badge: its class (`ok`, `degraded`, `bad`) and text.
fn ready_badge(r: &NodeReady) -> String {
    match r {
        NodeReady::Said { status, reasons } => {
            let class = match status.as_str() {
                "ok" => "ok",
                "degraded" => "degraded",
                _ => "bad",
            };
            let mut text = escape(status);
            if !reasons.is_empty() {
                let _ = write!(text, ": {}", escape(&reasons.join(", ")));
            }
            format!(r#"<span class="badge {class}" data-ready="{class}">{text}</span>"#)
        }
        NodeReady::Unreachable => {
            r#"<span class="badge bad" data-ready="unreachable">no answer</span>"#.to_string()
        }
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;\
text-align:left;vertical-align:top;white-space:nowrap}th{background:#f4f4f4}td.n{text-align:right;\
font-variant-numeric:tabular-nums}code{font-size:.95em}.badge{padding:.1em .5em;\
border-radius:.3em;font-weight:600}.ok{background:#d8f3dc;color:#1b4332}\
.degraded{background:#ffe8a3;color:#6b4e00}.bad{background:#ffccd0;color:#7a0010}\
.muted{color:#777}#stale{background:#ffccd0;padding:.5em;margin:.5em 0}\
tr.me td{background:#f0f6ff}";

/// Fetches the page every REFRESH_MS and swaps `#status` in; says when the node is gone.
const SCRIPT: &str = "(function(){var every=REFRESH;function tick(){\
fetch(location.href,{cache:'no-store'}).then(function(r){if(!r.ok)throw new Error('HTTP '+r.status);\
return r.text()}).then(function(html){var doc=new DOMParser().parseFromString(html,'text/html');\
var fresh=doc.getElementById('status');if(!fresh)throw new Error('no status in the page');\
document.getElementById('status').replaceWith(fresh);document.getElementById('stale').hidden=true})\
.catch(function(e){var s=document.getElementById('stale');s.hidden=false;\
s.textContent='This node did not answer at '+new Date().toISOString()+' ('+e.message+\
'); what follows is what it said before.'}).finally(function(){setTimeout(tick,every)})}\
setTimeout(tick,every)})();";

/// The whole page.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(8 * 1024 + s.prefixes.len() * 200);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>numgen {}</title><style>{STYLE}</style>\
         <noscript><meta http-equiv=\"refresh\" content=\"{}\"></noscript></head><body>\
         <div id=\"stale\" hidden></div><div id=\"status\">",
        escape(&s.node_id),
        REFRESH_MS.div_ceil(1000) + 1,
    );
    this_node(&mut out, s);
    nodes(&mut out, s);
    prefixes(&mut out, s);
    let _ = write!(
        out,
        "</div><script>{}</script></body></html>",
        SCRIPT.replace("REFRESH", &REFRESH_MS.to_string())
    );
    out
}

fn this_node(out: &mut String, s: &Snapshot) {
    let mode = if s.clustered { "cluster" } else { "standalone" };
    let worker = match s.worker {
        Some((dc, w)) => format!("{w} (datacenter {dc})"),
        None => "none".to_string(),
    };
    let lease = match (s.clustered, s.worker, s.lease_lost) {
        (false, _, _) => "none needed (standalone: static worker ID)",
        (true, None, _) => "none held",
        (true, Some(_), true) => "LOST: not renewed in time",
        (true, Some(_), false) => "held, renewed on time",
    };
    let reserved = s.reserved_until_ms.map_or_else(|| "-".to_string(), time);
    let offset = if s.clustered {
        format!("{} from the peers' median", signed_ms(s.clock_offset_ms))
    } else {
        "not measured (standalone)".to_string()
    };
    let degraded = s
        .degraded_by_reason
        .iter()
        .map(|(r, n)| format!("{} {n}", escape(r)))
        .collect::<Vec<_>>()
        .join(", ");
    let years = s.layout_ends_ms.saturating_sub(s.now_ms) as f64 / (365.25 * 86_400_000.0);
    let _ = write!(
        out,
        "<h1>numgen node <code>{id}</code></h1>\
         <p class=\"muted\">{mode} mode; page made at <span id=\"made\">{now}</span>, \
         refreshed every {every} s</p><table id=\"node\">\
         <tr><th>readiness</th><td>{ready}</td></tr>\
         <tr><th>worker ID</th><td id=\"worker\">{worker}</td></tr>\
         <tr><th>lease</th><td id=\"lease\">{lease}</td></tr>\
         <tr><th>timestamps reserved until</th><td>{reserved}</td></tr>\
         <tr><th>clock offset</th><td id=\"offset\">{offset}</td></tr>\
         <tr><th>degraded numbers</th><td id=\"degraded\">{degraded}</td></tr>\
         <tr><th>layout runs out</th><td>{ends} (in {years:.1} years)</td></tr></table>",
        id = escape(&s.node_id),
        now = time(s.now_ms),
        every = REFRESH_MS / 1000,
        ready = ready_badge(&s.ready),
        ends = time(s.layout_ends_ms),
    );
}

fn nodes(out: &mut String, s: &Snapshot) {
    out.push_str("<h2>Nodes</h2>");
    let rows = match &s.nodes {
        Ok(rows) => rows,
        Err(e) => {
            let _ = write!(
                out,
                "<p class=\"badge bad\" id=\"nodes-error\">cannot read the node registry: {}</p>",
                escape(e)
            );
            return;
        }
    };
    out.push_str(
        "<table id=\"nodes\"><tr><th>node</th><th>datacenter</th><th>worker</th>\
         <th>address</th><th>heartbeat</th><th>clock offset</th><th>readiness</th></tr>",
    );
    for r in rows {
        let n = &r.info;
        let worker = n
            .worker_id
            .map_or_else(|| "-".to_string(), |w| w.to_string());
        let _ = write!(
            out,
            "<tr{class} data-node=\"{id}\"><td><code>{id}</code>{me}</td><td class=\"n\">{dc}</td>\
             <td class=\"n\" data-worker>{worker}</td><td>{addr}</td><td class=\"n\">{age}</td>\
             <td class=\"n\">{offset}</td><td>{ready}</td></tr>",
            class = if r.me { " class=\"me\"" } else { "" },
            id = escape(&n.node_id),
            me = if r.me { " (this node)" } else { "" },
            dc = n.dc_id,
            addr = escape(&n.addr),
            age = age(s.now_ms, n.heartbeat_ms),
            offset = signed_ms(n.clock_offset_ms),
            ready = ready_badge(&r.ready),
        );
    }
    out.push_str("</table>");
}

fn prefixes(out: &mut String, s: &Snapshot) {
    let _ = write!(
        out,
        "<h2>Prefixes ({})</h2><p class=\"muted\">Counts are this node's since it started; \
         the cluster's totals are in Prometheus.</p><table id=\"prefixes\"><tr><th>prefix</th>\
         <th>mode</th><th>format</th><th>issued</th><th>degraded</th></tr>",
        s.prefix_count
    );
    for p in &s.prefixes {
        let notes = if p.notes.is_empty() {
            String::new()
        } else {
            format!(
                " <span class=\"muted\">{}</span>",
                escape(&p.notes.join(", "))
            )
        };
        let _ = write!(
            out,
            "<tr data-prefix=\"{key}\"><td><code>{key}</code></td><td>{mode}{notes}</td>\
             <td><code>{format}</code></td><td class=\"n\" data-issued>{issued}</td>\
             <td class=\"n{class}\" data-degraded>{degraded}</td></tr>",
            key = escape(&p.key),
            mode = p.mode.as_str(),
            format = escape(&p.format),
            issued = p.issued,
            class = if p.degraded > 0 { " degraded" } else { "" },
            degraded = p.degraded,
        );
    }
    out.push_str("</table>");
    if s.prefix_count > s.prefixes.len() {
        let _ = write!(
            out,
            "<p class=\"muted\">and {} more, not listed</p>",
            s.prefix_count - s.prefixes.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let info = |id: &str, w| NodeInfo {
            node_id: id.into(),
            dc_id: 1,
            worker_id: Some(w),
            addr: format!("10.0.0.{w}:8080"),
            heartbeat_ms: 1_763_700_000_000,
            clock_offset_ms: 2.5,
        };
        Snapshot {
            now_ms: 1_763_700_001_000,
            node_id: "numgen-<me>".into(),
            clustered: true,
            worker: Some((1, 3)),
            lease_lost: true,
            reserved_until_ms: Some(1_763_700_011_000),
            clock_offset_ms: -1.5,
            ready: NodeReady::Said {
                status: "degraded".into(),
                reasons: vec!["lease_lost".into()],
            },
            degraded_by_reason: vec![("lease_lost".into(), 7)],
            layout_ends_ms: 3_903_086_655_551,
            nodes: Ok(vec![
                NodeRow {
                    info: info("numgen-<me>", 3),
                    me: true,
                    ready: NodeReady::Unreachable,
                },
                NodeRow {
                    info: info("peer\"x", 4),
                    me: false,
                    ready: NodeReady::Said {
                        status: "ok".into(),
                        reasons: vec![],
                    },
                },
            ]),
            prefixes: vec![PrefixRow {
                key: "INV".into(),
                mode: Mode::Sequence,
                format: "INV-{year}-{SEQ:6}".into(),
                notes: vec!["reset yearly".into()],
                issued: 42,
                degraded: 0,
            }],
            prefix_count: 3,
        }
    }

    #[test]
    fn every_value_is_escaped_and_nothing_is_loaded_from_elsewhere() {
        let html = render(&snapshot());
        assert!(html.contains("numgen-&lt;me&gt;"), "{html}");
        assert!(html.contains("peer&quot;x"), "{html}");
        assert!(!html.contains("<me>") && !html.contains("peer\"x"));
        for external in ["src=", "href=", "@import", "url(", "http://", "https://"] {
            assert!(!html.contains(external), "{external} in {html}");
        }
    }

    #[test]
    fn the_page_shows_the_node_the_cluster_and_the_prefixes() {
        let html = render(&snapshot());
        for piece in [
            "3 (datacenter 1)",
            "LOST: not renewed in time",
            "-1.5 ms from the peers' median",
            "lease_lost 7",
            r#"data-ready="degraded">degraded: lease_lost"#,
            r#"data-ready="unreachable">no answer"#,
            r#"data-ready="ok">ok</span>"#,
            "1.0 s ago",
            "+2.5 ms",
            "<code>INV-{year}-{SEQ:6}</code>",
            "reset yearly",
            "<td class=\"n\" data-issued>42</td>",
            "and 2 more, not listed",
            "2093-",
        ] {
            assert!(html.contains(piece), "no {piece:?} in {html}");
        }
        let mut down = snapshot();
        down.nodes = Err("etcd timed out".into());
        down.clustered = false;
        let html = render(&down);
        assert!(html.contains("cannot read the node registry: etcd timed out"));
        assert!(html.contains("standalone: static worker ID"));
        assert_eq!(signed_ms(-0.01), "+0.0 ms");
        assert_eq!(age(1_000, 3_500), "2.5 s ahead");
    }

    #[test]
    fn the_response_is_html_that_is_not_cached_and_may_load_nothing() {
        let resp = response(&snapshot());
        let h = resp.headers();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert_eq!(h["cache-control"], "no-store");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .starts_with("default-src 'none'")
        );
    }
}
