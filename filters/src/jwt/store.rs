//! Remote key sets: fetched from a JWKS URI or found by OpenID Connect discovery, cached
//! behind `ArcSwap`, refreshed in the background, refetched when a token names an unknown key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use rustls::pki_types::CertificateDer;
use serde_json::{Map, Value};
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::error::{AuthnError, JwtError};
use super::fetch::{is_http_url, roots, HttpClient};
use super::jwks::{KeyError, KeySet, MAX_JWKS_LEN};
use super::token::Alg;

/// How a [`JwksStore`] fetches and refreshes keys.
#[derive(Debug, Clone)]
pub struct JwksStoreOptions {
    /// Keys are fetched again this long after a successful fetch; default 5 min.
    pub refresh_interval: Duration,
    /// At most one refetch per source for tokens with an unknown `kid` in this period;
    /// default 10 s.
    pub min_refetch_interval: Duration,
    /// First retry delay after a failed fetch, doubled per failure; default 1 s.
    pub retry_initial: Duration,
    /// Longest retry delay (never longer than `refresh_interval`); default 60 s.
    pub retry_max: Duration,
    /// Largest JWKS or discovery document; default (and at most) 1 MiB.
    pub max_body_bytes: usize,
    /// CAs trusted for https besides the web PKI roots (e.g. a test CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for JwksStoreOptions {
    fn default() -> Self {
        JwksStoreOptions {
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(10),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            max_body_bytes: MAX_JWKS_LEN,
            extra_roots: Vec::new(),
        }
    }
}

/// Where a remote key set comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// A JWKS URI.
    Jwks(String),
    /// An issuer URL whose discovery document names the JWKS URI.
    Discovery(String),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Jwks(uri) => uri.clone(),
            Target::Discovery(issuer) => discovery_url(issuer),
        }
    }
}

/// `<issuer>/.well-known/openid-configuration`.
pub(crate) fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// The state of one remote key set, for admin pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksStatus {
    /// The JWKS URI, or the discovery document's URL.
    pub source: String,
    /// Usable keys of the last good fetch; `None` before the first success.
    pub keys: Option<usize>,
    /// Fetch attempts so far.
    pub fetches: u64,
    /// Failed fetch attempts so far.
    pub failures: u64,
    /// The last attempt's error (`None` when it succeeded).
    pub last_error: Option<String>,
}

/// Remote key sets shared by all compiled configurations of a proxy's life.
///
/// Rules naming the same JWKS URI (or issuer, for discovery) share one cached set and one
/// background task; the task ends when `shutdown` is cancelled or when no compiled
/// [`super::Authenticator`] uses the set any more.
pub struct JwksStore {
    options: JwksStoreOptions,
    http: Arc<HttpClient>,
    shutdown: CancellationToken,
    runtime: Option<Handle>,
    sources: Mutex<HashMap<Target, Weak<Source>>>,
    tasks: Arc<AtomicUsize>,
}

impl std::fmt::Debug for JwksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl JwksStore {
    /// A store with default options; call inside a Tokio runtime (fetch tasks run on it).
    pub fn new(shutdown: CancellationToken) -> Arc<Self> {
        let options = JwksStoreOptions::default();
        let roots = webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect();
        let http = HttpClient::new(roots, options.max_body_bytes);
        Self::build(shutdown, options, http)
    }

    /// A store with `options`; fails when an extra CA certificate is not usable.
    pub fn with_options(
        shutdown: CancellationToken,
        mut options: JwksStoreOptions,
    ) -> Result<Arc<Self>, JwtError> {
        options.max_body_bytes = options.max_body_bytes.min(MAX_JWKS_LEN);
        let roots = roots(&options.extra_roots).map_err(JwtError::Roots)?;
        let http = HttpClient::new(roots, options.max_body_bytes);
        Ok(Self::build(shutdown, options, http))
    }

