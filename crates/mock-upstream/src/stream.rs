//! Lazily generated SSE bodies: one `Bytes` frame per event, produced on
//! demand with the configured pacing. Nothing is pre-rendered.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

use crate::MockStats;
use crate::payload::{
    CREATED, Chunk, ChunkChoice, Delta, FunctionDelta, SSE_DONE, TOOL_ARG_PIECES, TOOL_CALL_ID,
    TOOL_NAME, ToolCallDelta, Usage, reasoning_text, sse_chunk_text, sse_event,
};

/// Faults that apply to a streamed body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamFault {
    /// Role chunk, half the content chunks, then abort the body.
    CloseMidStream,
    /// Role chunk, then nothing until the client (or the server) gives up.
    Stall,
}

/// Everything needed to generate one SSE response.
#[derive(Clone, Debug)]
pub(crate) struct SsePlan {
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) chunks: usize,
    pub(crate) reasoning: usize,
    pub(crate) tool_call: bool,
    pub(crate) usage: Option<Usage>,
    pub(crate) ttft: Duration,
    pub(crate) chunk_delay: Duration,
    pub(crate) fault: Option<StreamFault>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Role,
    Reasoning(usize),
    Content(usize),
    ToolStart,
    ToolArgs(usize),
    Finish,
    Usage,
    Done,
}

impl SsePlan {
    /// The event at position `pos` of the stream, or `None` past the end.
    fn event_at(&self, pos: usize) -> Option<Event> {
        let mut pos = pos;
        if pos == 0 {
            return Some(Event::Role);
        }
        pos -= 1;
        if pos < self.reasoning {
            return Some(Event::Reasoning(pos));
        }
        pos -= self.reasoning;
        if pos < self.chunks {
            return Some(Event::Content(pos));
        }
        pos -= self.chunks;
        if self.tool_call {
            if pos == 0 {
                return Some(Event::ToolStart);
            }
            if pos <= TOOL_ARG_PIECES.len() {
                return Some(Event::ToolArgs(pos - 1));
            }
            pos -= TOOL_ARG_PIECES.len() + 1;
        }
        if pos == 0 {
            return Some(Event::Finish);
        }
        pos -= 1;
        if self.usage.is_some() {
            if pos == 0 {
                return Some(Event::Usage);
            }
            pos -= 1;
        }
        (pos == 0).then_some(Event::Done)
    }

    /// The whole stream as one body (no delays, no faults): what a buffering server sends with a length.
    pub(crate) fn render_whole(&self) -> Bytes {
        let mut whole = Vec::new();
        let mut pos = 0;
        while let Some(event) = self.event_at(pos) {
            whole.extend_from_slice(&self.render(event));
            pos += 1;
        }
        Bytes::from(whole)
    }

    /// Position at which `close-mid-stream` aborts the body.
    fn cut_position(&self) -> usize {
        1 + self.reasoning + self.chunks / 2
    }

    fn chunk<'a>(&'a self, delta: Delta<'a>, finish_reason: Option<&'static str>) -> Chunk<'a> {
        Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: CREATED,
            model: &self.model,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
            }],
            usage: None,
        }
    }

    fn render(&self, event: Event) -> Bytes {
        match event {
            Event::Role => sse_event(&self.chunk(
                Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    ..Delta::default()
                },
                None,
            )),
            Event::Reasoning(i) => {
                let text = reasoning_text(i);
                sse_event(&self.chunk(
                    Delta {
                        reasoning_content: Some(&text),
                        ..Delta::default()
                    },
                    None,
                ))
            }
            Event::Content(i) => {
                let text = sse_chunk_text(i);
                sse_event(&self.chunk(
                    Delta {
                        content: Some(&text),
                        ..Delta::default()
                    },
                    None,
                ))
            }
            Event::ToolStart => sse_event(&self.chunk(
                Delta {
                    tool_calls: Some([ToolCallDelta {
                        index: 0,
                        id: Some(TOOL_CALL_ID),
                        kind: Some("function"),
                        function: FunctionDelta {
                            name: Some(TOOL_NAME),
                            arguments: "",
                        },
                    }]),
                    ..Delta::default()
                },
                None,
            )),
            Event::ToolArgs(k) => sse_event(&self.chunk(
                Delta {
                    tool_calls: Some([ToolCallDelta {
                        index: 0,
                        id: None,
                        kind: None,
                        function: FunctionDelta {
                            name: None,
                            arguments: TOOL_ARG_PIECES.get(k).copied().unwrap_or_default(),
                        },
                    }]),
                    ..Delta::default()
                },
                None,
            )),
            Event::Finish => {
                let reason = if self.tool_call { "tool_calls" } else { "stop" };
                sse_event(&self.chunk(Delta::default(), Some(reason)))
            }
            Event::Usage => sse_event(&Chunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: CREATED,
                model: &self.model,
                choices: Vec::new(),
                usage: self.usage,
            }),
            Event::Done => Bytes::from_static(SSE_DONE),
        }
    }

    /// The pause before the event at `pos`.
    fn delay_before(&self, pos: usize, event: Event) -> Duration {
        match event {
            Event::Role => self.ttft,
            Event::Usage | Event::Done => Duration::ZERO,
            _ if pos == 0 => self.ttft,
            _ => self.chunk_delay,
        }
    }
}

