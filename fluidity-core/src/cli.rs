//! What every Fluidity binary sets up the same way: configuration from file, environment and
//! flags ([`Flags`], [`load_config`]), logging ([`init_logging`]), and the allocator
//! ([`keep_freed_buffers`]).
//!
//! Logs go to stderr (stdout is for what a program prints for its user, and for the server's
//! metric lines). Colours only on a terminal: a file, a pipe, journald or CloudWatch would show
//! the escape codes as text.

use std::io::IsTerminal;
use std::path::Path;

use serde::de::DeserializeOwned;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{ConfigKeys, load};

/// Command-line flags that override config keys: only the flags the user gave.
#[derive(Debug, Default)]
pub struct Flags(Vec<(&'static str, String)>);

impl Flags {
    /// No flags.
    pub fn new() -> Self {
        Flags::default()
    }

    /// Sets `key` to `value` if the flag was given.
    pub fn set(&mut self, key: &'static str, value: Option<impl ToString>) -> &mut Self {
        if let Some(value) = value {
            self.0.push((key, value.to_string()));
        }
        self
    }

    /// Sets `key` to `true` if a boolean switch was given (an absent switch does not force
    /// `false` over the file and the environment).
    pub fn switch(&mut self, key: &'static str, given: bool) -> &mut Self {
        self.set(key, given.then_some("true"))
    }
}

/// Free memory glibc keeps at the top of a heap before it hands it back to the kernel, once
/// [`keep_freed_buffers`] has run (glibc's default is 128 KiB).
pub const HEAP_TRIM_THRESHOLD: usize = 2 * 1024 * 1024;

/// Makes glibc keep up to [`HEAP_TRIM_THRESHOLD`] of freed memory per heap instead of 128 KiB.
/// Call it first thing in `main`.
///
/// Why: a tunnel allocates and frees 64 KiB buffers all the time (read buffers are freed
/// whenever a socket drains, so that idle tunnels hold none). With glibc's default threshold,
/// each time the top of a heap holds more than 128 KiB of free memory it is returned to the
/// kernel, and the next buffer takes a page fault per 4 KiB to get it back: 57,000–86,000 per
/// GB on the server during an upload, and a quarter of its CPU (docs/performance.md).
///
/// How, without `unsafe` (`mallopt` is an FFI call, and the workspace forbids `unsafe`): glibc
/// raises its mmap threshold to the size of a freed mmap-backed block, and its trim threshold
/// to twice that ("dynamic mmap threshold" in mallopt(3)). Freeing one block of half the wanted
/// trim threshold, allocated above the default 128 KiB mmap threshold, sets both. The cost is
/// bounded: at most [`HEAP_TRIM_THRESHOLD`] of free memory stays mapped per malloc arena.
/// `GLIBC_TUNABLES`/`MALLOC_*_` settings in the environment turn the dynamic thresholds off,
/// and so win. Other allocators and C libraries ignore this.
pub fn keep_freed_buffers() {
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        let block: Vec<u8> = Vec::with_capacity(HEAP_TRIM_THRESHOLD / 2);
        // black_box: an allocation never used may be optimised away, and then nothing is freed.
        drop(std::hint::black_box(block));
    }
}

/// A binary's configuration: defaults < `file` < `FLUIDITY_*` variables < `flags`. Installs
/// logging at the level the configuration names (`log_level`), then logs what the loader
/// noticed (unknown keys, unset `${VAR}`s), so the warnings are not lost before logging exists.
pub fn load_config<T: DeserializeOwned + ConfigKeys>(
    file: Option<&Path>,
    flags: &Flags,
    log_level: impl FnOnce(&T) -> &str,
) -> crate::Result<T> {
    let loaded = load::<T>(file, |key| std::env::var(key).ok(), &flags.0)?;
    init_logging(log_level(&loaded.config));
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    Ok(loaded.config)
}

/// Installs the global subscriber. The filter is `RUST_LOG` if set, else `level`: a level
/// (`error` … `trace`), optionally with per-target levels (`info,fluidity_core=debug`).
/// (Targets, not regex-based directives: the regex engine would add half a megabyte to every
/// binary.)
pub fn init_logging(level: &str) {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| level.to_owned());
    let (filter, problem) = match directives.parse::<Targets>() {
        Ok(filter) => (filter, None),
        Err(e) => (
            Targets::new().with_default(tracing::Level::INFO),
            Some(format!(
                "ignoring the log filter {directives:?} ({e}); logging at info"
            )),
        ),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .with(filter)
        .init();
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_per_target_levels_parse() {
        for ok in [
            "info",
            "debug",
            "warn,fluidity_core=trace",
            "fluidity_server=debug",
        ] {
            assert!(ok.parse::<Targets>().is_ok(), "{ok}");
        }
    }
}
