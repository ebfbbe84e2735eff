//! The embedded store's single writer: one thread takes the queued writes, runs up to
//! [`MAX_GROUP`] of them in one redb transaction (group commit) and tells each caller the
//! commit's outcome; a write whose caller gave up is skipped.

use std::sync::Arc;

use redb::Database;

use super::unavailable;
use crate::store::StoreError;

/// How many waiting writes one transaction takes at most.
pub(super) const MAX_GROUP: usize = 256;

/// What a write tells its caller once the commit's outcome is known.
pub(super) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A write for the writer thread.
pub(super) trait WriteJob: Send {
    /// Runs inside the shared transaction. `true` in the second place when the write failed
    /// half-way, so the transaction must not be committed.
    fn run(self: Box<Self>, txn: &redb::WriteTransaction) -> (Completion, bool);
    /// Answers the caller when no transaction could be started.
    fn fail(self: Box<Self>, e: StoreError);
    /// True when the caller no longer waits for the answer (its deadline passed): the job
    /// is dropped unrun, so a write answered as timed out never commits later.
    fn abandoned(&self) -> bool;
}

pub(super) struct TypedJob<T, F> {
    pub(super) f: F,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send,
{
    fn run(self: Box<Self>, txn: &redb::WriteTransaction) -> (Completion, bool) {
        let out = (self.f)(txn);
        // Logical refusals (overflow, mode change, layout) write nothing; an I/O error may
        // have written half.
        let poisoned = matches!(out, Err(StoreError::Unavailable(_)));
        let reply = self.reply;
        let done: Completion = Box::new(move |commit: Result<(), StoreError>| {
            let _ = reply.send(commit.and(out));
        });
        (done, poisoned)
    }

    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }

    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// The writer thread: takes every waiting write into one transaction, commits, answers.
pub(super) fn write_loop(db: Arc<Database>, jobs: std::sync::mpsc::Receiver<Box<dyn WriteJob>>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        group.retain(|j| !j.abandoned());
        if group.is_empty() {
            continue;
        }
        let txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                let e = unavailable(e);
                group.into_iter().for_each(|j| j.fail(e.clone()));
                continue;
            }
        };
        let mut done = Vec::with_capacity(group.len());
        let mut poisoned = false;
        for job in group {
            let (d, p) = job.run(&txn);
            done.push(d);
            poisoned |= p;
        }
        let outcome = if poisoned {
            drop(txn);
            Err(StoreError::Unavailable(
                "a write in the same transaction failed; nothing was written".into(),
            ))
        } else {
            txn.commit().map_err(unavailable)
        };
        for d in done {
            d(outcome.clone());
        }
    }
}

/// The queue to the writer thread. Dropped with the last clone of the store: it closes the
/// queue and waits for the thread, so that once the store is gone the file is closed and
/// its lock free (a server run again in the same process can open it at once).
pub(super) struct Writer {
    pub(super) jobs: Option<std::sync::mpsc::Sender<Box<dyn WriteJob>>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub(super) fn send(&self, job: Box<dyn WriteJob>) -> Result<(), StoreError> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| StoreError::Unavailable("the store's writer has stopped".into()))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}
