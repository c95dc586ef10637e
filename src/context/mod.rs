//! Context savings: masking of bulky output, observation masking and compaction, applied to what is sent
//! upstream, each opt-in and measured.
//!
//! The pipeline reads the request's messages by byte range (the layout the proxy's one-pass scan found), takes
//! token counts from the per-message cache, decides per message, and rebuilds the body copying every
//! unchanged message as it is. With nothing enabled the proxy never gets here.

pub mod anthropic;
pub mod compaction;
pub mod conversation;
pub mod masking;
pub mod observation;
pub mod sessions;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;

use crate::config::context::{ContextConfig, Enabled, SummaryMode, Toggles};
use crate::config::{Config, Model};
use crate::tokens::chat::RequestLayout;
use compaction::{Decision, Occupancy, State};
use conversation::{Conversation, Counter, FactsCache, Slot};
use masking::MaskRegistry;
use sessions::SessionToggles;

/// Per request: which transforms run (`mask,observe,compact`, `all`, `off`, `-compact`).
pub const CONTEXT_HEADER: &str = "x-kimi-context";

/// What the transforms did to one request (kept in its record).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Outcome {
    /// The transforms that ran, comma-separated (`mask,observe,compact`).
    pub transforms: String,
    /// Prompt tokens of the request as the client sent it.
    pub tokens_before: u64,
    /// Prompt tokens after each transform that ran.
    pub after_masking: Option<u64>,
    pub after_observation: Option<u64>,
    pub after_compaction: Option<u64>,
    /// Prompt tokens of what went upstream.
    pub tokens_after: u64,
    pub masked_messages: u32,
    pub observed_messages: u32,
    /// Messages a compaction replaced.
    pub compacted_messages: u32,
    /// `new`, `reused`, or why not (`cooldown`, `consecutive limit`, `nothing more to compact`).
    pub compaction: Option<String>,
    /// A failed step (the request went on without it).
    pub error: Option<String>,
    pub elapsed_us: u64,
}

impl Outcome {
    pub fn tokens_saved(&self) -> u64 {
        self.tokens_before.saturating_sub(self.tokens_after)
    }

    /// This outcome (masking and observation on the blocks they changed) followed by `next` (a plan over the
    /// whole prompt as they left it): one outcome over the whole prompt, as the client sent it.
    pub fn then(self, next: Outcome) -> Outcome {
        let offset = next.tokens_before.saturating_sub(self.tokens_after);
        let transforms = match (self.transforms.is_empty(), next.transforms.is_empty()) {
            (false, false) => format!("{},{}", self.transforms, next.transforms),
            (false, true) => self.transforms,
            _ => next.transforms,
        };
        Outcome {
            transforms,
            tokens_before: self.tokens_before + offset,
            after_masking: self.after_masking.map(|t| t + offset),
            after_observation: self.after_observation.map(|t| t + offset),
            masked_messages: self.masked_messages,
            observed_messages: self.observed_messages,
            error: self.error.or(next.error),
            elapsed_us: self.elapsed_us + next.elapsed_us,
            ..next
        }
    }
}

/// Totals since start.
#[derive(Default)]
pub struct Totals {
    pub requests: AtomicU64,
    pub tokens_before: AtomicU64,
    pub tokens_saved: AtomicU64,
    pub masked_messages: AtomicU64,
    pub observed_messages: AtomicU64,
    pub compactions: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TotalsSnapshot {
    pub requests: u64,
    pub tokens_before: u64,
    pub tokens_saved: u64,
    pub masked_messages: u64,
    pub observed_messages: u64,
    pub compactions: u64,
    pub errors: u64,
}

impl Totals {
    pub fn snapshot(&self) -> TotalsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TotalsSnapshot {
            requests: l(&self.requests),
            tokens_before: l(&self.tokens_before),
            tokens_saved: l(&self.tokens_saved),
            masked_messages: l(&self.masked_messages),
            observed_messages: l(&self.observed_messages),
            compactions: l(&self.compactions),
            errors: l(&self.errors),
        }
    }
}

/// Memory for per-message facts and placeholders (about 16k messages).
const FACTS_CACHE_BYTES: u64 = 24 * 1024 * 1024;
/// How many conversations' compactions are remembered.
const MAX_COMPACTION_STATES: usize = 4096;
/// Memory for the latest request bodies kept for compaction previews.
const RECENT_BODY_BYTES: usize = 64 * 1024 * 1024;
const RECENT_BODIES: usize = 64;

