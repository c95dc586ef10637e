//! The per-request accounting record — defined once, consumed by the store and the dashboard — and the
//! machinery that fills it without ever delaying the request: prompt counting beside the forward, completion
//! counting as the answer passes, reconciliation with the provider's usage, cost, and self-calibration.

pub mod calibration;
pub mod in_flight;
pub mod record;
pub mod tracker;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::config::{Config, Model, TokenizerSpec};
use crate::monitor::Monitor;
use crate::tokens::Tokenizer;
use crate::tokens::cache::{CacheStats, MessageCache};
use crate::tokens::chat::RequestLayout;
use crate::tokens::chat::{PromptCount, count_layout};
pub use calibration::Calibration;

/// Models calibrated at most (the catalog is far smaller; pass-through names are the client's).
const MAX_CALIBRATED_MODELS: usize = 1024;
pub use record::{RequestRecord, UpstreamAttempt};

/// Requests whose body is larger than this are counted on a blocking-capable thread.
const INLINE_COUNT_LIMIT: usize = 32 * 1024;
/// How many finished records `/api/requests/recent` keeps in memory.
const RECENT_CAPACITY: usize = 256;
/// Default memory for the per-message cache.
pub const DEFAULT_MESSAGE_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Default length of the stored preview of the last user message.
pub const DEFAULT_PREVIEW_CHARS: usize = 60;

/// A model's tokenizer and whether it is the model's own (exact) or a stand-in (estimate).
#[derive(Clone, Debug)]
pub struct ModelTokenizer {
    pub tokenizer: Tokenizer,
    pub exact: bool,
}

/// A prompt count to be made.
pub struct PromptJob {
    accounting: Arc<Accounting>,
    /// False when token accounting is off: nothing is counted.
    enabled: bool,
    body: Bytes,
    layout: RequestLayout,
    tokenizer: Tokenizer,
    /// Turns the body into the chat request that is counted, where the counting happens (off the request's
    /// way): a request passed through in another API than chat.
    derive: Option<DeriveChat>,
}

/// A request's chat form and layout, made from its body (`None`: nothing to count).
pub type DeriveChat = Box<dyn FnOnce(&[u8]) -> Option<(Bytes, RequestLayout)> + Send + Sync>;

/// A prompt count, made or in the making.
pub enum PromptCounting {
    Done((PromptCount, u64)),
    Running(tokio::task::JoinHandle<(PromptCount, u64)>),
    /// Not started: counted when the record is built, after the answer has gone out (a cache hit).
    Later(Box<PromptJob>),
}

impl PromptCounting {
    pub async fn resolve(self) -> (PromptCount, u64) {
        let counting = match self {
            PromptCounting::Later(job) => job.start(),
            started => started,
        };
        match counting {
            PromptCounting::Done(done) => done,
            PromptCounting::Running(handle) => handle.await.unwrap_or_default(),
            PromptCounting::Later(_) => Default::default(),
        }
    }
}

impl PromptCounting {
    /// No prompt counted (a request that failed before its body was final).
    pub fn nothing() -> PromptCounting {
        PromptCounting::Done((PromptCount::default(), 0))
    }
}

