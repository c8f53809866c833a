//! Stop signals. SIGINT (ctrl-c) and SIGTERM stop a run the same way:
//! riders close their sessions and the reports are written with what was
//! measured. A single run cancels its riders; a `--processes` run passes
//! the signal on to its segments.

/// Resolves on the first SIGINT or SIGTERM. A signal that cannot be
/// listened for never fires (it must not stop the run at once).
pub(crate) async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = int => {}
            _ = term.recv() => {}
        },
        Err(_) => int.await,
    }
}