/// A recent request, for `POST /api/sessions/{id}/compact/preview`.
#[derive(Clone)]
pub struct RecentBody {
    pub record_id: u64,
    pub body: Bytes,
    pub layout: RequestLayout,
    pub model: Arc<Model>,
}

/// The context transforms' shared state.
pub struct ContextEngine {
    pub config: ContextConfig,
    pub masks: MaskRegistry,
    pub sessions: SessionToggles,
    pub totals: Totals,
    /// What each message says, by its bytes: a conversation resent turn after turn is read once.
    facts: FactsCache,
    compactions: Mutex<CompactionStates>,
    recent: Mutex<RecentBodies>,
    /// Some model turns a transform on by itself.
    model_toggles: bool,
}

#[derive(Default)]
struct RecentBodies {
    list: VecDeque<RecentBody>,
    bytes: usize,
}

#[derive(Default)]
struct CompactionStates {
    states: HashMap<u64, Arc<State>>,
    order: VecDeque<u64>,
}

impl CompactionStates {
    fn get(&self, key: u64) -> Option<Arc<State>> {
        self.states.get(&key).cloned()
    }

    fn put(&mut self, key: u64, state: Arc<State>) {
        if self.states.insert(key, state).is_none() {
            self.order.push_back(key);
        }
        while self.states.len() > MAX_COMPACTION_STATES {
            match self.order.pop_front() {
                Some(old) => {
                    self.states.remove(&old);
                }
                None => break,
            }
        }
    }
}

/// The transforms decided for one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resolved {
    pub enabled: Enabled,
    /// A manual compaction was asked for this request's session.
    pub force_compact: bool,
}

impl ContextEngine {
    pub fn new(config: &Config) -> ContextEngine {
        ContextEngine {
            config: config.context.clone(),
            masks: MaskRegistry::default(),
            sessions: SessionToggles::default(),
            totals: Totals::default(),
            facts: FactsCache::new(FACTS_CACHE_BYTES),
            compactions: Mutex::new(CompactionStates::default()),
            recent: Mutex::new(RecentBodies::default()),
            model_toggles: config.models.values().any(|m| !m.context.is_empty()),
        }
    }

    /// Whether the proxy must look at context settings at all (else the request path skips this module).
    pub fn may_apply(&self, header: Option<&str>) -> bool {
        header.is_some()
            || self.model_toggles
            || self.sessions.any()
            || self.config.masking.enabled
            || self.config.observation.enabled
            || self.config.compaction.enabled
    }

    /// The transforms for a request: header over session over model over `[context]`. A bad header is the
    /// client's error.
    pub fn resolve(
        &self,
        header: Option<&str>,
        client_session: Option<&str>,
        model: &Model,
    ) -> Result<Resolved, String> {
        let request = match header {
            Some(text) => Toggles::parse_header(text)?,
            None => Toggles::default(),
        };
        let (session, force_compact) = self.sessions.lookup(client_session);
        let mut enabled = request
            .over(session)
            .over(model.context)
            .over(self.config.toggles())
            .resolve();
        if force_compact && request.compaction != Some(false) {
            enabled.compaction = true;
        }
        Ok(Resolved {
            enabled,
            force_compact,
        })
    }

    /// Keeps a request's body for compaction previews (bounded; oldest dropped).
    pub fn remember(&self, recent: RecentBody) {
        let mut kept = self.recent.lock();
        kept.bytes += recent.body.len();
        kept.list.push_back(recent);
        while kept.list.len() > RECENT_BODIES
            || (kept.bytes > RECENT_BODY_BYTES && kept.list.len() > 1)
        {
            if let Some(old) = kept.list.pop_front() {
                kept.bytes -= old.body.len();
            }
        }
    }

    pub fn recent_body(&self, record_id: u64) -> Option<RecentBody> {
        self.recent
            .lock()
            .list
            .iter()
            .find(|r| r.record_id == record_id)
            .cloned()
    }

    fn compaction_state(&self, key: u64) -> Option<Arc<State>> {
        self.compactions.lock().get(key)
    }

    fn store_compaction(&self, key: u64, state: Arc<State>) {
        self.compactions.lock().put(key, state);
    }

