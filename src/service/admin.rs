//! Managing prefix configs (`/prefix-configs`): every change is written to the store first
//! (which refuses what would repeat a number, and records each change it accepts in the
//! audit history, in the same transaction) and then made live in this node's registry.

use crate::prefix::{PrefixConfig, PrefixError};
use crate::store::{AuditMeta, AuditRecord, StoreError, Written};

use super::Service;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("Prefix already exists")]
    Exists,
    #[error("mode cannot change from '{from}' to '{to}'; register a new prefix instead")]
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
    #[error("Prefix '{0}' not found")]
    NotFound(String),
    #[error(transparent)]
    Config(#[from] PrefixError),
    #[error(transparent)]
    Storage(#[from] StoreError),
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
    }
}

impl Service {
    /// `POST /prefix-configs/{key}`, by `audit`.
    pub async fn register(
        &self,
        key: &str,
        body: &[u8],
        audit: &AuditMeta,
    ) -> Result<PrefixConfig, AdminError> {
        self.write(key, body, true, audit).await
    }

    /// `PUT /prefix-configs/{key}`, by `audit`.
    pub async fn replace(
        &self,
        key: &str,
        body: &[u8],
        audit: &AuditMeta,
    ) -> Result<PrefixConfig, AdminError> {
        self.write(key, body, false, audit).await
    }

    /// Registers (`create`) or replaces the config of `key` from a request body.
    async fn write(
        &self,
        key: &str,
        body: &[u8],
        create: bool,
        audit: &AuditMeta,
    ) -> Result<PrefixConfig, AdminError> {
        let (config, _) = PrefixConfig::from_request(body)?;
        let written = self
            .store()
            .write_prefix(key, &config, create, audit)
            .await?;
        accepted(written, &config)?;
        self.apply(key, config.clone())?;
        let what = if create {
            "prefix registered"
        } else {
            "prefix config replaced"
        };
        tracing::info!(prefix = key, config = %config.to_log_json(), "{what}");
        Ok(config)
    }

    /// `GET /prefix-configs/{key}`
    pub async fn config(&self, key: &str) -> Result<PrefixConfig, AdminError> {
        if let Some(e) = self.registry().get(key) {
            return Ok(e.config.clone());
        }
        match self.store().get_prefix(key).await? {
            Some(c) => Ok(c),
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
        if !self.store().remove_prefix(key, audit).await? {
            return Err(AdminError::NotFound(key.to_string()));
        }
        self.forget(key);
        tracing::info!(prefix = key, "prefix deleted");
        Ok(())
    }
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
    use crate::store::{StoreError, counter_name};

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
            s.replace("TEST", br#"{"format":"T-{SEQ:4}"}"#, &by()).await,
            Err(AdminError::ModeChange {
                from: "sequence",
                to: "snowflake"
            })
        ));
        // Replacing with a lower initial_seq never rewinds; the tail given back is reused.
        s.replace(
            "TEST",
            br#"{"format":"T-{SEQ:2}","mode":"sequence","initial_seq":0}"#,
            &by(),
        )
        .await
        .unwrap();
        tail_given_back(&s, "TEST", 3).await;
        assert_eq!(take(&s, "TEST", 1).await.unwrap()[0].0, "T-04");
        assert_eq!(s.config("TEST").await.unwrap().format, "T-{SEQ:2}");
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
        tail_given_back(&s, "TEST", 4).await;
        s.register(
            "TEST",
            br#"{"format":"T-{SEQ:2}","mode":"sequence"}"#,
            &by(),
        )
        .await
        .unwrap();
        assert_eq!(take(&s, "TEST", 1).await.unwrap()[0].0, "T-05");
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
        assert_eq!(s.config("INV").await.unwrap().format, "{year}-{SEQ:3}");
        let again = service_on(s.store().clone(), Arc::new(ManualClock::new(T0)));
        assert_eq!(again.config("INV").await.unwrap().format, "{year}-{SEQ:3}");
        assert_eq!(again.load().await, Ok(1));
        assert!(again.registry().get("INV").is_some());
    }

    #[tokio::test]
    async fn a_snowflake_prefix_registered_again_never_repeats_even_with_the_clock_back() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let s = service(&dir, clock.clone());
        s.register("ORD", br#"{"format":"O-{SEQ:3}"}"#, &by())
            .await
            .unwrap();
        let mut seen = HashSet::new();
        for (_, id, _) in take(&s, "ORD", 5000).await.unwrap() {
            assert!(seen.insert(id));
        }
        s.delete("ORD", &by()).await.unwrap();
        clock.step_back(3);
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
}
