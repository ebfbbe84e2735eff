//! The node's background tasks, tracked by name: one that ends before it is told to stop
//! (a panic above all) is logged at ERROR and stops the server (see `app`'s doc).

use std::collections::HashMap;

use tokio::task::{Id, JoinError, JoinSet};

/// The node's background tasks, each named for the log.
#[derive(Default)]
pub(super) struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    failed: Vec<&'static str>,
}

impl Tasks {
    pub(super) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Records how a task ended; `early`: before it was told to stop.
    fn record(&mut self, ended: Result<(Id, ()), JoinError>, early: bool) {
        let (id, error) = match ended {
            Ok((id, ())) => (id, None),
            Err(e) => (e.id(), Some(e)),
        };
        let name = self.names.get(&id).copied().unwrap_or("unnamed");
        match error {
            Some(e) => tracing::error!(task = name, error = %e, "background task failed"),
            None if early => tracing::error!(task = name, "background task ended before shutdown"),
            None => return,
        }
        self.failed.push(name);
    }

    /// Resolves when a task ends before shutdown; never, while none does.
    pub(super) async fn ended_early(&mut self) {
        match self.set.join_next_with_id().await {
            Some(ended) => self.record(ended, true),
            None => std::future::pending().await,
        }
    }

    /// Awaits every task (they have been told to stop); the names of those that failed.
    pub(super) async fn join_all(mut self) -> Vec<&'static str> {
        while let Some(ended) = self.set.join_next_with_id().await {
            self.record(ended, false);
        }
        self.failed
    }
}