    /// Runs masking and observation, and decides compaction. Cheap with cached counts; call it on the
    /// blocking pool for a large body seen for the first time.
    pub fn plan(&self, request: PlanRequest, counter: &Counter<'_>) -> Plan {
        let started = Instant::now();
        let conversation = Conversation::read_with(
            request.body.clone(),
            &request.layout,
            counter,
            Some(&self.facts),
        );
        self.plan_read(conversation, request, Shape::Chat, started, counter)
    }

    /// Compaction of an Anthropic Messages request (the native route; masking and observation ran on its
    /// `tool_result` blocks already, their outcome is `prior`): the same decision and summary as chat's, the
    /// summary a `user` turn with one text block. `None` when the body is not a Messages request.
    pub fn plan_anthropic(
        &self,
        body: Bytes,
        resolved: Resolved,
        window: u64,
        client_session: Option<&str>,
        prior: Option<Outcome>,
        counter: &Counter<'_>,
    ) -> Option<Plan> {
        let started = Instant::now();
        let (conversation, layout) = anthropic::read_conversation(body, counter)?;
        let request = PlanRequest {
            conversation_key: conversation_key(client_session, &conversation.body, &layout),
            body: conversation.body.clone(),
            layout,
            resolved: Resolved {
                enabled: Enabled {
                    compaction: resolved.enabled.compaction,
                    ..Enabled::default()
                },
                force_compact: resolved.force_compact,
            },
            window,
            dry_run: false,
        };
        let mut plan = self.plan_read(conversation, request, Shape::Anthropic, started, counter);
        plan.prior = prior;
        Some(plan)
    }

    fn plan_read(
        &self,
        conversation: Conversation,
        request: PlanRequest,
        shape: Shape,
        started: Instant,
        counter: &Counter<'_>,
    ) -> Plan {
        let mut slots = vec![Slot::Keep; conversation.messages.len()];
        let before = conversation.total();
        let mut outcome = Outcome {
            tokens_before: before,
            ..Outcome::default()
        };
        let mut names = Vec::new();
        let enabled = request.resolved.enabled;
        let current = |slots: &[Slot]| -> u64 {
            conversation.fixed_tokens
                + conversation
                    .messages
                    .iter()
                    .zip(slots)
                    .map(|(m, s)| match s {
                        Slot::Rewrite(r) => r.tokens,
                        _ => m.tokens,
                    })
                    .sum::<u64>()
        };
        // Observation first: it decides on age, and what it empties need not be masked (and kept).
        if enabled.observation {
            names.push("observe");
            let n = observation::plan(&conversation, &self.config.observation, counter, &mut slots);
            outcome.observed_messages = n as u32;
        }
        if enabled.masking {
            names.push("mask");
            let n = masking::plan(
                &conversation,
                &self.config.masking,
                counter,
                &self.masks,
                &mut slots,
            );
            outcome.masked_messages = n as u32;
        }
        let after_local = current(&slots);
        // Report in the order the names are documented: masking, then observation.
        if enabled.masking && enabled.observation {
            let masked_only: u64 = before
                - conversation
                    .messages
                    .iter()
                    .zip(&slots)
                    .filter_map(|(m, s)| match s {
                        Slot::Rewrite(r) if !is_observed(r) => Some(m.tokens - r.tokens),
                        _ => None,
                    })
                    .sum::<u64>();
            outcome.after_masking = Some(masked_only);
            outcome.after_observation = Some(after_local);
        } else if enabled.masking {
            outcome.after_masking = Some(after_local);
        } else if enabled.observation {
            outcome.after_observation = Some(after_local);
        }
        let mut pending = None;
        if enabled.compaction {
            names.push("compact");
            let occupancy = Occupancy {
                tokens: after_local,
                window: request.window,
                per_message: conversation
                    .messages
                    .iter()
                    .zip(&slots)
                    .map(|(m, s)| match s {
                        Slot::Rewrite(r) => r.tokens,
                        _ => m.tokens,
                    })
                    .collect(),
            };
            let state = self.compaction_state(request.conversation_key);
            let decision = compaction::decide(
                &conversation.messages,
                &occupancy,
                &self.config.compaction,
                state,
                request.resolved.force_compact,
                |s| counter.message(&shape.summary_message(&s.text())),
                Instant::now(),
            );
            match decision {
                Decision::Nothing => {}
                Decision::Reuse(state) => {
                    apply_state(
                        &conversation,
                        &mut slots,
                        &state,
                        shape,
                        counter,
                        &mut outcome,
                    );
                    outcome.compaction = Some("reused".into());
                }
                Decision::Held { reason, reuse } => {
                    if let Some(state) = reuse {
                        apply_state(
                            &conversation,
                            &mut slots,
                            &state,
                            shape,
                            counter,
                            &mut outcome,
                        );
                    }
                    outcome.compaction = Some(reason.into());
                }
                Decision::New {
                    start,
                    end,
                    previous,
                } => {
                    pending = Some(PendingCompaction {
                        start,
                        end,
                        previous,
                        occupancy,
                    });
                }
            }
        }
        outcome.transforms = names.join(",");
        outcome.elapsed_us = started.elapsed().as_micros() as u64;
        Plan {
            conversation,
            slots,
            outcome,
            pending,
            conversation_key: request.conversation_key,
            window: request.window,
            dry_run: request.dry_run,
            shape,
            prior: None,
        }
    }

