//! The response body as it flows back to the client: frames are passed on the moment they arrive, never
//! collected, and a stream that falls silent for longer than the idle timeout is cut.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream sent nothing for {0:?}; stream cut")]
    Idle(Duration),
    #[error("upstream body failed: {0}")]
    Upstream(#[from] hyper::Error),
}

/// Wraps the upstream body. Dropping it (the client went away) drops the upstream body too, which closes the
/// upstream connection and so cancels the generation at once.
pub struct ForwardBody {
    inner: Incoming,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    provider: String,
    bytes: u64,
    finished: bool,
}

impl ForwardBody {
    pub fn new(inner: Incoming, idle: Duration, provider: String) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            provider,
            bytes: 0,
            finished: false,
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                let deadline = Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.finished = true;
                tracing::warn!(provider = %this.provider, bytes = this.bytes, %error, "upstream body failed mid-way");
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                this.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.finished = true;
                    tracing::warn!(provider = %this.provider, idle_ms = this.idle.as_millis() as u64, "upstream stream idle; cut");
                    Poll::Ready(Some(Err(ForwardError::Idle(this.idle))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ForwardBody {
    fn drop(&mut self) {
        if !self.finished && !self.inner.is_end_stream() {
            tracing::debug!(provider = %self.provider, bytes = self.bytes, "client went away; upstream request cancelled");
        }
    }
}
