//! The response body as it flows back to the client: frames are passed on the moment they arrive, never
//! collected, seen by the request's accounting tracker on the way, and a stream that falls silent for longer
//! than the idle timeout is cut.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::accounting::tracker::{Outcome, Tracker};
use crate::limits::Connection;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream sent nothing for {0:?}; stream cut")]
    Idle(Duration),
    #[error("upstream body failed: {0}")]
    Upstream(#[from] hyper::Error),
}

/// Wraps the upstream body. Dropping it (the client went away) drops the upstream body too, which closes the
/// upstream connection and so cancels the generation at once; the tracker then records the request as
/// ended by the client.
pub struct ForwardBody {
    inner: Incoming,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    provider: String,
    tracker: Tracker,
    /// The tracker may remove an event, so the upstream's length is not announced: hyper reads the size hint
    /// before the first frame, when nothing has been rewritten yet.
    may_rewrite: bool,
    done: bool,
    /// The client's connection: tells a client that stopped reading from one that left.
    connection: Option<Arc<Connection>>,
}

impl ForwardBody {
    pub fn new(
        inner: Incoming,
        idle: Duration,
        provider: String,
        mut tracker: Tracker,
        may_rewrite: bool,
    ) -> Self {
        // An empty answer (a redirect, a 204, `Content-Length: 0`) is never polled: hyper writes its headers and
        // drops it. It is complete now, not a client that left.
        let done = inner.is_end_stream();
        if done {
            tracker.finish(Outcome::Complete);
        }
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            provider,
            tracker,
            may_rewrite,
            done,
            connection: None,
        }
    }

    /// The client connection the answer goes to (a request extension set by the server), if known.
    pub fn on_connection(mut self, connection: Option<Arc<Connection>>) -> Self {
        self.connection = connection;
        self
    }
}

impl Drop for ForwardBody {
    fn drop(&mut self) {
        // Dropped unfinished: the client left, or stopped reading and was cut (the tracker's own drop records
        // the first).
        if !self.done
            && self
                .connection
                .as_ref()
                .is_some_and(|connection| connection.write_timed_out())
        {
            tracing::info!(provider = %self.provider, "client stopped reading the answer: cut, upstream cancelled");
            self.tracker.finish(Outcome::ClientTooSlow);
        }
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = ForwardError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ForwardError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            return match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = Instant::now() + this.idle;
                    this.timer.as_mut().reset(deadline);
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    };
                    let mut out = this.tracker.on_data(&data).unwrap_or(data);
                    // A body with a length ends with its last byte: hyper will not poll for the end, so the
                    // record is finished here.
                    if this.inner.is_end_stream() {
                        this.done = true;
                        if let Some(held) = this.tracker.take_held() {
                            let mut joined = bytes::BytesMut::from(&out[..]);
                            joined.extend_from_slice(&held);
                            out = joined.freeze();
                        }
                        this.tracker.finish(Outcome::Complete);
                    }
                    if out.is_empty() {
                        if this.done {
                            return Poll::Ready(None);
                        }
                        continue;
                    }
                    Poll::Ready(Some(Ok(Frame::data(out))))
                }
                Poll::Ready(Some(Err(error))) => {
                    this.done = true;
                    tracing::warn!(provider = %this.provider, %error, "upstream body failed mid-way");
                    this.tracker
                        .finish(Outcome::UpstreamFailed(error.to_string()));
                    Poll::Ready(Some(Err(error.into())))
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let held = this.tracker.take_held();
                    this.tracker.finish(Outcome::Complete);
                    match held {
                        Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                        None => Poll::Ready(None),
                    }
                }
                Poll::Pending => match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.done = true;
                        tracing::warn!(provider = %this.provider, idle_ms = this.idle.as_millis() as u64, "upstream stream idle; cut");
                        this.tracker.finish(Outcome::IdleTimeout);
                        Poll::Ready(Some(Err(ForwardError::Idle(this.idle))))
                    }
                    Poll::Pending => Poll::Pending,
                },
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        // Never report the end before the tracker saw it: hyper would skip polling and the record would look
        // like a client that left.
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        if self.may_rewrite {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}