    /// The summary model, when compaction asks one.
    pub fn summary_model(&self) -> Option<&str> {
        match &self.config.compaction.summary {
            SummaryMode::Model(name) => Some(name),
            SummaryMode::Extractive => None,
        }
    }

    /// Finishes a plan: a pending compaction gets its summary (`llm`: the model's text, or its error; `None`
    /// for an extractive summary), then the body is rendered. Returns the new body and message ranges when
    /// anything changed.
    pub fn finish(
        &self,
        mut plan: Plan,
        llm: Option<Result<String, String>>,
        counter: &Counter<'_>,
    ) -> (Option<Rendered>, Outcome) {
        let started = Instant::now();
        if let Some(pending) = plan.pending.take() {
            let previous = pending.previous.as_deref();
            let from = previous.map_or(pending.start, |p| p.end);
            let digest = match llm {
                None => Ok((
                    compaction::extractive(
                        &plan.conversation,
                        from,
                        pending.end,
                        previous.map(|p| &*p.digest),
                        self.config.compaction.summary_max_tokens,
                    ),
                    Arc::<str>::from("extractive"),
                )),
                Some(Ok(text)) => Ok((
                    text,
                    Arc::<str>::from(self.summary_model().unwrap_or("model")),
                )),
                Some(Err(error)) => Err(error),
            };
            match digest {
                Ok((digest, kind)) => {
                    let messages = &plan.conversation.messages;
                    let replaced_tokens: u64 = (pending.start..pending.end)
                        .filter_map(|i| messages.get(i))
                        .filter(|m| m.role != conversation::Role::System)
                        .map(|m| m.tokens)
                        .sum();
                    let replaced = (pending.start..pending.end)
                        .filter_map(|i| messages.get(i))
                        .filter(|m| m.role != conversation::Role::System)
                        .count();
                    let text = compaction::summary_text(replaced, replaced_tokens, &digest);
                    let message = plan.shape.summary_message(&text);
                    let summary_tokens = counter.message(&message);
                    let after = pending.occupancy.after(
                        messages,
                        pending.start,
                        pending.end,
                        summary_tokens,
                    );
                    if after >= pending.occupancy.tokens {
                        // A summary no smaller than what it replaces is no compaction.
                        plan.outcome.compaction = Some("summary not smaller".into());
                        return self.render_plan(plan, started, counter);
                    }
                    let still_over = plan.window > 0
                        && after as f64 / plan.window as f64 >= self.config.compaction.threshold;
                    let consecutive = match (&pending.previous, still_over) {
                        (_, false) => 0,
                        (Some(p), true) => p.consecutive + 1,
                        (None, true) => 1,
                    };
                    let state = Arc::new(State {
                        start: pending.start,
                        end: pending.end,
                        fingerprint: compaction::fingerprint(messages, pending.start, pending.end),
                        digest: Arc::from(digest),
                        replaced,
                        replaced_tokens,
                        at: Instant::now(),
                        consecutive,
                        kind,
                    });
                    // Undo whatever masking did inside the span: the summary replaces it.
                    let n = compaction::apply(
                        &mut plan.slots,
                        messages,
                        pending.start,
                        pending.end,
                        message,
                    );
                    plan.outcome.compacted_messages = n as u32;
                    plan.outcome.after_compaction = Some(after);
                    plan.outcome.compaction = Some("new".into());
                    if !plan.dry_run {
                        self.totals.compactions.fetch_add(1, Ordering::Relaxed);
                        self.store_compaction(plan.conversation_key, state);
                    }
                }
                Err(error) => {
                    plan.outcome.error = Some(format!("compaction: {error}"));
                    plan.outcome.compaction = Some("failed".into());
                    plan.outcome.after_compaction = Some(pending.occupancy.tokens);
                }
            }
        }
        self.render_plan(plan, started, counter)
    }

