//! A sequence lock: a value of a few words that is written rarely (writers take a mutex)
//! and read on every request without a lock, a reference count, or any write by the
//! reader. Used for the TSC clock's base reading (`clock::tsc`) and the worker grant
//! (`node::grant`).
//!
//! The value lives in `AtomicU64` words ([`Words`]), never in an `UnsafeCell`: a reader
//! that overlaps a write reads torn words, and with plain memory that read would be a data
//! race (undefined behaviour) even though the result is thrown away. Relaxed atomic loads
//! and stores compile to the same plain `mov`s on x86-64, so this costs nothing.
//!
//! # Why the orderings are enough
//!
//! `seq` is even when the words are stable and odd while a write is under way. A writer
//! (one at a time, under `writer`) does:
//!
//! ```text
//! W1 seq = s + 1 (Relaxed)    W2 fence(Release)    W3 words = new (Relaxed)
//! W4 seq = s + 2 (Release)
//! ```
//!
//! and a reader:
//!
//! ```text
//! R1 s1 = seq (Acquire)    R2 words (Relaxed)    R3 fence(Acquire)    R4 s2 = seq (Relaxed)
//! ```
//!
//! accepting the words only when `s1 == s2` and `s1` is even. Suppose it accepted words
//! mixing two writes, or words of a write that had not finished. Then some load of R2
//! read a value stored by the W3 of a write `w` whose W4 the reader's R1 did not read (R1
//! read an older `seq`, even, so from before `w`'s W1). That load reading `w`'s W3, with
//! W2 before it and R3 after it, makes `w`'s W2 synchronise with R3 (the fence-to-fence
//! rule), so `w`'s W1 happens before R4, and R4 reads `s + 1` or a later value: not
//! `s1`, and the reader retries. Conversely, when R1 reads the W4 of the last write
//! (Release to Acquire), every W3 of that write happens before R2, so R2 cannot read an
//! older word either. Hence an accepted read is exactly the value of one write. This is
//! the construction of H.-J. Boehm, "Can seqlocks get along with programming language
//! memory models?" (MSPC 2012); on x86-64 both fences are compiler barriers only.
//!
//! `seq` is a `u64` bumped twice per write: it does not wrap in the life of a process.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Mutex, MutexGuard, TryLockError};

/// A `Copy` value as `N` machine words, so that a [`SeqLock`] can keep it in atomics.
pub trait Words<const N: usize>: Copy {
    fn to_words(self) -> [u64; N];
    fn from_words(words: [u64; N]) -> Self;
}

/// See the module documentation. `N` is the value's size in words ([`Words`]).
#[derive(Debug)]
pub struct SeqLock<T, const N: usize> {
    /// Odd while a write is under way; bumped twice per write.
    seq: AtomicU64,
    words: [AtomicU64; N],
    /// Serialises writers; readers never touch it.
    writer: Mutex<()>,
    _value: PhantomData<T>,
}

impl<T: Words<N> + Default, const N: usize> Default for SeqLock<T, N> {
    fn default() -> Self {
        SeqLock::new(T::default())
    }
}

impl<T: Words<N>, const N: usize> SeqLock<T, N> {
    pub fn new(value: T) -> Self {
        SeqLock {
            seq: AtomicU64::new(0),
            words: value.to_words().map(AtomicU64::new),
            writer: Mutex::new(()),
            _value: PhantomData,
        }
    }