/// Counts the stream's outcome; `streams_cancelled` is bumped when the body
/// is dropped before it finished (unless the end was deliberate).
pub(crate) struct StreamGuard {
    stats: Arc<MockStats>,
    settled: bool,
}

impl StreamGuard {
    pub(crate) fn start(stats: Arc<MockStats>) -> Self {
        MockStats::bump(&stats.streams_started);
        Self {
            stats,
            settled: false,
        }
    }

    /// The stream ended in a way that must not count as a cancellation.
    pub(crate) fn settle(&mut self) {
        self.settled = true;
    }

    pub(crate) fn complete(&mut self) {
        if !self.settled {
            self.settled = true;
            self.stats.streams_completed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.settled {
            MockStats::bump(&self.stats.streams_cancelled);
        }
    }
}

/// Sleeps for `d`; returns false if the server shut down first.
pub(crate) async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if d.is_zero() {
        return !*shutdown.borrow();
    }
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = wait_shutdown(shutdown) => false,
    }
}

/// Resolves once the server shuts down.
pub(crate) async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

pub(crate) fn shutdown_error() -> io::Error {
    io::Error::other("mock upstream shutting down")
}

/// Pause before a deliberate abort so the bytes already produced reach the
/// socket first.
pub(crate) const FLUSH_GRACE: Duration = Duration::from_millis(10);

struct SseState {
    plan: SsePlan,
    pos: usize,
    finished: bool,
    guard: StreamGuard,
    shutdown: watch::Receiver<bool>,
}

type Item = Result<Bytes, io::Error>;

async fn next_event(mut st: SseState) -> Option<(Item, SseState)> {
    if st.finished {
        return None;
    }
    let Some(event) = st.plan.event_at(st.pos) else {
        st.finished = true;
        st.guard.complete();
        return None;
    };
    let stall = st.plan.fault == Some(StreamFault::Stall) && st.pos == 1;
    let cut =
        st.plan.fault == Some(StreamFault::CloseMidStream) && st.pos == st.plan.cut_position();
    if stall {
        // Never send anything more; end only when the server shuts down
        // (if the client leaves first, hyper drops the body).
        wait_shutdown(&mut st.shutdown).await;
        st.finished = true;
        return Some((Err(shutdown_error()), st));
    }
    let delay = st.plan.delay_before(st.pos, event);
    if !sleep_or_shutdown(delay, &mut st.shutdown).await {
        st.guard.settle();
        st.finished = true;
        return Some((Err(shutdown_error()), st));
    }
    if cut {
        // Let hyper flush what was sent so far (it discards unflushed data
        // when the body errors), then abort.
        if !sleep_or_shutdown(FLUSH_GRACE, &mut st.shutdown).await {
            st.finished = true;
            return Some((Err(shutdown_error()), st));
        }
        st.finished = true;
        return Some((Err(io::Error::other("mock fault: close-mid-stream")), st));
    }
    let frame = st.plan.render(event);
    if event == Event::Done {
        st.finished = true;
        st.guard.complete();
    }
    st.pos += 1;
    Some((Ok(frame), st))
}

/// The SSE body stream for `plan`. Bumps `streams_started` immediately.
pub(crate) fn sse_stream(
    plan: SsePlan,
    stats: Arc<MockStats>,
    shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = Item> + Send + 'static {
    let mut guard = StreamGuard::start(stats);
    if plan.fault.is_some() {
        guard.settle();
    }
    let state = SseState {
        plan,
        pos: 0,
        finished: false,
        guard,
        shutdown,
    };
    futures_util::stream::unfold(state, next_event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(reasoning: usize, tool_call: bool, usage: bool) -> SsePlan {
        SsePlan {
            id: "chatcmpl-mock-1".into(),
            model: "m".into(),
            chunks: 2,
            reasoning,
            tool_call,
            usage: usage.then(|| Usage::new(1, 2)),
            ttft: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            fault: None,
        }
    }

    fn events(p: &SsePlan) -> Vec<Event> {
        (0..).map_while(|i| p.event_at(i)).collect()
    }

    #[test]
    fn plain_sequence() {
        use Event::*;
        assert_eq!(
            events(&plan(0, false, false)),
            vec![Role, Content(0), Content(1), Finish, Done]
        );
    }

    #[test]
    fn full_sequence() {
        use Event::*;
        assert_eq!(
            events(&plan(1, true, true)),
            vec![
                Role,
                Reasoning(0),
                Content(0),
                Content(1),
                ToolStart,
                ToolArgs(0),
                ToolArgs(1),
                ToolArgs(2),
                Finish,
                Usage,
                Done
            ]
        );
    }
}
