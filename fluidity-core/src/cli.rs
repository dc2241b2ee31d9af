//! What every Fluidity binary sets up the same way: logging.
//!
//! Logs go to stderr (stdout is for what a program prints for its user, and for the server's
//! metric lines). Colours only on a terminal: a file, a pipe, journald or CloudWatch would show
//! the escape codes as text.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