impl PromptJob {
    /// Large bodies, and a vocabulary still to be decoded (first use), go to the blocking pool; the rest is
    /// counted where it stands — a few microseconds, mostly cache lookups.
    /// Turns counting off for this request.
    pub fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }

    /// Counts the chat request `derive` makes of the body instead of the body itself.
    pub fn derived(mut self, derive: DeriveChat) -> Self {
        self.derive = Some(derive);
        self
    }

    pub fn needs_blocking(&self) -> bool {
        self.enabled && (self.body.len() > INLINE_COUNT_LIMIT || !self.tokenizer.is_ready())
    }

    fn count(self) -> (PromptCount, u64) {
        if !self.enabled {
            return (PromptCount::default(), 0);
        }
        let started = std::time::Instant::now();
        let (body, layout) = match self.derive {
            Some(derive) => match derive(&self.body) {
                Some(derived) => derived,
                None => return (PromptCount::default(), started.elapsed().as_micros() as u64),
            },
            None => (self.body, self.layout),
        };
        let count = count_layout(
            &body,
            &layout,
            &self.tokenizer,
            &self.accounting.cache,
            self.accounting.preview_chars,
        );
        (count, started.elapsed().as_micros() as u64)
    }

    pub fn run_here(self) -> PromptCounting {
        PromptCounting::Done(self.count())
    }

    pub fn spawn_blocking(self) -> PromptCounting {
        PromptCounting::Running(tokio::task::spawn_blocking(move || self.count()))
    }

    /// Counts beside `send`: in the same task, after yielding once so the request is on the wire first.
    pub async fn beside<T>(
        self,
        send: impl std::future::Future<Output = T>,
    ) -> (T, PromptCounting) {
        if self.needs_blocking() {
            let counting = self.spawn_blocking();
            (send.await, counting)
        } else {
            tokio::join!(send, async move {
                tokio::task::yield_now().await;
                self.run_here()
            })
        }
    }

    /// Counts once the answer is out, where the record is built: a cache hit answers without waiting for it.
    pub fn later(self) -> PromptCounting {
        PromptCounting::Later(Box::new(self))
    }

    /// Counts now (blocking pool when needed), for requests that end before anything is sent.
    pub fn start(self) -> PromptCounting {
        if self.needs_blocking() {
            self.spawn_blocking()
        } else {
            self.run_here()
        }
    }
}

/// Shared accounting state.
pub struct Accounting {
    cache: MessageCache,
    /// Vocabularies loaded from disk, by model key (filled in the background at start-up).
    loaded: Mutex<HashMap<String, Tokenizer>>,
    calibration: Mutex<HashMap<String, Calibration>>,
    recent: Mutex<VecDeque<Arc<RequestRecord>>>,
    next_id: AtomicU64,
    /// This instance's id, put on every record.
    pub instance: Option<Arc<str>>,
    pub totals: Totals,
    sinks: parking_lot::RwLock<Vec<Arc<dyn RecordSink>>>,
    /// Requests in flight with their running counts.
    pub in_flight: in_flight::LiveRequests,
    /// The proxy's own latency histograms and rates.
    pub monitor: Arc<Monitor>,
    /// Characters of the last user message kept as a preview (0: none).
    pub preview_chars: usize,
    /// Refusals since the last one logged.
    refusals_unlogged: AtomicU64,
}

/// Receives every finished record (the store, the live hub). `offer` must not block: hand the record to a
/// bounded queue and return; if the queue is full, count the record as dropped.
pub trait RecordSink: Send + Sync {
    fn offer(&self, record: &Arc<RequestRecord>);

    /// A request refused before it had a model (no record): only a sink that shows it (the dashboard) cares.
    fn refused(&self, _refusal: &Arc<Refusal>) {}
}

/// A request the proxy answered itself before it knew where to send it: an unknown route or model, a body it
/// could not read. It has no record (no model, no tokens); it is logged, counted by kind and shown live.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    pub at_ms: i64,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The error code the client received (`model_not_found`, `not_found`, `invalid_json`…).
    pub code: &'static str,
    pub message: String,
    /// The client application, from its `User-Agent` (see `proxy::client_app`).
    pub client_app: Option<String>,
}

/// Refusals are logged at info at most this often (the counters count every one).
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Counters since start, readable without a lock.
#[derive(Default)]
pub struct Totals {
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub cost_micro_usd: AtomicU64,
    /// Prompt tokens removed by the context transforms, and their price.
    pub tokens_saved: AtomicU64,
    pub cost_saved_micro_usd: AtomicU64,
}

impl Accounting {
    pub fn new(message_cache_bytes: u64, preview_chars: usize) -> Arc<Accounting> {
        Accounting::for_instance(message_cache_bytes, preview_chars, None)
    }

