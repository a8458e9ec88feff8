//! The router, the last HTTP filter: it chooses the route, answers locally where the route or
//! its absence says so, and otherwise forwards the request to a cluster.
//!
//! Envoy's router owns route choice and the replies that follow from it — `404 NR` when no
//! virtual host or route matches, redirects, direct responses, `NC` for an unknown cluster,
//! `UO` when the cluster's request limit is reached — and drives the rest of forwarding
//! through separate pieces, kept here as sibling modules: the upstream request for one attempt
//! and its header rewriting (`upstream_request`), the retry state that decides whether to try
//! again (`retry`), and shadowing (`mirror`). This module only wires them in Envoy's order.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode, Version};

use super::recorder::Recorder;
use super::reply::{full, local_reply};
use super::retry::{RequestBody, RetryState, Verdict};
use super::upstream_request::{self, AttemptError, Head, UpstreamRequest};
use super::{ConnCtx, DownstreamBody, mirror};
use crate::rbac::DynamicMetadata;
use crate::resources::listener::{HttpManager, RouteSource};
use crate::resources::route::{Action, Forward, Route, RouteTable, VirtualHost};
use crate::state::Snapshot;
use crate::upstream::{Body, LimitGuard};

/// The route a request takes: its virtual host and the first route that matches.
#[derive(Clone, Copy)]
pub(super) struct Selected<'a> {
    pub vhost: &'a VirtualHost,
    pub route: &'a Route,
}

/// A request on its way through the router.
pub(super) struct Downstream {
    pub parts: Parts,
    pub body: DownstreamBody,
    pub rec: Recorder,
    pub grpc: bool,
}

/// What every stage after route choice reads about a request.
pub(super) struct Routed<'a> {
    pub conn: &'a ConnCtx,
    pub snap: &'a Snapshot,
    pub vhost: &'a VirtualHost,
    pub route: &'a Route,
}

/// The connection manager's route table in this snapshot: inline, or by its RDS name
/// (absent until RDS sends it).
pub(super) fn table(hcm: &HttpManager, snap: &Snapshot) -> Option<Arc<RouteTable>> {
    match &hcm.routes {
        RouteSource::Rds(name) => snap.routes.get(name).cloned(),
        RouteSource::Inline(t) => Some(Arc::clone(t)),
    }
}

/// The route for a request in its virtual host (found by authority): the first that matches
/// the request and the dynamic metadata the filters have written so far.
pub(super) fn select<'t>(
    vhost: &'t VirtualHost,
    parts: &Parts,
    metadata: &DynamicMetadata,
) -> Option<Selected<'t>> {
    let route = vhost.find_route(parts, metadata)?;
    Some(Selected { vhost, route })
}

