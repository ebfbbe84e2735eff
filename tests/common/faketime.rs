//! A process's wall clock moved by libfaketime (Debian package `faketime`): [`FakeClock`]
//! holds an offset in a file that the preloaded library reads on every clock read
//! (`FAKETIME_TIMESTAMP_FILE`, `FAKETIME_NO_CACHE=1`); the monotonic clock stays real
//! (`FAKETIME_DONT_FAKE_MONOTONIC=1`), so timers and lease deadlines are unaffected. The
//! file is replaced by rename, so the process never reads a half-written offset.

use std::path::PathBuf;

use super::server::ServerOpts;

pub fn libfaketime() -> Option<PathBuf> {
    let arch = std::env::consts::ARCH;
    [
        format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketime.so.1"),
        "/usr/lib/faketime/libfaketime.so.1".to_string(),
        "/usr/local/lib/faketime/libfaketime.so.1".to_string(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// The wall-clock offset of one numgen process, moved by rewriting a file.
pub struct FakeClock {
    lib: PathBuf,
    dir: tempfile::TempDir,
}

impl FakeClock {
    /// A clock file holding `offset` (libfaketime syntax: `+0`, `-10s`, `-0.003`); `None`
    /// (after saying so) when libfaketime is not installed and this is not CI.
    pub fn new(offset: &str) -> Option<FakeClock> {
        let Some(lib) = libfaketime() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("libfaketime is not installed (Debian package `faketime`); CI needs it");
            }
            println!("skipping: libfaketime not installed (Debian package `faketime`)");
            return None;
        };
        let clock = FakeClock {
            lib,
            dir: tempfile::tempdir().expect("temp dir for the clock file"),
        };
        clock.set(offset);
        Some(clock)
    }

    pub fn file(&self) -> PathBuf {
        self.dir.path().join("offset")
    }

    /// Moves the clock: the file is replaced atomically.
    pub fn set(&self, offset: &str) {
        let tmp = self.dir.path().join("offset.tmp");
        std::fs::write(&tmp, format!("{offset}\n")).expect("write the clock file");
        std::fs::rename(&tmp, self.file()).expect("replace the clock file");
    }

    /// `opts` with libfaketime preloaded and reading this clock's file.
    pub fn apply(&self, opts: ServerOpts) -> ServerOpts {
        opts.env("LD_PRELOAD", self.lib.display().to_string())
            .env("FAKETIME_TIMESTAMP_FILE", self.file().display().to_string())
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
    }
}
