//! Deadlines for every phase of a client connection, and the shares of the connection slots.
//!
//! hyper bounds the time to read HTTP/1 headers; everything else a client can hold a connection with is bounded
//! here: a request body that never completes ([`DeadlineBody`]), a client that stops reading its answer
//! ([`WatchedIo`], which also covers upgraded WebSockets), a connection with nothing in flight (HTTP/2 included,
//! [`idle`]), and one address taking every slot ([`IpShares`]). Each client connection has one [`Connection`]:
//! it holds the connection's slot until the last of the connection's users (an upgraded WebSocket too) is gone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

pub use crate::config::ConnectionLimits;

/// One client connection, shared by its IO, its requests (as a request extension) and its idle watch.
pub struct Connection {
    write_timed_out: AtomicBool,
    in_flight: AtomicUsize,
    /// Requests started so far: the idle watch sees a request that came and went between two looks.
    started: AtomicU64,
    /// The connection's slot (`max_connections`, the address's share): freed when the last user is gone.
    _slot: Option<OwnedSemaphorePermit>,
    _share: Option<ShareGuard>,
}

impl Connection {
    pub fn new(slot: Option<OwnedSemaphorePermit>, share: Option<ShareGuard>) -> Arc<Connection> {
        Arc::new(Connection {
            write_timed_out: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            _slot: slot,
            _share: share,
        })
    }

    /// The client stopped reading: a write waited longer than `write_timeout` and the connection was cut.
    pub fn write_timed_out(&self) -> bool {
        self.write_timed_out.load(Ordering::Relaxed)
    }

