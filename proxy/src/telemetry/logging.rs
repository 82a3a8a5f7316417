//! The proxy's own logs (stderr), with a filter that can change at runtime.

use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log filter of the running process.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

/// A filter string that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid log level `{0}`: {1}")]
pub struct BadFilter(String, String);

impl LogControl {
    /// Applies a new filter such as `debug` or `info,halyard_proxy::exec=trace`.
    pub fn set(&self, filter: &str) -> Result<(), BadFilter> {
        let f = EnvFilter::try_new(filter).map_err(|e| BadFilter(filter.into(), e.to_string()))?;
        self.handle
            .reload(f)
            .map_err(|e| BadFilter(filter.into(), e.to_string()))?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = filter.to_string();
        tracing::info!(filter, "log level changed");
        Ok(())
    }

    /// The filter in force.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Installs the global subscriber writing to stderr as text or JSON.
pub fn init(filter: &str, json: bool) -> Result<LogControl, BadFilter> {
    let f = EnvFilter::try_new(filter).map_err(|e| BadFilter(filter.into(), e.to_string()))?;
    let (layer, handle) = reload::Layer::new(f);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a terminal, never into files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    let registry = tracing_subscriber::registry().with(layer);
    if json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    Ok(LogControl {
        handle,
        current: Mutex::new(filter.to_string()),
    })
}
