//! Retry state: whether a request may be tried again, when, and with what body.
//!
//! Envoy's router keeps one retry state per request, apart from the attempts themselves: it
//! holds the route's retry policy (`retry_on`, `retriable_status_codes`, the number of
//! retries, the per-try timeout, the backoff), counts attempts against the route's timeout
//! and the cluster's `max_retries` circuit breaker, and remembers which hosts failed so the
//! next attempt goes elsewhere. A request can only be retried if its body can be sent again,
//! so small bodies are buffered here (also for mirrors); a larger or streaming body gets one
//! attempt.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;

use super::Counted;
use super::DownstreamBody;
use super::recorder::Recorder;
use super::reply::{empty, full};
use super::upstream_request::AttemptError;
use crate::resources::cluster::HostAddr;
use crate::resources::route::RetryPolicy;
use crate::upstream::{Body, Cluster, Host, LimitGuard};

/// Bodies up to this size are buffered so the request can be retried or mirrored.
const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// The downstream's body, as the attempts send it.
pub(super) enum RequestBody {
    /// Read in full: every attempt and mirror sends a copy.
    Buffered(Bytes),
    /// Passed through as it arrives, to the first attempt only.
    Streaming(Option<DownstreamBody>),
}

/// One request's retry state.
pub(super) struct RetryState {
    policy: Option<Arc<RetryPolicy>>,
    max_attempts: u32,
    /// The route's timeout, from the start of the request.
    deadline: Option<tokio::time::Instant>,
    /// The cluster's `max_retries` circuit breaker.
    max_retries: u32,
    attempt: u32,
    tried: Vec<HostAddr>,
    retried: bool,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Back off and try again.
    Retry,
    /// The policy asked for a retry, but none is left (tries, time or circuit breaker).
    Exhausted,
    /// The answer stands.
    Final,
}

/// Why a request body could not be read before the first attempt.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    #[error(transparent)]
    Read(#[from] hyper::Error),
    /// Its trailers name a framing or routing field (see `body::forbidden_trailer`).
    #[error("forbidden request trailer")]
    Trailer,
}

// === impl RequestBody ===

impl RequestBody {
    /// Buffer the body when `wanted` and it is known to be small (or empty); count its bytes
    /// in the request's metrics.
    pub async fn read(
        body: DownstreamBody,
        headers: &http::HeaderMap,
        wanted: bool,
        rec: &Recorder,
    ) -> Result<Self, BodyError> {
        let content_length = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let replayable = http_body::Body::is_end_stream(&body)
            || content_length.is_some_and(|n| n <= MAX_BUFFERED_BODY);
        if !(wanted && replayable) {
            return Ok(Self::Streaming(Some(body)));
        }
        let collected = body.collect().await?;
        if collected
            .trailers()
            .is_some_and(|t| super::body::forbidden_trailer(t).is_some())
        {
            return Err(BodyError::Trailer);
        }
        let bytes = collected.to_bytes();
        rec.request_bytes
            .store(bytes.len() as u64, Ordering::Relaxed);
        if let Some(m) = &rec.grpc_messages {
            m.add_request(super::body::GrpcFramer::default().inspect(&bytes));
        }
        Ok(Self::Buffered(bytes))
    }

    pub fn buffered(&self) -> Option<&Bytes> {
        match self {
            Self::Buffered(b) => Some(b),
            Self::Streaming(_) => None,
        }
    }

    /// The body for the next attempt; a streamed body counts its bytes as they pass.
    pub fn for_attempt(&mut self, rec: &Recorder) -> Body {
        match self {
            Self::Buffered(b) => full(b.clone()),
            Self::Streaming(s) => match s.take() {
                Some(s) => Counted::new(s, Arc::clone(&rec.request_bytes))
                    .with_grpc(rec.grpc_messages.clone())
                    .boxed_unsync(),
                None => empty(),
            },
        }
    }
}

fn active_retries(cluster: &Cluster) -> u32 {
    cluster.active_retries.load(Ordering::Relaxed)
}

// === impl RetryState ===

impl RetryState {
    /// The state for a request under `policy` (the route's, else its virtual host's).
    /// Without a replayable body there is one attempt only.
    pub fn new(
        policy: Option<Arc<RetryPolicy>>,
        replayable: bool,
        timeout: Option<Duration>,
        start: Instant,
        max_retries: u32,
    ) -> Self {
        let max_attempts = match (&policy, replayable) {
            (Some(r), true) => 1 + r.num_retries,
            _ => 1,
        };
        Self {
            policy,
            max_attempts,
            deadline: timeout.map(|t| tokio::time::Instant::from_std(start) + t),
            max_retries,
            attempt: 0,
            tried: Vec::new(),
            retried: false,
        }
    }

    pub fn begin_attempt(&mut self) {
        self.attempt += 1;
    }

    /// Hosts that failed an earlier attempt.
    pub fn tried(&self) -> &[HostAddr] {
        &self.tried
    }

    /// Whether any attempt was a retry.
    pub fn retried(&self) -> bool {
        self.retried
    }