    /// Counts a request until the returned guard (kept with its response body) is dropped.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// A request of a connection, from its headers until its response body is finished or dropped.
pub struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once `connection` has had no request in flight for `timeout`.
pub async fn idle(connection: &Connection, timeout: Duration) {
    loop {
        let started = connection.started.load(Ordering::Relaxed);
        let idle_at_start = connection.in_flight.load(Ordering::Relaxed) == 0;
        tokio::time::sleep(timeout).await;
        if idle_at_start
            && connection.in_flight.load(Ordering::Relaxed) == 0
            && connection.started.load(Ordering::Relaxed) == started
        {
            return;
        }
    }
}

/// A response body that keeps its request counted as in flight until it is finished or dropped.
pub struct CountedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> CountedBody<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
pub enum BodyTimeout {
    #[error("the request body did not arrive within {0:?}")]
    Total(Duration),
    #[error("the request body stalled for {0:?}")]
    Stalled(Duration),
}

/// Set when a request's body missed its deadline, so the server answers 408 whatever the handler made of it.
#[derive(Default)]
pub struct BodyDeadlineHit(AtomicBool);

impl BodyDeadlineHit {
    pub fn hit(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A request body with deadlines: complete within `total` of the headers, and no pause longer than `idle`
/// between two pieces. The timer is only set up when the body makes the reader wait.
pub struct DeadlineBody<B> {
    inner: B,
    complete_by: Instant,
    total: Duration,
    idle: Duration,
    last_progress: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    hit: Arc<BodyDeadlineHit>,
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, limits: &ConnectionLimits, hit: Arc<BodyDeadlineHit>) -> Self {
        let now = Instant::now();
        Self {
            inner,
            complete_by: now + limits.body_read_timeout,
            total: limits.body_read_timeout,
            idle: limits.body_idle_timeout,
            last_progress: now,
            timer: None,
            hit,
        }
    }

    fn deadline(&self) -> Instant {
        (self.last_progress + self.idle).min(self.complete_by)
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.last_progress = Instant::now();
                let deadline = this.deadline();
                if let Some(timer) = &mut this.timer {
                    timer.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline();
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.hit.0.store(true, Ordering::Relaxed);
                        let error = if Instant::now() >= this.complete_by {
                            BodyTimeout::Total(this.total)
                        } else {
                            BodyTimeout::Stalled(this.idle)
                        };
                        Poll::Ready(Some(Err(Box::new(error))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's socket, with a deadline on every write: a client that stops reading (its receive window and
/// our send buffer full) gets `TimedOut` once a write has waited `timeout`, which ends the connection and drops
/// what it was streaming (the upstream request with it). Reads pass through.
pub struct WatchedIo<T> {
    inner: T,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    connection: Arc<Connection>,
}

impl<T> WatchedIo<T> {
    pub fn new(inner: T, timeout: Duration, connection: Arc<Connection>) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
            waiting: false,
            connection,
        }
    }

    /// After a write returned `Pending`: arms the deadline on the first one, and fails once it passed.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let deadline = Instant::now() + self.timeout;
        let timer = match &mut self.stalled {
            Some(timer) => {
                if !self.waiting {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .stalled
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.waiting = true;
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.connection
                    .write_timed_out
                    .store(true, Ordering::Relaxed);
                tracing::debug!(
                    timeout_ms = self.timeout.as_millis() as u64,
                    "client stopped reading: connection cut"
                );
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client stopped reading",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn written(
        &mut self,
        result: Poll<std::io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        match result {
            Poll::Pending => self.wait(cx),
            ready => {
                self.waiting = false;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.written(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.written(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connections per client address, so one address cannot take every slot. IPv6 clients are counted per /64
/// (one host usually has a whole /64); loopback clients are not counted (they are this machine).
pub struct IpShares {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl IpShares {
    pub fn new(max: usize) -> Arc<IpShares> {
        Arc::new(IpShares {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one of `ip`'s connections: `None` when the address already holds its share. Loopback addresses
    /// take nothing (`Some(None)`).
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Option<ShareGuard>> {
        let ip = share_key(ip);
        if ip.is_loopback() {
            return Some(None);
        }
        let mut open = self.open.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Some(ShareGuard {
            shares: Arc::clone(self),
            ip,
        }))
    }

    /// Connections `ip` holds now.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.open.lock().get(&share_key(ip)).copied().unwrap_or(0)
    }
}

/// The address a connection counts against: IPv4 as it is (IPv4-mapped IPv6 included), IPv6 by its /64.
fn share_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                if v6.is_loopback() {
                    ip
                } else {
                    IpAddr::V6(prefix.into())
                }
            }
        },
    }
}

/// One connection of an address; gives it back when dropped.
pub struct ShareGuard {
    shares: Arc<IpShares>,
    ip: IpAddr,
}

impl Drop for ShareGuard {
    fn drop(&mut self) {
        let mut open = self.shares.open.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Walks an error's sources: is it a request body that missed its deadline?
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<BodyTimeout>() {
            return true;
        }
        current = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_address_cannot_take_more_than_its_share() {
        let shares = IpShares::new(2);
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "192.0.2.8".parse().unwrap();
        let first = shares.take(a).unwrap();
        let second = shares.take(a).unwrap();
        assert!(
            shares.take(a).is_none(),
            "a third connection of one address"
        );
        assert!(shares.take(b).is_some(), "another address is still served");
        // The same IPv4 address written as IPv4-mapped IPv6 counts the same.
        assert!(shares.take("::ffff:192.0.2.7".parse().unwrap()).is_none());
        drop(first);
        assert_eq!(shares.open(a), 1);
        assert!(shares.take(a).is_some());
        drop(second);
    }

    #[test]
    fn ipv6_counts_per_64_and_loopback_is_exempt() {
        let shares = IpShares::new(1);
        let _one = shares.take("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(
            shares.take("2001:db8:1:2::ffff".parse().unwrap()).is_none(),
            "another address of the same /64"
        );
        assert!(shares.take("2001:db8:1:3::1".parse().unwrap()).is_some());
        let mut loopback = Vec::new();
        for _ in 0..10 {
            loopback.push(shares.take("127.0.0.1".parse().unwrap()).unwrap());
            loopback.push(shares.take("::1".parse().unwrap()).unwrap());
        }
        assert_eq!(shares.open("127.0.0.1".parse().unwrap()), 0);
    }

    #[test]
    fn guards_leave_no_entries_behind() {
        let shares = IpShares::new(3);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let guards: Vec<_> = (0..3).map(|_| shares.take(ip).unwrap()).collect();
        drop(guards);
        assert!(shares.open.lock().is_empty());
    }

    #[tokio::test]
    async fn a_stalled_body_fails_after_its_pause_and_total_deadlines() {
        let limits = ConnectionLimits {
            body_read_timeout: Duration::from_millis(1000),
            body_idle_timeout: Duration::from_millis(300),
            write_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            http2_keep_alive_interval: Duration::from_secs(1),
            http2_keep_alive_timeout: Duration::from_secs(1),
            max_connections_per_ip: 1,
            max_dashboards: 1,
        };
        use http_body_util::BodyExt;
        // A body that sends a piece every 100 ms forever: the pause deadline never passes, the total does.
        let trickle = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))),
                (),
            ))
        });
        let body = http_body_util::StreamBody::new(Box::pin(trickle));
        let hit = Arc::new(BodyDeadlineHit::default());
        let started = Instant::now();
        let error = DeadlineBody::new(body, &limits, Arc::clone(&hit))
            .collect()
            .await
            .err()
            .unwrap();
        assert!(is_body_timeout(error.as_ref()));
        assert!(hit.hit());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1000) && waited < Duration::from_secs(5),
            "{waited:?}"
        );

        // A body that stops: the pause deadline.
        let silent =
            futures_util::stream::pending::<Result<Frame<Bytes>, std::convert::Infallible>>();
        let body = http_body_util::StreamBody::new(silent);
        let started = Instant::now();
        let hit = Arc::new(BodyDeadlineHit::default());
        let error = DeadlineBody::new(body, &limits, hit)
            .collect()
            .await
            .err()
            .unwrap();
        assert!(matches!(
            error.downcast_ref::<BodyTimeout>(),
            Some(BodyTimeout::Stalled(_))
        ));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
}
