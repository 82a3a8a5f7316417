//! The tracer in force: built on first use of a tracing configuration, reused while the
//! configuration stays the same, replaced when it changes; its exporter is flushed on shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::task::JoinHandle;

use super::trace::{self, ActiveSpan, SpanKind, TraceConfig, TraceMetrics, Tracer};

/// One configuration's tracer (`None` when the configuration could not be used).
pub struct TracerSlot {
    cfg: Arc<TraceConfig>,
    /// The tracer, when the configuration was usable.
    pub tracer: Option<Tracer>,
}

/// The tracer of the configuration in force.
pub struct Tracers {
    current: ArcSwapOption<TracerSlot>,
    /// Serialises rebuilds only; requests never take it once a slot matches.
    rebuild: Mutex<Vec<JoinHandle<()>>>,
    metrics: Arc<TraceMetrics>,
}

impl Tracers {
    /// No tracer yet; spans are counted in `metrics`.
    pub fn new(metrics: Arc<TraceMetrics>) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            rebuild: Mutex::new(Vec::new()),
            metrics,
        }
    }

    /// Starts a request's span under `cfg` (see [`trace::begin`]); the tracer is looked up
    /// only when the request is sampled, so unsampled requests touch nothing shared. A sampled
    /// request whose configuration has no usable tracer keeps its propagated context but
    /// records nothing.
    pub fn begin(
        &self,
        cfg: Option<&Arc<TraceConfig>>,
        kind: SpanKind,
        headers: &mut http::HeaderMap,
    ) -> Option<(ActiveSpan, Arc<TracerSlot>)> {
        let cfg = cfg?;
        let span = trace::begin(cfg.sampling_percent, kind, headers)?;
        let current = self.current.load();
        let slot = match current.as_ref() {
            Some(slot) if Arc::ptr_eq(&slot.cfg, cfg) => {
                slot.tracer.is_some().then(|| slot.clone())
            }
            _ => {
                drop(current);
                self.switch(cfg)
            }
        }?;
        Some((span, slot))
    }

    /// The slot for `cfg`, building its tracer (and spawning its exporter) when `cfg` is new;
    /// once per configuration change.
    fn switch(&self, cfg: &Arc<TraceConfig>) -> Option<Arc<TracerSlot>> {
        let mut exporters = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        let slot = match current {
            Some(slot) if Arc::ptr_eq(&slot.cfg, cfg) => slot,
            // The same settings in a new snapshot: keep the tracer, remember the new pointer.
            Some(slot) if *slot.cfg == **cfg => Arc::new(TracerSlot {
                cfg: cfg.clone(),
                tracer: slot.tracer.clone(),
            }),
            _ => {
                let tracer = match Tracer::new((**cfg).clone(), self.metrics.clone()) {
                    Ok((tracer, exporter)) => {
                        tracing::info!(endpoint = %cfg.endpoint, protocol = ?cfg.protocol, sampling = cfg.sampling_percent, "tracing to an OTLP collector");
                        exporters.retain(|h| !h.is_finished());
                        exporters.push(tokio::spawn(exporter));
                        Some(tracer)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "tracing configuration unusable; no spans are recorded");
                        None
                    }
                };
                Arc::new(TracerSlot {
                    cfg: cfg.clone(),
                    tracer,
                })
            }
        };
        self.current.store(Some(slot.clone()));
        slot.tracer.is_some().then_some(slot)
    }

    /// Drops the tracer in force and waits up to `deadline` for the exporters to send what is
    /// queued (requests still holding a tracer keep theirs alive until they end).
    pub async fn shutdown(&self, deadline: Duration) {
        self.current.store(None);
        let exporters =
            std::mem::take(&mut *self.rebuild.lock().unwrap_or_else(|e| e.into_inner()));
        let all = futures_util::future::join_all(exporters);
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("span export did not finish before the deadline");
        }
    }
}
