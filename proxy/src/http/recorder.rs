//! One request's telemetry, filled in as the request is routed and recorded once at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::metrics::{Metrics, Peer, PeerLabels, Reporter, RequestLabels, ServiceId};

pub struct Recorder {
    pub metrics: Arc<Metrics>,
    pub reporter: Reporter,
    /// The other side: the client for inbound, the server for outbound.
    pub peer: Arc<Peer>,
    pub service: Arc<ServiceId>,
    pub protocol: &'static str,
    pub code: u16,
    pub flags: &'static str,
    /// The downstream connection is mTLS (inbound).
    pub mtls: bool,
    /// The upstream connection was mTLS, so this side's principal is known (outbound).
    pub local_principal: bool,
    pub start: Instant,
    pub request_bytes: Arc<AtomicU64>,
    pub access_log: bool,
    pub method: http::Method,
    pub path: String,
    pub authority: String,
    pub upstream: Option<String>,
    pub cluster: Option<String>,
    /// The request's sampled span, finished with the request.
    pub span: Option<Box<super::trace::ActiveSpan>>,
    /// A gRPC request's message counts (both directions), counted by the body wrappers.
    pub grpc_messages: Option<Arc<super::body::GrpcMessages>>,
}

impl Recorder {
    /// Record the request: metrics, and the access log line when enabled.
    pub fn finish(mut self, grpc_status: Option<u32>, response_bytes: u64, aborted: bool) {
        let span = self.span.take();
        self.report_messages();
        let (source, destination) = self.parties();
        let flags = if aborted && self.flags == "-" {
            // The downstream went away before the response ended (Envoy's DC).
            "DC"
        } else {
            self.flags
        };
        let millis = self.start.elapsed().as_secs_f64() * 1000.0;
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        if let Some(span) = span {
            let (cluster, upstream) = (self.cluster.as_deref(), self.upstream.as_deref());
            span.finish(
                self.code,
                flags,
                cluster,
                upstream,
                grpc_status,
                request_bytes,
                response_bytes,
            );
        }
        if self.access_log {
            let line = serde_json::json!({
                "start_time": humantime_now(),
                "method": self.method.as_str(),
                "path": self.path,
                "authority": self.authority,
                "protocol": self.protocol,
                "response_code": self.code,
                "grpc_status": grpc_status,
                "response_flags": flags,
                "bytes_received": request_bytes,
                "bytes_sent": response_bytes,
                "duration": millis.round() as u64,
                "upstream_host": self.upstream,
                "upstream_cluster": self.cluster,
                "reporter": match self.reporter { Reporter::Source => "source", Reporter::Destination => "destination" },
            });
            tracing::info!(target: "access_log", "{line}");
        }
        self.metrics.record_request(
            RequestLabels {
                reporter: self.reporter,
                source,
                destination,
                service: self.service,
                protocol: self.protocol,
                code: self.code,
                grpc_status,
                mtls: self.mtls,
                flags,
            },
            millis,
            request_bytes,
            response_bytes,
        );
    }
}

impl Recorder {
    /// (source, destination) as the metrics name them.
    fn parties(&self) -> (Arc<Peer>, Arc<Peer>) {
        match self.reporter {
            Reporter::Source if self.local_principal => {
                (Arc::clone(&self.metrics.local_mtls), Arc::clone(&self.peer))
            }
            Reporter::Source => (Arc::clone(&self.metrics.local), Arc::clone(&self.peer)),
            Reporter::Destination if self.mtls => {
                (Arc::clone(&self.peer), Arc::clone(&self.metrics.local_mtls))
            }
            Reporter::Destination => (Arc::clone(&self.peer), Arc::clone(&self.metrics.local)),
        }
    }

    /// Add the gRPC messages counted since the last report to Istio's message counters
    /// (labelled by the two workloads only, as Istio's are: the stream has no status yet).
    pub fn report_messages(&self) {
        let Some(m) = &self.grpc_messages else {
            return;
        };
        let (request, response) = m.take_unreported();
        if request == 0 && response == 0 {
            return;
        }
        let (source, destination) = self.parties();
        let labels = PeerLabels {
            reporter: self.reporter,
            source,
            destination,
            service: Arc::clone(&self.service),
        };
        self.metrics.record_messages(&labels, request, response);
    }
}

fn humantime_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}