    /// When the attempt starting now must have its response head: the per-try timeout or the
    /// route's, whichever comes first.
    pub fn attempt_deadline(&self) -> Option<tokio::time::Instant> {
        let per_try = self.policy.as_ref().and_then(|r| r.per_try_timeout);
        let now = tokio::time::Instant::now();
        match (per_try.map(|p| now + p), self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// After a response: retried when the policy names its status (or gRPC status).
    pub fn after_response(&self, cluster: &Cluster, status: u16, grpc: Option<u32>) -> Verdict {
        let wanted = self
            .policy
            .as_ref()
            .is_some_and(|r| r.retries_status(status, grpc));
        self.verdict(wanted, active_retries(cluster))
    }

    /// After an attempt without a response.
    pub fn after_error(&self, cluster: &Cluster, err: &AttemptError) -> Verdict {
        self.verdict(self.retries_error(err), active_retries(cluster))
    }

    /// A per-try timeout is retried while the route's timeout allows, whatever `retry_on`
    /// says; an overflow never is.
    fn retries_error(&self, err: &AttemptError) -> bool {
        match err {
            AttemptError::Overflow => false,
            AttemptError::Timeout => self
                .deadline
                .is_none_or(|d| tokio::time::Instant::now() < d),
            AttemptError::ConnectFailure | AttemptError::Reset | AttemptError::Protocol => self
                .policy
                .as_ref()
                .is_some_and(|r| r.retries_connect_failure()),
        }
    }

    /// `active_retries`: the cluster's retries in flight, for its circuit breaker.
    fn verdict(&self, wanted: bool, active_retries: u32) -> Verdict {
        if !wanted {
            Verdict::Final
        } else if self.attempt < self.max_attempts
            && self
                .deadline
                .is_none_or(|d| tokio::time::Instant::now() < d)
            && active_retries < self.max_retries
        {
            Verdict::Retry
        } else {
            Verdict::Exhausted
        }
    }

    /// Before the next attempt: remember the failed host, count the retry, and wait the
    /// policy's backoff (holding a place under the cluster's retry circuit breaker).
    pub async fn back_off(&mut self, cluster: &Cluster, host: Option<&Host>) {
        if let Some(h) = host {
            self.tried.push(h.addr.clone());
        }
        self.retried = true;
        cluster
            .stats
            .upstream_rq_retry
            .fetch_add(1, Ordering::Relaxed);
        let Some(_g) = LimitGuard::try_new(&cluster.active_retries, u32::MAX) else {
            return;
        };
        if let Some(r) = &self.policy {
            tokio::time::sleep(r.backoff(self.attempt - 1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::route::v3 as rv3;
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

    use super::*;

    fn policy(retry_on: &str, retries: u32, per_try_ms: Option<i32>) -> Arc<RetryPolicy> {
        let proto = rv3::RetryPolicy {
            retry_on: retry_on.into(),
            num_retries: Some(UInt32Value { value: retries }),
            per_try_timeout: per_try_ms.map(|ms| PbDuration {
                seconds: 0,
                nanos: ms * 1_000_000,
            }),
            ..Default::default()
        };
        Arc::new(RetryPolicy::from_proto(&proto).unwrap())
    }

    fn state(policy: Option<Arc<RetryPolicy>>, replayable: bool, timeout_ms: u64) -> RetryState {
        let timeout = Some(Duration::from_millis(timeout_ms));
        let mut s = RetryState::new(policy, replayable, timeout, Instant::now(), 3);
        s.begin_attempt();
        s
    }

    #[tokio::test(start_paused = true)]
    async fn retries_listed_statuses_until_attempts_run_out() {
        let mut s = state(Some(policy("5xx", 2, None)), true, 1_000);
        let on_503 = |s: &RetryState| {
            let wanted = s
                .policy
                .as_ref()
                .is_some_and(|p| p.retries_status(503, None));
            s.verdict(wanted, 0)
        };
        assert_eq!(on_503(&s), Verdict::Retry);
        assert!(!s.policy.as_ref().unwrap().retries_status(404, None));
        s.begin_attempt();
        assert_eq!(on_503(&s), Verdict::Retry);
        s.begin_attempt();
        assert_eq!(on_503(&s), Verdict::Exhausted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_body_gets_one_attempt() {
        let s = state(Some(policy("5xx", 2, None)), false, 1_000);
        assert_eq!(s.verdict(true, 0), Verdict::Exhausted);
        let none = state(None, true, 1_000);
        assert_eq!(none.verdict(false, 0), Verdict::Final);
    }

    #[tokio::test(start_paused = true)]
    async fn circuit_breaker_and_route_timeout_stop_retries() {
        let s = state(Some(policy("connect-failure", 2, None)), true, 1_000);
        assert!(s.retries_error(&AttemptError::ConnectFailure));
        assert!(!s.retries_error(&AttemptError::Overflow));
        assert_eq!(s.verdict(true, 3), Verdict::Exhausted);
        tokio::time::advance(Duration::from_millis(1_100)).await;
        assert!(!s.retries_error(&AttemptError::Timeout));
        assert_eq!(s.verdict(true, 0), Verdict::Exhausted);
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_timeout_is_capped_by_the_route_timeout() {
        let s = state(Some(policy("5xx", 1, Some(100))), true, 1_000);
        let now = tokio::time::Instant::now();
        assert_eq!(s.attempt_deadline(), Some(now + Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(950)).await;
        let capped = s.deadline;
        assert_eq!(s.attempt_deadline(), capped);
        let no_policy = state(None, true, 1_000);
        assert_eq!(no_policy.attempt_deadline(), no_policy.deadline);
    }
}
