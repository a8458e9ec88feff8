//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several mastd replicas
//! exactly one writes to the API server.
//!
//! Every replica serves xDS, CA and injection — those only read — but status conditions, the
//! trust-bundle ConfigMaps and the webhook's caBundle are writes, and N replicas writing them
//! would fight (and multiply the API server's load). The elected replica writes; the others
//! watch [`LeaderElection::spawn`]'s `watch::Receiver<bool>` and start writing when it turns
//! `true`.
//!
//! The algorithm is client-go's `leaderelection` with its defaults, so it behaves the way
//! operators know from every controller: lease duration 15 s, renew deadline 10 s, retry 2 s.
//! - A candidate takes the Lease when it is absent, released (no holder) or expired. Expiry is
//!   judged by *local* observation — the record unchanged for `leaseDurationSeconds` since this
//!   replica first saw it — never by comparing another node's `renewTime` with our clock.
//! - Every write carries the `resourceVersion` read (optimistic concurrency): of two
//!   candidates racing, one gets 409 Conflict and stays a follower.
//! - The leader renews every retry period; if no renewal has succeeded for the renew deadline
//!   it stops leading *before* its lease can expire in others' eyes (10 s < 15 s), so two
//!   replicas never both believe they lead.
//! - On shutdown the leader first stops leading, then releases the Lease (no holder, duration
//!   1 s) so a peer takes over within one retry period instead of waiting out the lease.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// The Lease mastd's replicas elect on, in mastd's namespace.
pub const DEFAULT_LEASE_NAME: &str = "mast-leader";

/// Who may write, and how long a leadership lasts.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's name in `holderIdentity`: the pod name.
    pub identity: String,
    /// How long others wait after the last renewal they saw before taking over.
    pub lease_duration: Duration,
    /// The leader stops leading when it could not renew for this long.
    pub renew_deadline: Duration,
    /// Between attempts to acquire or renew.
    pub retry_period: Duration,
}

/// What one attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    /// We hold the Lease (acquired or renewed).
    Leading,
    /// Someone else holds a live Lease.
    HeldBy(String),
    /// Another writer changed the Lease between our read and our write.
    Conflict,
}

/// The Lease record as last seen, and when it was first seen so (for local expiry).
#[derive(Debug)]
struct Observed {
    resource_version: Option<String>,
    at: Instant,
}

// === impl LeaderElection ===