    /// The value, or `None` while a write is under way (a read that a completed write
    /// overlapped is simply repeated). For readers that have something better to do than
    /// wait, such as reading the real clock.
    #[inline]
    pub fn try_read(&self) -> Option<T> {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                return None;
            }
            let words = std::array::from_fn(|i| self.words[i].load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return Some(T::from_words(words));
            }
        }
    }

    /// The value, spinning while a write is under way (a write is a handful of stores).
    #[inline]
    pub fn read(&self) -> T {
        loop {
            if let Some(value) = self.try_read() {
                return value;
            }
            std::hint::spin_loop();
        }
    }

    /// Replaces the value.
    pub fn write(&self, value: T) {
        let _one_writer = self.lock();
        self.publish(value);
    }

    /// Replaces the value with `f` of the current one, with no other write in between.
    pub fn update(&self, f: impl FnOnce(T) -> T) {
        let _one_writer = self.lock();
        // Only writers store to the words, and we are the only writer: no tearing here.
        let current = T::from_words(std::array::from_fn(|i| {
            self.words[i].load(Ordering::Relaxed)
        }));
        self.publish(f(current));
    }

    /// Writes `make()` unless another writer is busy, and returns what was written; `None`
    /// (and `make` not called) when another write is under way.
    pub fn try_write(&self, make: impl FnOnce() -> T) -> Option<T> {
        let _one_writer = match self.writer.try_lock() {
            Ok(guard) => guard,
            // A writer that panicked inside `update`'s `f` published nothing.
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        let value = make();
        self.publish(value);
        Some(value)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// W1 to W4 of the module documentation. The caller holds `writer`.
    fn publish(&self, value: T) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (word, v) in self.words.iter().zip(value.to_words()) {
            word.store(v, Ordering::Relaxed);
        }
        self.seq.store(s + 2, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Four copies of one number: a torn read shows as unequal words.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct Quad(u64);

    impl Words<4> for Quad {
        fn to_words(self) -> [u64; 4] {
            [self.0; 4]
        }
        fn from_words(w: [u64; 4]) -> Quad {
            assert!(w.iter().all(|&x| x == w[0]), "torn read: {w:?}");
            Quad(w[0])
        }
    }

    #[test]
    fn reads_what_was_written() {
        let lock = SeqLock::<Quad, 4>::default();
        assert_eq!(lock.read(), Quad(0));
        lock.write(Quad(7));
        assert_eq!(lock.read(), Quad(7));
        assert_eq!(lock.try_read(), Some(Quad(7)));
        lock.update(|q| Quad(q.0 + 1));
        assert_eq!(lock.read(), Quad(8));
        assert_eq!(lock.try_write(|| Quad(9)), Some(Quad(9)));
        assert_eq!(lock.read(), Quad(9));
    }

    #[test]
    fn try_write_gives_way_to_a_busy_writer() {
        let lock = SeqLock::<Quad, 4>::new(Quad(1));
        lock.update(|q| {
            let mut called = false;
            assert_eq!(
                lock.try_write(|| {
                    called = true;
                    Quad(100)
                }),
                None
            );
            assert!(!called);
            Quad(q.0 + 1)
        });
        assert_eq!(lock.read(), Quad(2));
    }

    #[test]
    fn a_panicking_update_leaves_the_value_and_the_lock_usable() {
        let lock = Arc::new(SeqLock::<Quad, 4>::new(Quad(1)));
        let l = lock.clone();
        let panicked = std::thread::spawn(move || l.update(|_| panic!("in update")))
            .join()
            .is_err();
        assert!(panicked);
        assert_eq!(lock.try_read(), Some(Quad(1)));
        lock.write(Quad(2));
        assert_eq!(lock.try_write(|| Quad(3)), Some(Quad(3)));
        assert_eq!(lock.read(), Quad(3));
    }

    /// Two writers (one with `update`, one with `try_write`) against two readers (one with
    /// `read`, one with `try_read`): every read is one whole write, and since every write
    /// is larger than the one before, no reader ever sees the value go back.
    #[test]
    fn concurrent_readers_see_whole_writes_in_order() {
        const WRITES: u64 = 50_000;
        let lock = Arc::new(SeqLock::<Quad, 4>::default());
        let updater = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                for _ in 0..WRITES {
                    lock.update(|q| Quad(q.0 + 1));
                }
            })
        };
        let racer = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                let mut wrote = 0u64;
                for _ in 0..WRITES {
                    // A value no larger than the current one plus one keeps the order:
                    // under the lock, nothing else moves it meanwhile.
                    if lock.try_write(|| Quad(lock.read().0 + 1)).is_some() {
                        wrote += 1;
                    }
                }
                wrote
            })
        };
        let readers: Vec<_> = [false, true]
            .into_iter()
            .map(|blocking| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    let (mut last, mut reads) = (0u64, 0u64);
                    while last < WRITES {
                        let seen = if blocking {
                            lock.read()
                        } else {
                            match lock.try_read() {
                                Some(q) => q,
                                None => continue,
                            }
                        };
                        assert!(seen.0 >= last, "went back: {last} -> {}", seen.0);
                        last = seen.0;
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        updater.join().unwrap();
        let raced = racer.join().unwrap();
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        assert_eq!(lock.read(), Quad(WRITES + raced));
    }
}
