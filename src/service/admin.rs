//! Managing prefix configs (`/prefix-configs`): every change is written to the store first
//! (which refuses what would repeat a number, and records each change it accepts in the
//! audit history, in the same transaction) and then made live in this node's registry,
//! with the revision the store gave it, so that an answer arriving after a newer version
//! (from another request, or another node through the watch) changes nothing. A write
//! that times out may still commit: before the 503, the registry is made to agree with the
//! store once that write has run or been given up (in the background when the store stays
//! silent), so that memory and store never disagree for longer than the store is down.
//! A request without `mode` takes the key's mode on record, else its template's width
//! (SPEC 1.0).

use crate::prefix::{ConfigRequest, ModeSource, PrefixConfig, PrefixError};
use crate::store::{AuditMeta, AuditRecord, FormatClash, Revision, StoreError, Written};
use crate::timing::SETTLE_RETRY;

use super::Service;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("Prefix already exists")]
    Exists,
    #[error(
        "mode cannot change from '{from}' to '{to}': a prefix key keeps the mode it was first registered with, also after a DELETE; register a new prefix instead"
    )]
    ModeChange {
        from: &'static str,
        to: &'static str,
    },
    #[error(
        "reset cannot change from '{from}' to '{to}': this prefix's counters were made under '{from}' (also if it was deleted since) and a new reset would start them again; register a new prefix instead"
    )]
    ResetChange {
        from: &'static str,
        to: &'static str,
    },
    #[error("{}", clash_message(format, clash))]
    FormatClash { format: String, clash: FormatClash },
    #[error("Prefix '{0}' not found")]
    NotFound(String),
    #[error(transparent)]
    Config(#[from] PrefixError),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// What `FORMAT_CLASH` says: the string both formats can render, and what would do.
fn clash_message(format: &str, c: &FormatClash) -> String {
    let earlier = match c.values {
        Some((lo, hi)) => format!(
            "the earlier format '{}' of this prefix may have rendered (it held sequence values {lo} to {hi})",
            c.earlier
        ),
        None => format!(
            "the earlier format '{}' of this prefix may have rendered (snowflake IDs are not recorded, so every ID above its initial_seq counts)",
            c.earlier
        ),
    };
    format!(
        "format '{format}' could render '{}', which {earlier}; a prefix's numbers never repeat, so choose a format that cannot render the earlier one's numbers (for example with other literal text), or register a new prefix",
        c.example
    )
}

/// `Ok` when the store took the write of `config`; else why it did not, as an admin error.
fn accepted(written: Written, config: &PrefixConfig) -> Result<(), AdminError> {
    match written {
        Written::Created | Written::Replaced => Ok(()),
        Written::Exists => Err(AdminError::Exists),
        Written::ModeChange(from) => Err(AdminError::ModeChange {
            from: from.as_str(),
            to: config.mode.as_str(),
        }),
        Written::ResetChange(from) => Err(AdminError::ResetChange {
            from: from.as_str(),
            to: config.reset.as_str(),
        }),
        Written::FormatClash(clash) => Err(AdminError::FormatClash {
            format: config.format.clone(),
            clash,
        }),
    }
}

impl Service {
    /// `POST /prefix-configs/{key}`, by `audit`: the config and its store revision.
    pub async fn register(
        &self,
        key: &str,
        body: &[u8],
        audit: &AuditMeta,
    ) -> Result<(PrefixConfig, Revision), AdminError> {
        self.write(key, body, true, audit).await
    }

    /// `PUT /prefix-configs/{key}`, by `audit`: the config and its store revision.
    pub async fn replace(
        &self,
        key: &str,
        body: &[u8],
        audit: &AuditMeta,
    ) -> Result<(PrefixConfig, Revision), AdminError> {
        self.write(key, body, false, audit).await
    }

    /// Registers (`create`) or replaces the config of `key` from a request body.
    async fn write(
        &self,
        key: &str,
        body: &[u8],
        create: bool,
        audit: &AuditMeta,
    ) -> Result<(PrefixConfig, Revision), AdminError> {
        let request = ConfigRequest::parse(body)?;
        let (mut written, mut config, source) =
            self.try_write(key, &request, create, audit).await?;
        if matches!(written.0, Written::ModeChange(_)) && source == ModeSource::Width {
            // Another node registered the key first, in the other mode, between our read
            // of its record and our write: decide again with the mode now on record.
            (written, config, _) = self.try_write(key, &request, create, audit).await?;
        }
        let (written, revision) = written;
        accepted(written, &config)?;
        self.apply(key, config.clone(), revision)?;
        let what = if create {
            "prefix registered"
        } else {
            "prefix config replaced"
        };
        tracing::info!(prefix = key, revision, config = %config.to_log_json(), "{what}");
        Ok((config, revision))
    }

    /// Builds the config of `request` in the mode it names, else the key's mode on record,
    /// else its template's, and hands it to the store (by `audit`).
    async fn try_write(
        &self,
        key: &str,
        request: &ConfigRequest,
        create: bool,
        audit: &AuditMeta,
    ) -> Result<((Written, Revision), PrefixConfig, ModeSource), AdminError> {
        let (mode, source) = match request.mode() {
            Some(m) => (m, ModeSource::Given),
            None => match self.store().prefix_record(key).await? {
                Some(record) => (record.mode, ModeSource::Key),
                None => (request.mode_from_width(), ModeSource::Width),
            },
        };
        let (config, _) = request.build(mode, source, self.floor_below())?;
        let written = self.store().write_prefix(key, &config, create, audit).await;
        let written = self.settle_on_timeout(key, written).await?;
        Ok((written, config, source))
    }

    /// A snowflake prefix's `initial_seq` must be below this: the smallest ID the layout
    /// issues now (SPEC 1.3).
    pub(super) fn floor_below(&self) -> u64 {
        let (layout, clock) = (self.node().layout(), self.node().clock());
        layout.first_id_at(layout.units_at(clock.now_ms()))
    }

    /// `result` of a write to `key`; when it timed out, first makes the registry agree with
    /// the store about `key` (see [`Service::settle`]).
    async fn settle_on_timeout<T>(
        &self,
        key: &str,
        result: Result<T, StoreError>,
    ) -> Result<T, AdminError> {
        if let Err(StoreError::Timeout(_)) = &result {
            self.settle(key).await;
        }
        Ok(result?)
    }

    /// After a write to `key` that timed out, and may still commit: reads `key` once that
    /// write has run or been given up ([`crate::store::Store::settle_prefix`]) and applies
    /// what the store holds (only if newer than what the registry holds). One try within
    /// the store deadline; when that fails too, a background task keeps asking until the
    /// store answers.
    async fn settle(&self, key: &str) {
        match self.store().settle_prefix(key).await {
            Ok(seen) => {
                if let Err(e) = self.registry.observe(key, seen) {
                    tracing::error!(prefix = key, error = %e, "stored config is invalid");
                }
            }
            Err(e) => {
                tracing::warn!(prefix = key, error = %e, "cannot tell yet whether a timed-out write of this prefix committed; retrying in the background");
                self.settle_in_background(key);
            }
        }
    }

    fn settle_in_background(&self, key: &str) {
        let settling = self.settling.clone();
        if !lock(&settling).insert(key.to_string()) {
            return;
        }
        let (store, registry, key) = (self.store().clone(), self.registry.clone(), key.to_string());
        let task = async move {
            loop {
                match store.settle_prefix(&key).await {
                    Ok(seen) => {
                        if let Err(e) = registry.observe(&key, seen) {
                            tracing::error!(prefix = key, error = %e, "stored config is invalid");
                        }
                        tracing::info!(prefix = key, "timed-out write settled");
                        break;
                    }
                    // Asked again at once: the next try waits in the queue right behind the
                    // stalled write, so memory follows as soon as the write lands.
                    Err(StoreError::Timeout(_)) => {}
                    Err(_) => tokio::time::sleep(SETTLE_RETRY).await,
                }
            }
            lock(&settling).remove(&key);
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(task);
        }
    }

    /// `GET /prefix-configs/{key}`: the config and its store revision.
    pub async fn config(&self, key: &str) -> Result<(PrefixConfig, Revision), AdminError> {
        if let Some(e) = self.registry().get(key) {
            return Ok((e.config.clone(), e.revision()));
        }
        let seen = self.store().observe_prefix(key).await?;
        match seen.config {
            Some(c) => Ok((c, seen.revision)),
            None => Err(AdminError::NotFound(key.to_string())),
        }
    }

    /// `GET /prefix-configs`, sorted by key.
    pub async fn configs(&self) -> Result<Vec<(String, PrefixConfig)>, AdminError> {
        let mut all = self.store().list_prefixes().await?;
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// `GET /prefix-configs/{key}/history`: the audit records of `key`, newest first.
    pub async fn history(&self, key: &str) -> Result<Vec<AuditRecord>, AdminError> {
        Ok(self.store().prefix_history(key).await?)
    }

    /// `DELETE /prefix-configs/{key}`, by `audit`.
    pub async fn delete(&self, key: &str, audit: &AuditMeta) -> Result<(), AdminError> {
        let removed = self.store().remove_prefix(key, audit).await;
        let Some(revision) = self.settle_on_timeout(key, removed).await? else {
            return Err(AdminError::NotFound(key.to_string()));
        };
        self.forget(key, revision);
        tracing::info!(prefix = key, revision, "prefix deleted");
        Ok(())
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::AdminError;
    use crate::clock::ManualClock;
    use crate::service::test_support::{Stalled, T0, by, service, service_on, take};
    use crate::service::{IssueError, Service};
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{Store, StoreError, counter_name};

    /// Waits (a bounded poll) until the replaced allocator of `key` has given its tail back
    /// (off the request path): the store's counter stands at `at` again.
    async fn tail_given_back(s: &Service, key: &str, at: u64) {
        let counter = counter_name(key, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.store().get_seq(&counter).await != Ok(Some(at)) {
            assert!(
                Instant::now() < deadline,
                "the tail of {key} was not given back"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn register_issue_replace_delete() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let s = service(&dir, clock.clone());
        assert_eq!(
            take(&s, "TEST", 1).await,
            Err(IssueError::NotRegistered("TEST".into()))
        );
        s.register(
            "TEST",
            br#"{"format":"TEST-{SEQ:4}","mode":"sequence"}"#,
            &by(),
        )
        .await
        .unwrap();
        assert_eq!(
            s.register("TEST", br#"{"format":"TEST-{SEQ:4}"}"#, &by())
                .await,
            Err(AdminError::Exists)
        );
        let got: Vec<String> = take(&s, "TEST", 3)
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.0)
            .collect();
        assert_eq!(got, ["TEST-0001", "TEST-0002", "TEST-0003"]);
        assert!(matches!(
            s.replace(
                "TEST",
                br#"{"format":"T-{SEQ:4}","mode":"snowflake"}"#,
                &by()
            )
            .await,
            Err(AdminError::ModeChange {
                from: "sequence",
                to: "snowflake"
            })
        ));
        // Without `mode` the key keeps its own; a new format starts above every block
        // reserved for the old one (the old tail is not given back to it).
        let (c, _) = s
            .replace("TEST", br#"{"format":"T-{SEQ:2}","initial_seq":0}"#, &by())
            .await
            .unwrap();
        assert_eq!(c.mode, crate::prefix::Mode::Sequence);
        assert_eq!(take(&s, "TEST", 1).await.unwrap()[0].0, "T-1001");
        assert_eq!(s.config("TEST").await.unwrap().0.format, "T-{SEQ:2}");
        assert_eq!(s.configs().await.unwrap().len(), 1);
        s.delete("TEST", &by()).await.unwrap();
        assert_eq!(
            s.delete("TEST", &by()).await,
            Err(AdminError::NotFound("TEST".into()))
        );
        assert!(matches!(
            s.config("TEST").await,
            Err(AdminError::NotFound(_))
        ));
        // The same format again: its tail was given back, the counter goes on densely.
        tail_given_back(&s, "TEST", 1001).await;
        s.register("TEST", br#"{"format":"T-{SEQ:2}"}"#, &by())
            .await
            .unwrap();
        assert_eq!(take(&s, "TEST", 1).await.unwrap()[0].0, "T-1002");
    }

    #[tokio::test]
    async fn another_reset_is_refused_and_a_bad_body_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, Arc::new(ManualClock::new(T0)));
        s.register(
            "INV",
            br#"{"format":"{year}-{SEQ:3}","mode":"sequence","reset":"yearly"}"#,
            &by(),
        )
        .await
        .unwrap();
        assert_eq!(
            s.replace("INV", br#"{"format":"{SEQ:3}","mode":"sequence"}"#, &by())
                .await,
            Err(AdminError::ResetChange {
                from: "yearly",
                to: "never"
            })
        );
        assert!(matches!(
            s.replace("INV", br#"{"format":"{SEQ:3}","bogus":1}"#, &by())
                .await,
            Err(AdminError::Config(_))
        ));
        // The config read back is the first one, from memory and (after a restart) the store.
        assert_eq!(s.config("INV").await.unwrap().0.format, "{year}-{SEQ:3}");
        let again = service_on(s.store().clone(), Arc::new(ManualClock::new(T0)));
        assert_eq!(
            again.config("INV").await.unwrap().0.format,
            "{year}-{SEQ:3}"
        );
        assert_eq!(again.load().await, Ok(1));
        assert!(again.registry().get("INV").is_some());
    }

    #[tokio::test]
    async fn a_snowflake_prefix_registered_again_never_repeats_even_with_the_clock_back() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let s = service(&dir, clock.clone());
        s.register(
            "ORD",
            br#"{"format":"O-{SEQ:3}","mode":"snowflake"}"#,
            &by(),
        )
        .await
        .unwrap();
        let mut seen = HashSet::new();
        for (_, id, _) in take(&s, "ORD", 5000).await.unwrap() {
            assert!(seen.insert(id));
        }
        s.delete("ORD", &by()).await.unwrap();
        clock.step_back(3);
        // Without `mode`: the key's own, snowflake.
        s.register("ORD", br#"{"format":"O-{SEQ:3}"}"#, &by())
            .await
            .unwrap();
        for (_, id, _) in take(&s, "ORD", 3000).await.unwrap() {
            assert!(seen.insert(id), "repeated {id}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_times_out_refuses_admin_changes() {
        let s = service_on(Arc::new(Stalled), Arc::new(ManualClock::new(T0)));
        assert!(matches!(
            s.register("X", br#"{"format":"X{SEQ:2}"}"#, &by()).await,
            Err(AdminError::Storage(StoreError::Timeout(_)))
        ));
        assert!(matches!(s.configs().await, Err(AdminError::Storage(_))));
        assert!(matches!(
            s.delete("X", &by()).await,
            Err(AdminError::Storage(_))
        ));
        assert!(s.registry().is_empty());
    }

    /// What the node says about `key`, through every door: (the config `GET` shows, the
    /// number a request gets). They agree when both see it or neither does.
    async fn views(s: &Service, key: &str) -> (Option<String>, Result<String, IssueError>) {
        let config = match s.config(key).await {
            Ok((c, _)) => Some(c.format),
            Err(AdminError::NotFound(_)) => None,
            Err(e) => panic!("GET {key}: {e}"),
        };
        let number = take(s, key, 1).await.map(|n| n[0].0.clone());
        (config, number)
    }

    fn agree(view: &(Option<String>, Result<String, IssueError>)) -> bool {
        matches!(
            view,
            (Some(_), Ok(_)) | (None, Err(IssueError::NotRegistered(_)))
        )
    }

    /// Polls (bounded) until `GET` and numbers agree that `key` is `registered` (or not);
    /// returns what they say.
    async fn agreed(
        s: &Service,
        key: &str,
        registered: bool,
    ) -> (Option<String>, Result<String, IssueError>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let view = views(s, key).await;
            if agree(&view) && view.0.is_some() == registered {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "GET and numbers do not agree that {key} is registered={registered}: {view:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A standalone service whose embedded store times out after `timeout`.
    fn stalling(dir: &tempfile::TempDir, timeout: Duration) -> (EmbeddedStore, Service) {
        let store = EmbeddedStore::open(&dir.path().join("db"))
            .unwrap()
            .with_timeout(timeout);
        let s = service_on(Arc::new(store.clone()), Arc::new(ManualClock::new(T0)));
        (store, s)
    }

    /// Finding 6, a write that waited in the queue: answered 503, it is never run later,
    /// so memory and store agree (nothing registered) and a retry registers it.
    #[tokio::test]
    async fn a_write_that_timed_out_in_the_queue_never_commits_later() {
        let dir = tempfile::tempdir().unwrap();
        let (store, s) = stalling(&dir, Duration::from_millis(100));
        let body = br#"{"format":"X-{SEQ:3}","mode":"sequence"}"#;
        let plug = store.plug();
        plug.entered();
        assert!(matches!(
            s.register("X", body, &by()).await,
            Err(AdminError::Storage(StoreError::Timeout(_)))
        ));
        assert!(matches!(
            s.delete("X", &by()).await,
            Err(AdminError::Storage(StoreError::Timeout(_)))
        ));
        assert!(agree(&views(&s, "X").await));
        plug.release();
        // The queue drains; whatever it ran, GET and numbers agree.
        assert_eq!(store.settle_prefix("X").await.unwrap().config, None);
        assert!(agree(&views(&s, "X").await), "{:?}", views(&s, "X").await);
        s.register("X", body, &by()).await.unwrap();
        assert_eq!(agreed(&s, "X", true).await.1, Ok("X-001".to_string()));
    }

    /// Finding 6, a write already in a transaction whose commit stalls: answered 503, it
    /// commits later, and the registry learns it then (no restart needed): GET, numbers and
    /// a second POST all say it is registered.
    #[tokio::test]
    async fn a_write_that_timed_out_in_its_commit_reaches_memory_when_it_lands() {
        let dir = tempfile::tempdir().unwrap();
        let (store, s) = stalling(&dir, Duration::from_millis(300));
        let body = br#"{"format":"Y-{SEQ:3}","mode":"sequence"}"#;
        let first = store.plug();
        first.entered();
        // On this (current-thread) runtime the spawned request runs until it waits for the
        // store: its write is queued before the second plug.
        let s = Arc::new(s);
        let request = tokio::spawn({
            let s = s.clone();
            async move { s.register("Y", body, &by()).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let second = store.plug();
        // The writer takes the write and the second plug into one transaction: the write
        // runs, the commit waits for the plug.
        first.release();
        second.entered();
        assert!(matches!(
            request.await.unwrap(),
            Err(AdminError::Storage(StoreError::Timeout(_)))
        ));
        // Not committed yet: nobody sees it.
        assert!(agree(&views(&s, "Y").await), "{:?}", views(&s, "Y").await);
        second.release();
        assert_eq!(agreed(&s, "Y", true).await.1, Ok("Y-001".to_string()));
        assert_eq!(s.register("Y", body, &by()).await, Err(AdminError::Exists));
        assert_eq!(s.config("Y").await.unwrap().0.format, "Y-{SEQ:3}");
    }
}
