//! A history checker for black-box tests: every number a test gets back is recorded as
//! (prefix, `number` string, `id`, degraded, node, connection), and [`History::check`]
//! looks for what a caller would see as a broken promise (SPEC 1.3):
//! - the same `number` string twice for one prefix,
//! - the same `id` twice for one prefix,
//! - a connection whose numbers of one prefix go backwards (requests on one connection are
//!   sequential; a test opens a new [`Recorder`] wherever order may legitimately restart:
//!   another node, a restarted node, a changed config of a sequence prefix).
//!
//! Recording is cheap: each client thread fills its own [`Recorder`] and hands it over when
//! dropped, so the checker adds no lock to the load loop.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

/// One number as the server answered it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Number {
    pub number: String,
    pub id: String,
    pub degraded: bool,
}

impl Number {
    /// The id as a u64 (every id numgen issues fits).
    pub fn id_u64(&self) -> Option<u64> {
        self.id.parse().ok()
    }
}

/// Parses a 200 answer of `GET /numbers/{key}` (`batch`: a `?count=` request) into its
/// numbers, in issue order.
pub fn parse_numbers(body: &[u8], batch: bool) -> Result<Vec<Number>, String> {
    #[derive(Deserialize)]
    struct Batch {
        numbers: Vec<Number>,
    }
    let text = || String::from_utf8_lossy(body).into_owned();
    if batch {
        serde_json::from_slice::<Batch>(body)
            .map(|b| b.numbers)
            .map_err(|e| format!("{e}: {}", text()))
    } else {
        serde_json::from_slice::<Number>(body)
            .map(|n| vec![n])
            .map_err(|e| format!("{e}: {}", text()))
    }
}

/// A recorded number with where it came from.
#[derive(Clone, Debug)]
pub struct Record {
    pub prefix: String,
    pub number: String,
    pub id: u64,
    pub degraded: bool,
    pub node: String,
    /// The recorder (one ordered stream of requests) it came from.
    pub stream: u64,
    /// Its position in that stream.
    pub pos: u64,
}

/// Every number recorded by a test, from all its threads.
#[derive(Default)]
pub struct History {
    records: Mutex<Vec<Record>>,
    streams: AtomicU64,
}

/// What [`History::check`] found.
#[derive(Debug, Default)]
pub struct Report {
    pub numbers: usize,
    pub degraded: usize,
    pub repeated_numbers: Vec<(String, String, Vec<Record>)>,
    pub repeated_ids: Vec<(String, u64, Vec<Record>)>,
    pub backwards: Vec<(Record, Record)>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.repeated_numbers.is_empty()
            && self.repeated_ids.is_empty()
            && self.backwards.is_empty()
    }

    /// Up to ten findings of each kind, for a failure message.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "{} numbers checked ({} degraded)",
            self.numbers, self.degraded
        );
        for (prefix, number, recs) in self.repeated_numbers.iter().take(10) {
            let _ = write!(out, "\n  number {number:?} of {prefix} repeated: {recs:?}");
        }
        for (prefix, id, recs) in self.repeated_ids.iter().take(10) {
            let _ = write!(out, "\n  id {id} of {prefix} repeated: {recs:?}");
        }
        for (a, b) in self.backwards.iter().take(10) {
            let _ = write!(out, "\n  went backwards on one stream: {a:?} then {b:?}");
        }
        out
    }
}

impl History {
    pub fn new() -> Arc<History> {
        Arc::new(History::default())
    }

    /// A recorder for one ordered stream of requests to `node` (e.g. one connection).
    pub fn recorder(self: &Arc<History>, node: impl Into<String>) -> Recorder {
        Recorder {
            history: Arc::clone(self),
            node: node.into(),
            stream: self.streams.fetch_add(1, Ordering::Relaxed),
            pos: 0,
            buf: Vec::new(),
        }
    }

    /// Every record so far (a copy).
    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn len(&self) -> usize {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn absorb(&self, mut recs: Vec<Record>) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(&mut recs);
    }

    /// Looks through everything recorded so far.
    pub fn check(&self) -> Report {
        let records = self.records();
        let mut report = Report {
            numbers: records.len(),
            degraded: records.iter().filter(|r| r.degraded).count(),
            ..Report::default()
        };
        let mut by_number: HashMap<(&str, &str), Vec<&Record>> = HashMap::new();
        let mut by_id: HashMap<(&str, u64), Vec<&Record>> = HashMap::new();
        let mut last: HashMap<(u64, &str), &Record> = HashMap::new();
        let mut sorted: Vec<&Record> = records.iter().collect();
        sorted.sort_by_key(|r| (r.stream, r.pos));
        for r in sorted {
            by_number.entry((&r.prefix, &r.number)).or_default().push(r);
            by_id.entry((&r.prefix, r.id)).or_default().push(r);
            if let Some(prev) = last.insert((r.stream, &r.prefix), r)
                && prev.id >= r.id
            {
                report.backwards.push((prev.clone(), r.clone()));
            }
        }
        for ((prefix, number), recs) in by_number {
            if recs.len() > 1 {
                let recs = recs.into_iter().cloned().collect();
                report
                    .repeated_numbers
                    .push((prefix.to_owned(), number.to_owned(), recs));
            }
        }
        for ((prefix, id), recs) in by_id {
            if recs.len() > 1 {
                let recs = recs.into_iter().cloned().collect();
                report.repeated_ids.push((prefix.to_owned(), id, recs));
            }
        }
        report
    }

    /// Panics with the findings unless the history is clean; returns the report.
    pub fn assert_clean(&self) -> Report {
        let report = self.check();
        assert!(
            report.is_clean(),
            "history check failed: {}",
            report.describe()
        );
        report
    }
}

/// Collects one stream's numbers; hands them to its [`History`] when dropped (or on
/// [`Recorder::flush`]).
pub struct Recorder {
    history: Arc<History>,
    node: String,
    stream: u64,
    pos: u64,
    buf: Vec<Record>,
}

impl Recorder {
    /// Records `numbers` of `prefix`, in the order they were issued. Panics on an id that
    /// is not a u64 (numgen never issues one).
    pub fn record(&mut self, prefix: &str, numbers: &[Number]) {
        for n in numbers {
            let id = n
                .id_u64()
                .unwrap_or_else(|| panic!("id {:?} of {prefix} is not a u64", n.id));
            self.buf.push(Record {
                prefix: prefix.to_owned(),
                number: n.number.clone(),
                id,
                degraded: n.degraded,
                node: self.node.clone(),
                stream: self.stream,
                pos: self.pos,
            });
            self.pos += 1;
        }
    }

    /// Parses a 200 numbers answer and records it; returns the numbers.
    pub fn record_body(
        &mut self,
        prefix: &str,
        body: &[u8],
        batch: bool,
    ) -> Result<Vec<Number>, String> {
        let numbers = parse_numbers(body, batch)?;
        self.record(prefix, &numbers);
        Ok(numbers)
    }

    /// Starts a new stream from here on (order may restart: another node, a restart, a
    /// config change); what was recorded stays.
    pub fn restart_order(&mut self, node: impl Into<String>) {
        self.flush();
        self.node = node.into();
        self.stream = self.history.streams.fetch_add(1, Ordering::Relaxed);
        self.pos = 0;
    }

    pub fn flush(&mut self) {
        self.history.absorb(std::mem::take(&mut self.buf));
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}