    fn build(
        shutdown: CancellationToken,
        options: JwksStoreOptions,
        http: HttpClient,
    ) -> Arc<Self> {
        Arc::new(JwksStore {
            options,
            http: Arc::new(http),
            shutdown,
            runtime: Handle::try_current().ok(),
            sources: Mutex::new(HashMap::new()),
            tasks: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The state of every key set in use.
    pub fn status(&self) -> Vec<JwksStatus> {
        let sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<JwksStatus> = sources
            .values()
            .filter_map(Weak::upgrade)
            .map(|s| s.status())
            .collect();
        all.sort_by(|a, b| a.source.cmp(&b.source));
        all
    }

    /// How many background fetch tasks are running.
    pub fn running_tasks(&self) -> usize {
        self.tasks.load(Ordering::SeqCst)
    }

    /// The shared source of `target`, created (and its first fetch started) when new.
    pub(crate) fn source(
        &self,
        target: Target,
        timeout: Duration,
    ) -> Result<Arc<Source>, JwtError> {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        sources.retain(|_, s| s.strong_count() > 0);
        if let Some(source) = sources.get(&target).and_then(Weak::upgrade) {
            source.set_timeout(timeout);
            return Ok(source);
        }
        let runtime = match &self.runtime {
            Some(handle) => handle.clone(),
            None => Handle::try_current().map_err(|_| JwtError::NoRuntime)?,
        };
        let stop = self.shutdown.child_token();
        let wake = Arc::new(Notify::new());
        let source = Arc::new(Source {
            target: target.clone(),
            keys: ArcSwapOption::empty(),
            generation: watch::Sender::new(0),
            wake: wake.clone(),
            timeout_ms: AtomicU64::new(millis(timeout)),
            // The first fetch starts right away: requests wait for it instead of kicking.
            in_flight: AtomicBool::new(true),
            last_kick_ms: AtomicU64::new(0),
            min_refetch_ms: millis(self.options.min_refetch_interval),
            epoch: Instant::now(),
            stats: Mutex::new(Stats::default()),
            _stop: stop.clone().drop_guard(),
        });
        let task = Task {
            source: Arc::downgrade(&source),
            http: self.http.clone(),
            stop,
            wake,
            options: self.options.clone(),
            _running: Running::new(self.tasks.clone()),
        };
        runtime.spawn(task.run());
        sources.insert(target, Arc::downgrade(&source));
        Ok(source)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Default)]
struct Stats {
    fetches: u64,
    failures: u64,
    last_error: Option<String>,
}

/// One remote key set: the last good keys and what the request path needs to ask for more.
pub(crate) struct Source {
    target: Target,
    keys: ArcSwapOption<KeySet>,
    /// Bumped after every fetch attempt, so that requests can wait for one.
    generation: watch::Sender<u64>,
    wake: Arc<Notify>,
    timeout_ms: AtomicU64,
    in_flight: AtomicBool,
    /// Milliseconds since `epoch` (+1) of the last refetch asked for by a request; 0: never.
    last_kick_ms: AtomicU64,
    min_refetch_ms: u64,
    epoch: Instant,
    stats: Mutex<Stats>,
    /// Dropped with the last compiled rule that uses this source: ends its task.
    _stop: DropGuard,
}

impl Source {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms.store(millis(timeout), Ordering::Relaxed);
    }

    fn status(&self) -> JwksStatus {
        let stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        JwksStatus {
            source: self.target.describe(),
            keys: self.keys.load().as_ref().map(|k| k.len()),
            fetches: stats.fetches,
            failures: stats.failures,
            last_error: stats.last_error.clone(),
        }
    }

    /// Asks the task for a fetch now, at most once per `min_refetch_ms`. True when a fetch
    /// is coming (asked for now, by someone else, or already running).
    fn kick(&self) -> bool {
        if self.in_flight.load(Ordering::Acquire) {
            return true;
        }
        let now = millis(self.epoch.elapsed()).saturating_add(1);
        let last = self.last_kick_ms.load(Ordering::Acquire);
        if last != 0 && now.saturating_sub(last) < self.min_refetch_ms {
            return false;
        }
        if self
            .last_kick_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::debug!(source = %self.target.describe(), "JWKS refetch requested");
            self.wake.notify_one();
        }
        true
    }

    async fn wait_for_fetch(&self, seen: &mut watch::Receiver<u64>) {
        let _ = tokio::time::timeout(self.timeout(), seen.changed()).await;
    }

    /// Verifies a signature with this source's keys, fetching them first when none were
    /// fetched yet and refetching once when the `kid` is unknown (both bounded by the timeout).
    pub(crate) async fn verify(
        &self,
        alg: Alg,
        kid: Option<&str>,
        message: &[u8],
        sig: &[u8],
    ) -> Result<(), AuthnError> {
        let mut seen = self.generation.subscribe();
        let keys = match self.keys.load_full() {
            Some(keys) => keys,
            None => {
                if self.kick() {
                    self.wait_for_fetch(&mut seen).await;
                }
                self.keys.load_full().ok_or(AuthnError::KeysUnavailable)?
            }
        };
        match keys.verify(alg, kid, message, sig) {
            Err(KeyError::UnknownKid) if self.kick() => {
                self.wait_for_fetch(&mut seen).await;
                let keys = self.keys.load_full().ok_or(AuthnError::KeysUnavailable)?;
                keys.verify(alg, kid, message, sig)
                    .map_err(AuthnError::from)
            }
            result => result.map_err(AuthnError::from),
        }
    }

    fn record(&self, result: Result<KeySet, String>) -> bool {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats.fetches += 1;
        let ok = match result {
            Ok(set) => {
                let old = self.keys.load();
                if old.as_deref() != Some(&set) {
                    tracing::info!(source = %self.target.describe(), keys = set.len(), "JWKS updated");
                    self.keys.store(Some(Arc::new(set)));
                }
                stats.last_error = None;
                true
            }
            Err(error) => {
                stats.failures += 1;
                tracing::warn!(
                    source = %self.target.describe(),
                    %error,
                    "JWKS fetch failed; keeping the last good keys"
                );
                stats.last_error = Some(error);
                false
            }
        };
        drop(stats);
        self.in_flight.store(false, Ordering::Release);
        self.generation.send_modify(|g| *g += 1);
        ok
    }
}

/// Counts a running task for as long as it lives.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Running(count)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The background fetch loop of one source; holds it only weakly.
struct Task {
    source: Weak<Source>,
    http: Arc<HttpClient>,
    stop: CancellationToken,
    wake: Arc<Notify>,
    options: JwksStoreOptions,
    _running: Running,
}

impl Task {
    async fn run(self) {
        let mut failures: u32 = 0;
        loop {
            let Some(source) = self.source.upgrade() else {
                return;
            };
            source.in_flight.store(true, Ordering::Release);
            let (target, timeout) = (source.target.clone(), source.timeout());
            drop(source);
            let result = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = fetch(&self.http, &target, timeout) => r,
            };
            let Some(source) = self.source.upgrade() else {
                return;
            };
            let ok = source.record(result);
            drop(source);
            let wait = if ok {
                failures = 0;
                self.options.refresh_interval
            } else {
                failures = failures.saturating_add(1);
                let factor = 1u32 << (failures - 1).min(16);
                self.options
                    .retry_initial
                    .saturating_mul(factor)
                    .min(self.options.retry_max)
                    .min(self.options.refresh_interval)
            };
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// Fetches a key set (after discovery when needed), all within `timeout`.
async fn fetch(http: &HttpClient, target: &Target, timeout: Duration) -> Result<KeySet, String> {
    let started = Instant::now();
    let jwks_uri = match target {
        Target::Jwks(uri) => uri.clone(),
        Target::Discovery(issuer) => {
            let url = discovery_url(issuer);
            let doc = http
                .get(&url, timeout)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let doc: Map<String, Value> =
                serde_json::from_slice(&doc).map_err(|_| format!("{url}: not a JSON object"))?;
            match doc.get("jwks_uri").and_then(Value::as_str) {
                Some(uri) if is_http_url(uri) => uri.to_owned(),
                Some(_) => return Err(format!("{url}: jwks_uri is not an http(s) URL")),
                None => return Err(format!("{url}: no jwks_uri")),
            }
        }
    };
    let remaining = timeout.saturating_sub(started.elapsed());
    let body = http
        .get(&jwks_uri, remaining)
        .await
        .map_err(|e| format!("{jwks_uri}: {e}"))?;
    KeySet::parse(&body, false).map_err(|e| format!("{jwks_uri}: {e}"))
}
