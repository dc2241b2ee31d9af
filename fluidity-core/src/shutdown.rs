//! Process shutdown for the binaries: the future that completes on SIGINT or SIGTERM.

/// Completes when the process receives SIGINT (Ctrl-C) or SIGTERM (what ECS, systemd and
/// Kubernetes send).
pub async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = interrupt.await;
            return;
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