    fn render_plan(
        &self,
        plan: Plan,
        started: Instant,
        counter: &Counter<'_>,
    ) -> (Option<Rendered>, Outcome) {
        let rendered = conversation::render(&plan.conversation, &plan.slots);
        let mut outcome = plan.outcome;
        outcome.tokens_after = match &rendered {
            Some(_) => total_of(&plan.conversation, &plan.slots, counter),
            None => outcome.tokens_before,
        };
        if let Some(prior) = plan.prior {
            outcome = prior.then(outcome);
        }
        outcome.elapsed_us += started.elapsed().as_micros() as u64;
        if !plan.dry_run {
            self.count(&outcome);
        }
        (rendered, outcome)
    }

    /// What a compaction of `recent` would do now (extractive summary, nothing remembered).
    pub fn preview(&self, recent: &RecentBody, counter: &Counter<'_>) -> Preview {
        let request = PlanRequest {
            body: recent.body.clone(),
            layout: recent.layout.clone(),
            resolved: Resolved {
                enabled: Enabled {
                    compaction: true,
                    ..Enabled::default()
                },
                force_compact: true,
            },
            window: recent.model.max_context_size,
            conversation_key: 0,
            dry_run: true,
        };
        let plan = self.plan(request, counter);
        let messages_before = plan.conversation.messages.len();
        let pending = plan.compaction_pending();
        let (rendered, outcome) = self.finish(plan, None, counter);
        let (messages_after, summary) = match &rendered {
            Some((body, ranges)) => {
                let summary = ranges.iter().find_map(|r| {
                    let value: serde_json::Value =
                        serde_json::from_slice(body.get(r.clone())?).ok()?;
                    let text = value.get("content")?.as_str()?;
                    text.starts_with(&format!("{} compacted", conversation::MARKER))
                        .then(|| text.chars().take(2000).collect::<String>())
                });
                (ranges.len(), summary)
            }
            None => (messages_before, None),
        };
        Preview {
            record_id: recent.record_id,
            model: recent.model.key.clone(),
            context_window: recent.model.max_context_size,
            can_compact: pending && rendered.is_some(),
            messages_before,
            messages_after,
            tokens_before: outcome.tokens_before,
            tokens_after: outcome.tokens_after,
            tokens_saved: outcome.tokens_saved(),
            summary,
        }
    }

