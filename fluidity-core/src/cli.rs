//! What every Fluidity binary sets up the same way: logging.
//!
//! Logs go to stderr (stdout is for what a program prints for its user, and for the server's
//! metric lines). Colours only on a terminal: a file, a pipe, journald or CloudWatch would show
//! the escape codes as text.

use std::io::IsTerminal;

/// Installs the global subscriber: `RUST_LOG` if set, else `level` (`error` … `trace`, or
/// any `EnvFilter` directive).
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
