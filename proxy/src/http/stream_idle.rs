//! The connection manager's `stream_idle_timeout`, per stream, as Envoy enforces it.
//!
//! A stream that moves no bytes in either direction for the timeout holds a request slot, a
//! codec stream and (when it streams upstream) an upstream connection for nothing: a client
//! that sends request headers and then stalls its body, or an upstream that stops mid-body,
//! would otherwise pin them for as long as the connection lives. Envoy's rule (default five
//! minutes, zero disables it) is followed here:
//!
//! - the clock starts when the stream's headers are in and restarts on every request body
//!   frame read and every response frame sent;
//! - when it runs out before a response has started, the stream gets a local reply with the
//!   body `stream timeout` and the response flag `SI`: `408` if the request was still being
//!   received, `504` if it was complete (Envoy's `maybeRequestTimeoutCode`); an HTTP/1
//!   connection whose request body was not read to its end is closed after it;
//! - when it runs out after the response headers went out, the response body fails, so the
//!   stream is reset (`RST_STREAM` on HTTP/2, the connection closed on HTTP/1).
//!
//! Each stream has its own clock, so on HTTP/2 a busy stream does not keep a stalled one
//! alive, nor the other way round.
//!
//! A response body is only polled while the downstream can take more: once a client stops
//! reading, its TCP window (HTTP/1) or its stream window (HTTP/2) stays full, hyper stops
//! asking the body for frames, and a timer that lives in the body would never be looked at
//! again — the stream, its buffers and its upstream connection would stay for as long as
//! the client cares to keep the socket open. Envoy's timer also covers a response the
//! downstream is not reading, so the clock is watched from outside the body as well
//! ([`StreamClock::stalled`]): by the connection loop for HTTP/1, which then drops the
//! connection, and by the task hyper spawns for each HTTP/2 stream ([`StreamExec`]), which
//! then drops the stream — h2 sends `RST_STREAM(CANCEL)` and frees its queued data. Either
//! way the response body is dropped, which closes the unfinished upstream exchange. What a
//! stalled stream holds meanwhile is bounded by hyper's write buffer (`max_buf_size`) or
//! h2's one queued chunk.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode, Version};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::recorder::Recorder;
use super::reply::local_reply;
use crate::upstream::{Body, BoxError};

/// The body of the local reply, as Envoy words it.
pub(super) const DETAILS: &str = "stream timeout";
/// Envoy's response flag for `stream_idle_timeout` (`StreamIdleTimeout`).
pub(super) const FLAG: &str = "SI";

/// The error a response body ends with when its stream timed out.
#[derive(Debug, thiserror::Error)]
#[error("stream idle timeout ({0:?}) after the response started")]
pub struct Expired(Duration);

/// One stream's idle clock: when it last moved a byte, and whether its request is complete.
#[derive(Debug)]
pub(super) struct StreamClock {
    timeout: Duration,
    base: Instant,
    /// Milliseconds after `base` of the last activity.
    last_ms: AtomicU64,
    request_done: AtomicBool,
    /// Where the response is: [`WAITING`], [`RESPONDING`] or [`DONE`].
    phase: AtomicU8,
    /// Told of every change of `phase`.
    phase_changed: Notify,
}

/// No response yet: a timeout is answered with a local reply (`handle`'s own watch).
const WAITING: u8 = 0;
/// The response headers went out: a timeout resets the stream.
const RESPONDING: u8 = 1;
/// The response body ended or was dropped: nothing left to time out.
const DONE: u8 = 2;

impl StreamClock {
    /// A clock started now, for a stream whose request is already complete (no body) or not.
    pub fn start(timeout: Duration, request_done: bool) -> Arc<Self> {
        Arc::new(Self {
            timeout,
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            request_done: AtomicBool::new(request_done),
            phase: AtomicU8::new(WAITING),
            phase_changed: Notify::new(),
        })
    }

    fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::Release);
        self.phase_changed.notify_waiters();
    }

    /// Resolves once the response has started and the stream then stayed idle for the whole
    /// timeout, whether or not anyone polls the response body; never once the response is
    /// over. Before the response starts it waits (a timeout then is a local reply).
    pub async fn stalled(&self) {
        loop {
            let changed = self.phase_changed.notified();
            tokio::pin!(changed);
            // Registered before the phase is read, so no change slips between the two.
            changed.as_mut().enable();
            match self.phase.load(Ordering::Acquire) {
                RESPONDING => tokio::select! {
                    () = self.idle() => {
                        if self.phase.load(Ordering::Acquire) == RESPONDING {
                            return;
                        }
                    }
                    () = &mut changed => {}
                },
                _ => changed.await,
            }
        }
    }

    /// Something moved on the stream: the clock restarts.
    pub fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// The request's body has been read to its end.
    pub fn request_complete(&self) {
        self.request_done.store(true, Ordering::Release);
    }

    pub fn request_done(&self) -> bool {
        self.request_done.load(Ordering::Acquire)
    }

    /// When the stream times out unless something moves before.
    fn deadline(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Acquire)) + self.timeout
    }

    /// Resolves once the stream has been idle for the whole timeout.
    pub async fn idle(&self) {
        loop {
            let deadline = self.deadline();
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Poll `sleep` towards the deadline: `Ready` once the stream has been idle too long.
    fn poll_expired(&self, sleep: &mut Pin<Box<Sleep>>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let deadline = self.deadline();
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// The local reply for a stream that timed out before its response started.
pub(super) fn reply(
    rec: Recorder,
    grpc: bool,
    version: Version,
    clock: &StreamClock,
) -> Response<Body> {
    let done = clock.request_done();
    let status = if done {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::REQUEST_TIMEOUT
    };
    let mut resp = local_reply(rec, grpc, status, FLAG, DETAILS);
    if !done && version != Version::HTTP_2 {
        // The rest of the request body is still on the wire: the connection cannot carry
        // another request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A request body whose frames restart its stream's clock; its end marks the request
/// complete. Without a clock it is the body unchanged.
#[derive(Debug)]
pub struct Watched<B> {
    inner: B,
    clock: Option<Arc<StreamClock>>,
}

impl<B: HttpBody> Watched<B> {
    pub(super) fn new(inner: B, clock: Option<Arc<StreamClock>>) -> Self {
        Self { inner, clock }
    }
}

impl<B> HttpBody for Watched<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(clock) = &this.clock {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    clock.touch();
                    if frame.is_trailers() || this.inner.is_end_stream() {
                        clock.request_complete();
                    }
                }
                Poll::Ready(None) => clock.request_complete(),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body whose frames restart its stream's clock, and which fails (resetting the
/// stream) when the stream stays idle past the timeout.
pub(super) struct Timed {
    clock: Arc<StreamClock>,
    sleep: Pin<Box<Sleep>>,
}

impl Timed {
    pub fn new(clock: Arc<StreamClock>) -> Self {
        clock.touch();
        clock.set_phase(RESPONDING);
        let deadline = clock.deadline();
        Self {
            clock,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Poll the response body `body` under the clock.
    pub fn poll_frame(
        &mut self,
        body: Pin<&mut Body>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match body.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.clock.touch();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match self.clock.poll_expired(&mut self.sleep, cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Expired(self.clock.timeout).into()))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        // hyper drops the body when it has sent its end, or when the stream goes away.
        self.clock.set_phase(DONE);
    }
}

/// The stream clocks a connection's watchers need, handed over from the service (which
/// starts each clock) to whoever watches the stream while its response is written.
#[derive(Debug, Default)]
pub(super) struct Handoff {
    /// HTTP/1: the stream being answered (hyper answers one at a time).
    current: Mutex<Option<Arc<StreamClock>>>,
    current_changed: Notify,
    /// HTTP/2: the clock of the stream whose task hyper spawns next. hyper calls the
    /// service and spawns the stream's task in one step (`service.call` and then
    /// `execute_h2stream`), so the task takes the clock the call left.
    next_h2: Mutex<Option<Arc<StreamClock>>>,
}

impl Handoff {
    /// A new stream's clock (the service's call, before its response exists).
    pub fn stream_started(&self, clock: Option<&Arc<StreamClock>>, version: Version) {
        let clock = clock.cloned();
        if version == Version::HTTP_2 {
            *lock(&self.next_h2) = clock;
        } else {
            *lock(&self.current) = clock;
            self.current_changed.notify_waiters();
        }
    }

    /// Resolves when the HTTP/1 stream being answered has stalled (see
    /// [`StreamClock::stalled`]): the connection must then be dropped.
    pub async fn h1_stalled(&self) {
        loop {
            let changed = self.current_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let current = lock(&self.current).clone();
            match current {
                Some(clock) => tokio::select! {
                    // In order, not shuffled: each branch is a one-time event, and the
                    // shuffle draws a random number at every poll.
                    biased;
                    () = clock.stalled() => return,
                    () = &mut changed => {}
                },
                None => changed.await,
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain slots: a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The executor of a connection's HTTP/2 stream tasks: each runs under its stream's clock
/// and is dropped when its response stalls, which resets the stream.
#[derive(Debug, Clone)]
pub(super) struct StreamExec(pub Arc<Handoff>);

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        // hyper hands over each HTTP/2 stream as one future holding the whole exchange (the
        // service future, the upstream request, the response body): kilobytes. Boxed once
        // here, what `tokio::spawn` copies into the task's cell (and `select!` into its
        // state, and the task into its output slot) is a pointer, not the future. Measured
        // with callgrind: memcpy was 122k of 204k instructions per proxied HTTP/2 request.
        let fut = Box::pin(fut);
        match lock(&self.0.next_h2).take() {
            Some(clock) => {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = fut => {}
                        () = clock.stalled() => {
                            tracing::debug!(
                                timeout = ?clock.timeout,
                                "stream idle timeout: downstream stopped reading; resetting the stream"
                            );
                        }
                    }
                });
            }
            None => {
                tokio::spawn(fut);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Chunk = Result<Frame<Bytes>, std::convert::Infallible>;
    type ChannelBody = StreamBody<tokio_stream::wrappers::ReceiverStream<Chunk>>;

    fn channel_body() -> (tokio::sync::mpsc::Sender<Chunk>, ChannelBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (
            tx,
            StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_out_only_after_a_whole_quiet_timeout() {
        let clock = StreamClock::start(Duration::from_secs(10), false);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(6)).await;
        clock.touch();
        clock.idle().await;
        // Touched at 6 s: idle from then, so it ends at 16 s, not 10 s.
        assert_eq!(start.elapsed().as_secs(), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn request_frames_restart_the_clock_and_its_end_completes_the_request() {
        let clock = StreamClock::start(Duration::from_secs(10), false);
        let (tx, body) = channel_body();
        let mut watched = Watched::new(body, Some(Arc::clone(&clock)));
        tokio::time::sleep(Duration::from_secs(8)).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        let frame = watched.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");
        assert!(!clock.request_done());
        assert!(clock.deadline() >= Instant::now() + Duration::from_secs(10));
        drop(tx);
        assert!(watched.frame().await.is_none());
        assert!(clock.request_done());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_response_body_fails_after_the_timeout_and_a_moving_one_does_not() {
        let clock = StreamClock::start(Duration::from_secs(10), true);
        let (tx, body) = channel_body();
        let mut body: Body = body.map_err(|e| match e {}).boxed_unsync();
        let mut timed = Timed::new(Arc::clone(&clock));
        let start = Instant::now();
        // A chunk every 7 s for 35 s: never 10 s quiet.
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(7)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .unwrap();
            }
            // Then silence, with the body still open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        let mut got = 0;
        let err = loop {
            match std::future::poll_fn(|cx| timed.poll_frame(Pin::new(&mut body), cx)).await {
                Some(Ok(_)) => got += 1,
                Some(Err(e)) => break e,
                None => panic!("the body ended instead of timing out"),
            }
        };
        assert_eq!(got, 5);
        assert!(err.is::<Expired>(), "{err}");
        // Last chunk at 35 s, so the timeout fires at 45 s.
        assert_eq!(start.elapsed().as_secs(), 45);
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_nobody_polls_is_seen_stalled_after_the_timeout() {
        let clock = StreamClock::start(Duration::from_secs(10), true);
        let start = Instant::now();
        // No response yet: `stalled` waits, whatever the clock says (a local reply is due).
        let waiting = tokio::time::timeout(Duration::from_secs(30), clock.stalled()).await;
        assert!(waiting.is_err());
        // The response starts at 30 s and its body is then never polled again (the client
        // stopped reading): stalled 10 s later, without anything polling the body.
        let timed = Timed::new(Arc::clone(&clock));
        tokio::time::sleep(Duration::from_secs(4)).await;
        clock.touch();
        clock.stalled().await;
        assert_eq!(start.elapsed().as_secs(), 44);
        // A finished response is never stalled.
        drop(timed);
        let done = tokio::time::timeout(Duration::from_secs(60), clock.stalled()).await;
        assert!(done.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_http2_stream_task_is_dropped_and_a_plain_one_runs() {
        use hyper::rt::Executor;
        struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        let handoff = Arc::new(Handoff::default());
        let exec = StreamExec(Arc::clone(&handoff));
        let clock = StreamClock::start(Duration::from_secs(10), true);
        handoff.stream_started(Some(&clock), Version::HTTP_2);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let guard = Dropped(Some(tx));
        // A stream task stuck writing its response (as when its window stays full).
        let timed = Timed::new(Arc::clone(&clock));
        exec.execute(async move {
            let _guard = guard;
            let _timed = timed;
            std::future::pending::<()>().await;
        });
        let start = Instant::now();
        rx.await.unwrap();
        assert_eq!(start.elapsed().as_secs(), 10);
        // The clock was taken by that task: the next one, without a clock, just runs.
        let (tx, rx) = tokio::sync::oneshot::channel();
        exec.execute(async move {
            let _ = tx.send(());
        });
        rx.await.unwrap();
        // An HTTP/1 stream's clock goes to the connection's watch instead.
        let clock = StreamClock::start(Duration::from_secs(5), true);
        handoff.stream_started(Some(&clock), Version::HTTP_11);
        let _timed = Timed::new(Arc::clone(&clock));
        let start = Instant::now();
        handoff.h1_stalled().await;
        assert_eq!(start.elapsed().as_secs(), 5);
    }

    #[test]
    fn the_reply_is_408_while_the_request_is_incomplete_and_504_after() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let rec = super::super::reply::tests::recorder;
            let clock = StreamClock::start(Duration::from_secs(1), false);
            let r = reply(rec(), false, Version::HTTP_11, &clock);
            assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
            assert_eq!(r.headers()[header::CONNECTION], "close");
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, DETAILS);
            let r = reply(rec(), false, Version::HTTP_2, &clock);
            assert!(r.headers().get(header::CONNECTION).is_none());
            clock.request_complete();
            let r = reply(rec(), false, Version::HTTP_11, &clock);
            assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
            assert!(r.headers().get(header::CONNECTION).is_none());
        });
    }
}