impl LeaderElection {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(namespace: &str, lease_name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Run the election in a task until `shutdown` completes; the receiver says whether this
    /// replica leads. Await the handle after shutdown: the Lease is released before it ends.
    pub fn spawn(
        self,
        client: kube::Client,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(self.run(client, tx, shutdown));
        (rx, task)
    }

    /// The election loop: publishes leadership on `leader` until `shutdown`, then steps down
    /// and releases the Lease if held.
    pub async fn run(
        self,
        client: kube::Client,
        leader: watch::Sender<bool>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        let mut observed: Option<Observed> = None;
        let mut last_renewal: Option<Instant> = None;
        tokio::pin!(shutdown);
        loop {
            // Bounded so a hung request cannot outlive the renew deadline.
            let attempt =
                tokio::time::timeout(self.renew_deadline / 2, self.attempt(&api, &mut observed))
                    .await
                    .map_err(|_| "the API server did not answer in time".to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
            let now = Instant::now();
            let leading = *leader.borrow();
            match attempt {
                Ok(Attempt::Leading) => {
                    last_renewal = Some(now);
                    if !leading {
                        tracing::info!(identity = %self.identity, lease = %self.lease_name, "became the leader");
                        leader.send_replace(true);
                    }
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if leading {
                        tracing::warn!(%holder, "lost the Lease to another replica; no longer leading");
                        leader.send_replace(false);
                    }
                }
                Ok(Attempt::Conflict) | Err(_) => {
                    if let Err(e) = &attempt {
                        tracing::warn!(lease = %self.lease_name, "leader election: {e}");
                    }
                    if leading
                        && last_renewal.is_none_or(|t| now.duration_since(t) >= self.renew_deadline)
                    {
                        tracing::warn!(
                            "could not renew the Lease within the renew deadline; no longer leading"
                        );
                        leader.send_replace(false);
                    }
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.retry_period) => {}
            }
        }
        if leader.send_replace(false) {
            // Stopped leading first (writers see `false`), then hand the Lease over.
            match self.release(&api).await {
                Ok(()) => tracing::info!(lease = %self.lease_name, "released the Lease"),
                Err(e) => tracing::warn!("could not release the Lease: {e}"),
            }
        }
    }

    /// One try to acquire or renew.
    async fn attempt(
        &self,
        api: &Api<Lease>,
        observed: &mut Option<Observed>,
    ) -> Result<Attempt, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(current) = api.get_opt(&self.lease_name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease_name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs(self.lease_duration)),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let rv = current.metadata.resource_version.clone();
        let seen = match observed {
            Some(o) if o.resource_version == rv => o.at,
            _ => {
                let at = Instant::now();
                *observed = Some(Observed {
                    resource_version: rv,
                    at,
                });
                at
            }
        };
        let duration = spec
            .lease_duration_seconds
            .map_or(self.lease_duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        let expired = Instant::now() >= seen + duration;
        if !holder.is_empty() && holder != self.identity && !expired {
            return Ok(Attempt::HeldBy(holder));
        }
        let mut next = current;
        let transitions = spec.lease_transitions.unwrap_or(0);
        next.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(secs(self.lease_duration)),
            acquire_time: if holder == self.identity {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if holder == self.identity {
                transitions
            } else {
                transitions + 1
            }),
            ..spec
        });
        // `next` keeps the resourceVersion read: a concurrent writer makes this a 409.
        match api
            .replace(&self.lease_name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up: no holder, 1 s duration (as client-go's ReleaseOnCancel).
    async fn release(&self, api: &Api<Lease>) -> Result<(), kube::Error> {
        let Some(mut lease) = api.get_opt(&self.lease_name).await? else {
            return Ok(());
        };
        let spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..spec
        });
        api.replace(&self.lease_name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::testing::{FakeApiServer, status};

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/mast-system/leases/mast-leader";

    fn elector(
        client: &kube::Client,
        name: &str,
    ) -> (
        watch::Receiver<bool>,
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (rx, task) = LeaderElection::new("mast-system", DEFAULT_LEASE_NAME, name).spawn(
            client.clone(),
            async move {
                let _ = stopped.await;
            },
        );
        (rx, task, stop)
    }

    async fn until(rx: &mut watch::Receiver<bool>, want: bool, within: Duration) {
        tokio::time::timeout(within, rx.wait_for(|v| *v == want))
            .await
            .unwrap_or_else(|_| panic!("not {want} within {within:?}"))
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn one_leader_and_a_clean_handover_on_release() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        let (mut a, a_task, a_stop) = elector(&client, "mastd-7c9f-a");
        until(&mut a, true, Duration::from_secs(1)).await;
        let (mut b, b_task, b_stop) = elector(&client, "mastd-7c9f-b");
        // B keeps trying for far longer than a lease, and stays a follower.
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert!(*a.borrow() && !*b.borrow());
        let lease = api.get_at(LEASE).unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "mastd-7c9f-a");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);

        // A shuts down: stops leading, releases; B leads within a retry period or two.
        let t0 = Instant::now();
        a_stop.send(()).unwrap();
        a_task.await.unwrap();
        assert!(!*a.borrow());
        let released = api.get_at(LEASE).unwrap();
        assert!(released["spec"]["holderIdentity"].is_null(), "{released}");
        until(&mut b, true, Duration::from_secs(5)).await;
        assert!(t0.elapsed() < Duration::from_secs(5));
        let lease = api.get_at(LEASE).unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "mastd-7c9f-b");
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
        b_stop.send(()).unwrap();
        b_task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_of_a_vanished_holder_is_taken_over() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        // A Lease as a crashed replica left it (the API server's shape).
        api.put_at(
            LEASE,
            json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "mast-leader", "namespace": "mast-system"},
                "spec": {
                    "holderIdentity": "mastd-5d8b-gone",
                    "leaseDurationSeconds": 15,
                    "acquireTime": "2026-11-30T01:00:00.000000Z",
                    "renewTime": "2026-11-30T01:59:58.123456Z",
                    "leaseTransitions": 3
                }
            }),
        );
        let t0 = Instant::now();
        let (mut b, b_task, b_stop) = elector(&client, "mastd-5d8b-new");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!*b.borrow(), "not before the lease expires");
        until(&mut b, true, Duration::from_secs(10)).await;
        let waited = t0.elapsed();
        assert!(
            (Duration::from_secs(15)..Duration::from_secs(18)).contains(&waited),
            "{waited:?}"
        );
        let lease = api.get_at(LEASE).unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "mastd-5d8b-new");
        assert_eq!(lease["spec"]["leaseTransitions"], 4);
        assert_ne!(lease["spec"]["acquireTime"], "2026-11-30T01:00:00.000000Z");
        b_stop.send(()).unwrap();
        b_task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_that_keeps_renewing_is_never_displaced_and_conflicts_retry() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        // The first write of the Lease loses a race: 409 Conflict, as the API server says it.
        let creates = Arc::new(AtomicUsize::new(0));
        let n = Arc::clone(&creates);
        api.hook(move |method, path, _| {
            (*method == Method::POST
                && path.ends_with("/leases")
                && n.fetch_add(1, Ordering::SeqCst) == 0)
                .then(|| {
                    let msg = "leases.coordination.k8s.io \"mast-leader\" already exists";
                    (
                        409,
                        status(409, "AlreadyExists", msg, "leases", "mast-leader"),
                    )
                })
        });
        let (mut a, a_task, a_stop) = elector(&client, "mastd-a");
        until(&mut a, true, Duration::from_secs(5)).await;
        assert!(
            creates.load(Ordering::SeqCst) >= 2,
            "retried after the conflict"
        );
        // Renewals keep it: a second candidate waits through many lease durations.
        let (b, b_task, b_stop) = elector(&client, "mastd-b");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(*a.borrow() && !*b.borrow());
        let renewals = api
            .requests()
            .iter()
            .filter(|l| l.starts_with("PUT") && l.contains("mast-leader"))
            .count();
        assert!(renewals >= 25, "renewed every 2 s: {renewals}");
        for (stop, task) in [(a_stop, a_task), (b_stop, b_task)] {
            stop.send(()).unwrap();
            task.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_starting_together_elect_exactly_one() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        let electors: Vec<_> = ["mastd-a", "mastd-b", "mastd-c"]
            .into_iter()
            .map(|n| elector(&client, n))
            .collect();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let leaders: Vec<bool> = electors.iter().map(|(rx, _, _)| *rx.borrow()).collect();
        assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "{leaders:?}");
        let creates = api
            .requests()
            .iter()
            .filter(|l| l.starts_with("POST"))
            .count();
        // However the requests interleave, at most one create can have succeeded.
        assert!((1..=3).contains(&creates), "{creates}");
        for (_, task, stop) in electors {
            stop.send(()).unwrap();
            task.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_on_update_is_retried_with_a_fresh_read() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        api.put_at(
            LEASE,
            json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "mast-leader", "namespace": "mast-system"},
                "spec": {"leaseDurationSeconds": 1, "leaseTransitions": 2,
                         "renewTime": "2026-11-30T01:59:58.123456Z"}
            }),
        );
        // Released Lease; our first write races another writer and loses.
        let puts = Arc::new(AtomicUsize::new(0));
        let n = Arc::clone(&puts);
        api.hook(move |method, _, _| {
            (*method == Method::PUT && n.fetch_add(1, Ordering::SeqCst) == 0).then(|| {
                let msg = "Operation cannot be fulfilled on leases.coordination.k8s.io \"mast-leader\": the object has been modified; please apply your changes to the latest version and try again";
                (409, status(409, "Conflict", msg, "leases", "mast-leader"))
            })
        });
        let (mut a, a_task, a_stop) = elector(&client, "mastd-a");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!*a.borrow(), "a lost write is not leadership");
        until(&mut a, true, Duration::from_secs(3)).await;
        assert_eq!(puts.load(Ordering::SeqCst), 2);
        let gets = api
            .requests()
            .iter()
            .filter(|l| l.starts_with("GET"))
            .count();
        assert_eq!(gets, 2, "each attempt reads the Lease afresh");
        assert_eq!(api.get_at(LEASE).unwrap()["spec"]["leaseTransitions"], 3);
        a_stop.send(()).unwrap();
        a_task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_cut_off_from_the_api_server_steps_down_before_its_lease_expires() {
        let (client, api) = FakeApiServer::start_in_memory().await;
        let (mut a, a_task, a_stop) = elector(&client, "mastd-a");
        until(&mut a, true, Duration::from_secs(1)).await;
        let t0 = Instant::now();
        api.hook(|_, _, _| {
            Some((
                503,
                status(
                    503,
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request",
                    "",
                    "",
                ),
            ))
        });
        until(&mut a, false, Duration::from_secs(15)).await;
        let after = t0.elapsed();
        assert!(
            after >= Duration::from_secs(9) && after < Duration::from_secs(15),
            "{after:?}"
        );
        a_stop.send(()).unwrap();
        a_task.await.unwrap();
    }
}