    /// [`Accounting::new`] for a named instance of a fleet.
    pub fn for_instance(
        message_cache_bytes: u64,
        preview_chars: usize,
        instance: Option<Arc<str>>,
    ) -> Arc<Accounting> {
        Arc::new(Accounting {
            instance,
            cache: MessageCache::new(message_cache_bytes),
            loaded: Mutex::new(HashMap::new()),
            calibration: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_CAPACITY)),
            next_id: AtomicU64::new(1),
            totals: Totals::default(),
            sinks: parking_lot::RwLock::new(Vec::new()),
            in_flight: in_flight::LiveRequests::default(),
            monitor: Monitor::new(),
            preview_chars,
            refusals_unlogged: AtomicU64::new(0),
        })
    }

    /// Loads vocabulary files on a background thread: start-up and the first request never wait for it. The
    /// embedded encoders are decoded on first use instead (a proxy serving only cl100k models never holds o200k).
    pub fn preload(self: &Arc<Self>, config: &Config) {
        let files: Vec<(String, std::path::PathBuf, String)> = config
            .models
            .values()
            .filter_map(|m| match &m.tokenizer {
                TokenizerSpec::File { path, pattern } => {
                    Some((m.key.clone(), path.clone(), pattern.clone()))
                }
                _ => None,
            })
            .collect();
        let this = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("tokenizer-preload".into()).spawn(move || {
            let mut by_path: HashMap<(std::path::PathBuf, String), Tokenizer> = HashMap::new();
            for (model, path, pattern) in files {
                let key = (path.clone(), pattern.clone());
                let tokenizer = match by_path.get(&key) {
                    Some(t) => t.clone(),
                    None => match Tokenizer::from_tiktoken_file(&path, &pattern) {
                        Ok(t) => {
                            by_path.insert(key, t.clone());
                            t
                        }
                        Err(error) => {
                            tracing::warn!(model = %model, %error, "tokenizer file unusable; counting with cl100k_base as an estimate");
                            continue;
                        }
                    },
                };
                tracing::info!(model = %model, path = %path.display(), "tokenizer vocabulary loaded");
                this.loaded.lock().insert(model, tokenizer);
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the tokenizer preload thread");
        }
    }

    /// The tokenizer that counts `model`'s tokens.
    pub fn tokenizer_for(&self, model: &Model) -> ModelTokenizer {
        match &model.tokenizer {
            TokenizerSpec::Cl100kBase => ModelTokenizer {
                tokenizer: Tokenizer::cl100k_base(),
                exact: is_openai_model(model),
            },
            TokenizerSpec::O200kBase => ModelTokenizer {
                tokenizer: Tokenizer::o200k_base(),
                exact: is_openai_model(model),
            },
            TokenizerSpec::File { .. } => match self.loaded.lock().get(&model.key) {
                Some(t) => ModelTokenizer {
                    tokenizer: t.clone(),
                    exact: true,
                },
                None => ModelTokenizer {
                    tokenizer: Tokenizer::cl100k_base(),
                    exact: false,
                },
            },
        }
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Requests given an id whose record was not taken yet (in flight, or being finished on its task). Every
    /// request with an id ends in exactly one record.
    pub fn unfinished(&self) -> u64 {
        let issued = self.next_id.load(Ordering::Relaxed).saturating_sub(1);
        issued.saturating_sub(self.totals.requests.load(Ordering::Relaxed))
    }

    /// Prepares the prompt count of a request (nothing is counted yet).
    pub fn prompt_job(
        self: &Arc<Self>,
        body: Bytes,
        layout: RequestLayout,
        tokenizer: Tokenizer,
    ) -> PromptJob {
        PromptJob {
            accounting: Arc::clone(self),
            enabled: true,
            body,
            layout,
            tokenizer,
            derive: None,
        }
    }

    /// The calibrated prompt estimate for `model`, and the ratio applied.
    pub fn calibrate(&self, model: &str, estimate: u64) -> (u64, Option<f64>) {
        match self
            .calibration
            .lock()
            .get(model)
            .and_then(Calibration::ratio)
        {
            Some(ratio) => (((estimate as f64) * ratio).round() as u64, Some(ratio)),
            None => (estimate, None),
        }
    }

    /// Learns from a request that has both an estimate and the provider's figure.
    pub fn learn(&self, model: &str, estimated: u64, reported: u64) {
        let mut calibration = self.calibration.lock();
        // Pass-through model names come from clients: bound the map.
        if !calibration.contains_key(model) && calibration.len() >= MAX_CALIBRATED_MODELS {
            return;
        }
        calibration
            .entry(model.to_string())
            .or_default()
            .observe(estimated, reported);
    }

    pub fn calibration_snapshot(&self) -> Vec<(String, Calibration)> {
        let mut all: Vec<(String, Calibration)> = self
            .calibration
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Takes a finished record: totals, the recent ring. Never blocks for long: two short locks.
    pub fn record(&self, record: RequestRecord) -> Arc<RequestRecord> {
        let record = Arc::new(record);
        self.totals.requests.fetch_add(1, Ordering::Relaxed);
        self.totals
            .prompt_tokens
            .fetch_add(record.prompt_tokens, Ordering::Relaxed);
        self.totals
            .completion_tokens
            .fetch_add(record.completion_tokens, Ordering::Relaxed);
        self.totals
            .cost_micro_usd
            .fetch_add((record.cost_usd * 1e6).round() as u64, Ordering::Relaxed);
        self.totals
            .tokens_saved
            .fetch_add(record.tokens_saved, Ordering::Relaxed);
        self.totals.cost_saved_micro_usd.fetch_add(
            (record.cost_saved_usd * 1e6).round() as u64,
            Ordering::Relaxed,
        );
        let mut recent = self.recent.lock();
        if recent.len() == RECENT_CAPACITY {
            recent.pop_front();
        }
        recent.push_back(Arc::clone(&record));
        drop(recent);
        self.monitor.record_request(&record.sample());
        for sink in self.sinks.read().iter() {
            sink.offer(&record);
        }
        record
    }

    /// Counts, logs (rate-limited) and announces a refused request.
    pub fn refused(&self, refusal: Refusal) {
        static LOG: crate::util::LogThrottle = crate::util::LogThrottle::new();
        let suppressed = self.refusals_unlogged.fetch_add(1, Ordering::Relaxed);
        if LOG.ready(REFUSAL_LOG_EVERY) {
            self.refusals_unlogged.store(0, Ordering::Relaxed);
            tracing::info!(
                method = %refusal.method,
                path = %refusal.path,
                status = refusal.status,
                code = refusal.code,
                client = refusal.client_app.as_deref().unwrap_or("unknown"),
                not_logged_since_last = suppressed,
                "refused: {}",
                refusal.message
            );
        }
        self.monitor.record_refusal(refusal.code);
        let refusal = Arc::new(refusal);
        for sink in self.sinks.read().iter() {
            sink.refused(&refusal);
        }
    }

    pub fn add_sink(&self, sink: Arc<dyn RecordSink>) {
        self.sinks.write().push(sink);
    }

    /// The most recent records, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Arc<RequestRecord>> {
        self.recent
            .lock()
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// The per-message token cache (the context transforms read counts from it).
    pub fn message_cache(&self) -> &MessageCache {
        &self.cache
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }
}

/// OpenAI's own models are counted exactly by their tokenizer; everything else is an estimate.
fn is_openai_model(model: &Model) -> bool {
    let id = model
        .upstream_id
        .rsplit('/')
        .next()
        .unwrap_or(&model.upstream_id);
    model.provider == "openai" && (id.starts_with("gpt-") || id.starts_with('o'))
}
