//! Managing prefix configs (`/prefix-configs`): every change is written to the store first
//! (which refuses what would repeat a number) and then made live in this node's registry.
//! A request without `mode` takes the key's mode on record, else its template's width
//! (SPEC 1.0).

use crate::prefix::{ConfigRequest, ModeSource, PrefixConfig, PrefixError};
use crate::store::{FormatClash, StoreError, Written};

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
    /// `POST /prefix-configs/{key}`
    pub async fn register(&self, key: &str, body: &[u8]) -> Result<PrefixConfig, AdminError> {
        self.write(key, body, true).await
    }

    /// `PUT /prefix-configs/{key}`
    pub async fn replace(&self, key: &str, body: &[u8]) -> Result<PrefixConfig, AdminError> {
        self.write(key, body, false).await
    }

    /// Registers (`create`) or replaces the config of `key` from a request body.
    async fn write(
        &self,
        key: &str,
        body: &[u8],
        create: bool,
    ) -> Result<PrefixConfig, AdminError> {
        let request = ConfigRequest::parse(body)?;
        let (mut written, mut config, source) = self.try_write(key, &request, create).await?;
        if matches!(written, Written::ModeChange(_)) && source == ModeSource::Width {
            // Another node registered the key first, in the other mode, between our read
            // of its record and our write: decide again with the mode now on record.
            (written, config, _) = self.try_write(key, &request, create).await?;
        }
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

    /// Builds the config of `request` in the mode it names, else the key's mode on record,
    /// else its template's, and hands it to the store.
    async fn try_write(
        &self,
        key: &str,
        request: &ConfigRequest,
        create: bool,
    ) -> Result<(Written, PrefixConfig, ModeSource), AdminError> {
        let (mode, source) = match request.mode() {
            Some(m) => (m, ModeSource::Given),
            None => match self.store().prefix_record(key).await? {
                Some(record) => (record.mode, ModeSource::Key),
                None => (request.mode_from_width(), ModeSource::Width),
            },
        };
        let (config, _) = request.build(mode, source, self.floor_below())?;
        let written = if create {
            self.store().create_prefix(key, &config).await?
        } else {
            self.store().replace_prefix(key, &config).await?
        };
        Ok((written, config, source))
    }

    /// A snowflake prefix's `initial_seq` must be below this: the smallest ID the layout
    /// issues now (SPEC 1.3).
    pub(super) fn floor_below(&self) -> u64 {
        let (layout, clock) = (self.node().layout(), self.node().clock());
        layout.first_id_at(layout.units_at(clock.now_ms()))
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

    /// `DELETE /prefix-configs/{key}`
    pub async fn delete(&self, key: &str) -> Result<(), AdminError> {
        if !self.store().delete_prefix(key).await? {
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
    use crate::service::test_support::{Stalled, T0, service, service_on, take};
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
        s.register("TEST", br#"{"format":"TEST-{SEQ:4}","mode":"sequence"}"#)
            .await
            .unwrap();
        assert_eq!(
            s.register("TEST", br#"{"format":"TEST-{SEQ:4}"}"#).await,
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
            s.replace("TEST", br#"{"format":"T-{SEQ:4}","mode":"snowflake"}"#)
                .await,
            Err(AdminError::ModeChange {
                from: "sequence",
                to: "snowflake"
            })
        ));
        // Without `mode` the key keeps its own; a new format starts above every block
        // reserved for the old one (the old tail is not given back to it).
        let c = s
            .replace("TEST", br#"{"format":"T-{SEQ:2}","initial_seq":0}"#)
            .await
            .unwrap();
        assert_eq!(c.mode, crate::prefix::Mode::Sequence);
        assert_eq!(take(&s, "TEST", 1).await.unwrap()[0].0, "T-1001");
        assert_eq!(s.config("TEST").await.unwrap().format, "T-{SEQ:2}");
        assert_eq!(s.configs().await.unwrap().len(), 1);
        s.delete("TEST").await.unwrap();
        assert_eq!(
            s.delete("TEST").await,
            Err(AdminError::NotFound("TEST".into()))
        );
        assert!(matches!(
            s.config("TEST").await,
            Err(AdminError::NotFound(_))
        ));
        // The same format again: its tail was given back, the counter goes on densely.
        tail_given_back(&s, "TEST", 1001).await;
        s.register("TEST", br#"{"format":"T-{SEQ:2}"}"#)
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
        )
        .await
        .unwrap();
        assert_eq!(
            s.replace("INV", br#"{"format":"{SEQ:3}","mode":"sequence"}"#)
                .await,
            Err(AdminError::ResetChange {
                from: "yearly",
                to: "never"
            })
        );
        assert!(matches!(
            s.replace("INV", br#"{"format":"{SEQ:3}","bogus":1}"#).await,
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
        s.register("ORD", br#"{"format":"O-{SEQ:3}","mode":"snowflake"}"#)
            .await
            .unwrap();
        let mut seen = HashSet::new();
        for (_, id, _) in take(&s, "ORD", 5000).await.unwrap() {
            assert!(seen.insert(id));
        }
        s.delete("ORD").await.unwrap();
        clock.step_back(3);
        // Without `mode`: the key's own, snowflake.
        s.register("ORD", br#"{"format":"O-{SEQ:3}"}"#)
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
            s.register("X", br#"{"format":"X{SEQ:2}"}"#).await,
            Err(AdminError::Storage(StoreError::Timeout(_)))
        ));
        assert!(matches!(s.configs().await, Err(AdminError::Storage(_))));
        assert!(matches!(s.delete("X").await, Err(AdminError::Storage(_))));
        assert!(s.registry().is_empty());
    }
}
