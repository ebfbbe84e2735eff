//! Synchronisation the request path needs and the standard library lacks: [`SeqLock`], a
//! few words of rarely-written state that readers take without a lock or a write.

pub mod seqlock;

pub use seqlock::{SeqLock, Words};