    /// Adds one request's outcome to the totals (the pipeline's native route, which runs masking itself).
    pub fn count(&self, outcome: &Outcome) {
        let t = &self.totals;
        t.requests.fetch_add(1, Ordering::Relaxed);
        t.tokens_before
            .fetch_add(outcome.tokens_before, Ordering::Relaxed);
        t.tokens_saved
            .fetch_add(outcome.tokens_saved(), Ordering::Relaxed);
        t.masked_messages
            .fetch_add(u64::from(outcome.masked_messages), Ordering::Relaxed);
        t.observed_messages
            .fetch_add(u64::from(outcome.observed_messages), Ordering::Relaxed);
        if outcome.error.is_some() {
            t.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a failure outside the pipeline (the step was skipped, the request went on).
    pub fn failed(&self, error: &str) -> Outcome {
        self.totals.errors.fetch_add(1, Ordering::Relaxed);
        Outcome {
            error: Some(error.to_string()),
            ..Outcome::default()
        }
    }
}

fn is_observed(rewrite: &conversation::Rewrite) -> bool {
    // Observation placeholders say "earlier result of tool"; masking ones say "masked".
    memchr::memmem::find(&rewrite.bytes, b"earlier result of tool").is_some()
}

/// The prompt tokens of the slots as rendered.
fn total_of(conversation: &Conversation, slots: &[Slot], counter: &Counter<'_>) -> u64 {
    let mut total = conversation.fixed_tokens;
    for (m, slot) in conversation.messages.iter().zip(slots) {
        let mut slot = slot;
        if let Slot::Insert { message, then } = slot {
            total += counter.message(message);
            slot = then;
        }
        total += match slot {
            Slot::Keep => m.tokens,
            Slot::Rewrite(r) => r.tokens,
            Slot::Drop | Slot::Insert { .. } => 0,
        };
    }
    total
}

fn apply_state(
    conversation: &Conversation,
    slots: &mut [Slot],
    state: &State,
    shape: Shape,
    counter: &Counter<'_>,
    outcome: &mut Outcome,
) {
    let message = shape.summary_message(&state.text());
    let n = compaction::apply(
        slots,
        &conversation.messages,
        state.start,
        state.end,
        message,
    );
    outcome.compacted_messages = n as u32;
    outcome.after_compaction = Some(total_of(conversation, slots, counter));
}

/// A rewritten body and where its messages now are.
pub type Rendered = (Bytes, Vec<Range<usize>>);

/// A compaction preview of a session's latest request.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub record_id: u64,
    pub model: String,
    pub context_window: u64,
    /// False when there is nothing to compact (too few exchanges).
    pub can_compact: bool,
    pub messages_before: usize,
    pub messages_after: usize,
    pub tokens_before: u64,
    pub tokens_after: u64,
    pub tokens_saved: u64,
    /// The start of the summary that would replace the middle.
    pub summary: Option<String>,
}

/// What [`ContextEngine::plan`] needs to know about a request.
pub struct PlanRequest {
    pub body: Bytes,
    pub layout: RequestLayout,
    pub resolved: Resolved,
    /// The model's context window.
    pub window: u64,
    /// Identifies the conversation (see [`conversation_key`]).
    pub conversation_key: u64,
    /// A preview: nothing is remembered or counted.
    pub dry_run: bool,
}

/// Masking and observation decided; compaction possibly waiting for its summary.
pub struct Plan {
    conversation: Conversation,
    slots: Vec<Slot>,
    pub outcome: Outcome,
    pending: Option<PendingCompaction>,
    conversation_key: u64,
    window: u64,
    dry_run: bool,
    shape: Shape,
    /// Masking and observation done before the plan (the native route's), reported with it.
    prior: Option<Outcome>,
}

/// The API a planned request is in.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Chat,
    Anthropic,
}

impl Shape {
    fn summary_message(self, text: &str) -> Vec<u8> {
        match self {
            Shape::Chat => compaction::summary_message(text),
            Shape::Anthropic => compaction::summary_turn(text),
        }
    }
}

struct PendingCompaction {
    start: usize,
    end: usize,
    previous: Option<Arc<State>>,
    occupancy: Occupancy,
}

impl Plan {
    /// The transcript to give a summary model, when a new compaction is pending.
    pub fn summary_input(&self, max_chars: usize) -> Option<String> {
        let pending = self.pending.as_ref()?;
        let previous = pending.previous.as_deref();
        let from = previous.map_or(pending.start, |p| p.end);
        Some(compaction::transcript(
            &self.conversation,
            from,
            pending.end,
            previous.map(|p| &*p.digest),
            max_chars,
        ))
    }

    pub fn compaction_pending(&self) -> bool {
        self.pending.is_some()
    }
}

/// Identifies a conversation across its requests: the client's session id, else its first two messages (the
/// system prompt and the task rarely change while the rest grows).
pub fn conversation_key(client_session: Option<&str>, body: &[u8], layout: &RequestLayout) -> u64 {
    use xxhash_rust::xxh3::xxh3_64;
    if let Some(id) = client_session {
        return xxh3_64(id.as_bytes());
    }
    let mut bytes = Vec::new();
    for range in layout.messages.iter().take(2) {
        if let Some(m) = body.get(range.clone()) {
            bytes.extend_from_slice(&xxh3_64(m).to_le_bytes());
        }
    }
    xxh3_64(&bytes) ^ 0x636f_6e76
}

/// Shifts a byte range that lies after the messages by the change in their length.
pub fn shift(range: Range<usize>, messages_end: usize, delta: isize) -> Range<usize> {
    if range.start >= messages_end {
        let s = (range.start as isize + delta).max(0) as usize;
        let e = (range.end as isize + delta).max(0) as usize;
        s..e
    } else {
        range
    }
}