/// Act on the route: `404 NR` without one, else redirect, answer directly, or forward.
pub(super) async fn route(
    conn: &ConnCtx,
    snap: &Snapshot,
    selected: Option<Selected<'_>>,
    down: Downstream,
) -> Response<Body> {
    let Some(Selected { vhost, route }) = selected else {
        return local_reply(down.rec, down.grpc, StatusCode::NOT_FOUND, "NR", "");
    };
    match &route.action {
        Action::Redirect(r) => {
            let location = r.location(&route.matcher, &down.parts, "http");
            let mut resp = local_reply(down.rec, false, r.status, "-", "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        Action::Direct { status, body } => {
            let mut rec = down.rec;
            rec.code = status.as_u16();
            rec.finish(None, body.len() as u64, false);
            let mut resp = Response::new(full(body.clone()));
            *resp.status_mut() = *status;
            upstream_request::apply_response_ops(vhost, route, resp.headers_mut());
            resp
        }
        Action::Forward(fwd) => {
            let routed = Routed {
                conn,
                snap,
                vhost,
                route,
            };
            forward(&routed, fwd, down).await
        }
    }
}

/// Forward to the route's cluster: rewrite the head once, shadow it, then try the upstream
/// until an answer stands or the retry policy gives up.
async fn forward(req: &Routed<'_>, fwd: &Forward, down: Downstream) -> Response<Body> {
    let Downstream {
        mut parts,
        body,
        mut rec,
        grpc,
    } = down;
    let cluster_name = fwd.pick_cluster();
    rec.cluster = Some(cluster_name.to_string());
    if let Some(ops) = fwd.cluster_headers.get(cluster_name) {
        ops.apply_request(&mut parts.headers);
    }
    let Some(cluster) = req.snap.clusters.get(cluster_name).cloned() else {
        return local_reply(rec, grpc, StatusCode::SERVICE_UNAVAILABLE, "NC", "");
    };
    if !req.conn.inbound {
        rec.service = Arc::clone(&cluster.service);
    } else if let Some(service) = cluster.inbound_service(&rec.service) {
        rec.service = service;
    }
    let limits = cluster.config.limits;
    let Some(_rq) = LimitGuard::try_new(&cluster.active_requests, limits.max_requests) else {
        cluster
            .stats
            .upstream_rq_pending_overflow
            .fetch_add(1, Ordering::Relaxed);
        return AttemptError::Overflow.reply().send(rec, grpc);
    };

    let downstream_h2 = parts.version == Version::HTTP_2;
    let upgrade = !downstream_h2 && parts.headers.contains_key(header::UPGRADE);
    let on_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let h2 = cluster.uses_http2(downstream_h2) && !upgrade;
    let head = Head::new(req, fwd, parts, upgrade);

    let policy = fwd.retry.clone().or_else(|| req.vhost.retry.clone());
    // Retries and mirrors need the body again; an upgrade's body is the tunnel.
    let wants_buffer = !upgrade && (policy.is_some() || !fwd.mirrors.is_empty());
    let Ok(mut body) = RequestBody::read(body, &head.parts.headers, wants_buffer, &rec).await
    else {
        return local_reply(rec, grpc, StatusCode::BAD_REQUEST, "DC", "");
    };
    if let Some(bytes) = body.buffered() {
        mirror::shadow(
            &fwd.mirrors,
            req.snap,
            &req.conn.shared.secrets,
            &req.conn.shared.sds,
            &head,
            bytes,
        );
    }

    let mut retry = RetryState::new(
        policy,
        body.buffered().is_some(),
        fwd.timeout,
        rec.start,
        limits.max_retries,
    );
    let upstream = UpstreamRequest {
        conn: req.conn,
        cluster: &cluster,
        head: &head,
        h2,
    };
    loop {
        retry.begin_attempt();
        let attempt = match upstream
            .send(retry.tried(), &mut body, retry.attempt_deadline(), &mut rec)
            .await
        {
            Ok(attempt) => attempt,
            Err(reply) => return reply.send(rec, grpc),
        };
        match attempt.result {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let grpc_status = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u32>().ok());
                match retry.after_response(&cluster, status, grpc_status) {
                    Verdict::Retry => {
                        retry.back_off(&cluster, attempt.host.as_deref()).await;
                        continue;
                    }
                    Verdict::Exhausted if retry.retried() => rec.flags = "URX",
                    Verdict::Exhausted | Verdict::Final => {}
                }
                // The client hears its own protocol version, whatever the upstream spoke
                // (an HTTP/1.0 app's answer goes to an HTTP/1.1 client as HTTP/1.1).
                *resp.version_mut() = head.parts.version;
                return upstream_request::respond(req, resp, rec, on_upgrade, grpc_status);
            }
            Err(err) => {
                if retry.after_error(&cluster, &err) == Verdict::Retry {
                    retry.back_off(&cluster, attempt.host.as_deref()).await;
                    continue;
                }
                let mut reply = err.reply();
                // After retries a failure reads URX; a timeout keeps its own UT, and an
                // overflow is never retried.
                if retry.retried() && !matches!(err, AttemptError::Timeout | AttemptError::Overflow)
                {
                    reply.flags = "URX";
                }
                return reply.send(rec, grpc);
            }
        }
    }
}
