//! Request mirroring (Envoy's shadowing, Istio's `mirror`): a copy of the request sent to
//! another cluster, fire and forget.
//!
//! A shadow must never slow or change the real request: it runs on its own task, its answer
//! is read and thrown away, and its failures are not reported. Its host gets Envoy's
//! `-shadow` suffix so the mirror's server can tell copies from real traffic. Only a body
//! buffered for replay can be copied, so a streamed request is not mirrored.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Uri, Version};
use http_body_util::BodyExt;

use super::reply::full;
use super::upstream_request::{Head, clone_parts};
use crate::resources::chance;
use crate::resources::route::{Mirror, strip_port};
use crate::state::Snapshot;
use crate::tls::SecretStore;
use crate::tls::credentials::SdsSecrets;

/// Send each mirror, in its share of requests, a copy of the upstream request.
pub(super) fn shadow(
    mirrors: &[Mirror],
    snap: &Snapshot,
    secrets: &Arc<SecretStore>,
    sds: &Arc<SdsSecrets>,
    head: &Head,
    body: &Bytes,
) {
    for mirror in mirrors {
        if !chance(mirror.ppm) {
            continue;
        }
        let Some(cluster) = snap.clusters.get(&mirror.cluster).cloned() else {
            continue;
        };
        let mut parts = clone_parts(&head.parts);
        if let Ok(v) = HeaderValue::from_str(&shadow_host(&head.host)) {
            parts.headers.insert(header::HOST, v);
        }
        let body = body.clone();
        let path = head.path.clone();
        let secrets = Arc::clone(secrets);
        let sds = Arc::clone(sds);
        let sni_host = shadow_host(&head.host);
        tokio::spawn(async move {
            let Ok(host) = cluster.pick(None, &[]) else {
                return;
            };
            let Ok(uri) =
                format!("{}://{}{}", host.scheme(), host.authority(), path).parse::<Uri>()
            else {
                return;
            };
            parts.uri = uri;
            let h2 = cluster.uses_http2(parts.version == Version::HTTP_2);
            if !h2 {
                parts.version = Version::HTTP_11;
            }
            let req = Request::from_parts(parts, full(body));
            let client = cluster.client(h2, &secrets, &sds, Some(strip_port(&sni_host)));
            if let Ok(resp) = client.request(req).await {
                let _ = resp.into_body().collect().await;
            }
        });
    }
}

/// The shadow's host: the request's, without its port, with Envoy's `-shadow` suffix.
fn shadow_host(host: &str) -> String {
    format!("{}-shadow", strip_port(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_drops_the_port() {
        assert_eq!(shadow_host("reviews:9080"), "reviews-shadow");
        assert_eq!(
            shadow_host("reviews.default.svc"),
            "reviews.default.svc-shadow"
        );
    }
}
