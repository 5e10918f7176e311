//! Process signals.

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` and Kubernetes send).
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received Ctrl-C, shutting down"),
        _ = term => tracing::info!("received SIGTERM, shutting down"),
    }
}

/// Runs a service: serves metrics if configured, cancels the token on
/// Ctrl-C or SIGTERM, and returns when `serve` (given the token) has drained.
pub async fn run_until_signal<F>(
    telemetry: &crate::config::TelemetryArgs,
    serve: impl FnOnce(tokio_util::sync::CancellationToken) -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let shutdown = tokio_util::sync::CancellationToken::new();
    let metrics = match telemetry.metrics_addr {
        Some(addr) => {
            Some(crate::telemetry::serve_metrics(addr, shutdown.clone().cancelled_owned()).await?)
        }
        None => None,
    };
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        signal().await;
        on_signal.cancel();
    });
    let served = serve(shutdown.clone()).await;
    shutdown.cancel();
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    served
}
