//! The node's Prometheus metrics (text exposition on /metrics).

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// `result`: ok | error.
    pub writes: IntCounterVec,
    pub write_latency: Histogram,
    /// `result`: ok | error | mismatch (read back another value than the one just acknowledged).
    pub reads: IntCounterVec,
    pub members: IntGauge,
    pub membership_changes: IntCounter,
    pub lease_renewals: IntCounter,
    /// Registrations of the member key under a new lease (the first, then after a lost lease).
    pub registrations: IntCounter,
    /// `kind`: timeout | connect | tls | status | protocol.
    pub etcd_errors: IntCounterVec,
}

impl Metrics {
    pub fn new(name: &str) -> Metrics {
        let registry =
            Registry::new_custom(None, Some([("node".to_owned(), name.to_owned())].into())).expect("valid labels");
        let writes =
            IntCounterVec::new(Opts::new("writes_total", "Writes to etcd by result"), &["result"]).expect("valid");
        let write_latency = Histogram::with_opts(
            HistogramOpts::new("write_latency_seconds", "Latency of acknowledged writes")
                .buckets(vec![0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )
        .expect("valid");
        let reads = IntCounterVec::new(Opts::new("reads_total", "Reads of written keys by result"), &["result"])
            .expect("valid");
        let members = IntGauge::new("members", "Members in this node's view of the discovery plane").expect("valid");
        let membership_changes =
            IntCounter::new("membership_changes_total", "Changes of this node's membership view").expect("valid");
        let lease_renewals = IntCounter::new("lease_renewals_total", "Lease keep-alives etcd accepted").expect("valid");
        let registrations =
            IntCounter::new("registrations_total", "Registrations of this node under a new lease").expect("valid");
        let etcd_errors = IntCounterVec::new(Opts::new("etcd_errors_total", "Failed calls to etcd by kind"), &["kind"])
            .expect("valid");
        for result in ["ok", "error"] {
            writes.with_label_values(&[result]);
        }
        for result in ["ok", "error", "mismatch"] {
            reads.with_label_values(&[result]);
        }
        for kind in ["timeout", "connect", "tls", "status", "protocol"] {
            etcd_errors.with_label_values(&[kind]);
        }
        let collectors: [Box<dyn prometheus::core::Collector>; 8] = [
            Box::new(writes.clone()),
            Box::new(write_latency.clone()),
            Box::new(reads.clone()),
            Box::new(members.clone()),
            Box::new(membership_changes.clone()),
            Box::new(lease_renewals.clone()),
            Box::new(registrations.clone()),
            Box::new(etcd_errors.clone()),
        ];
        for collector in collectors {
            registry.register(collector).expect("unique metric names");
        }
        Metrics {
            registry,
            writes,
            write_latency,
            reads,
            members,
            membership_changes,
            lease_renewals,
            registrations,
            etcd_errors,
        }
    }

    /// Adds the etcd client's transport counters (etcd::TransportMetrics).
    pub fn register_transport(&self, transport: &super::etcd::TransportMetrics) {
        for collector in [
            Box::new(transport.connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(transport.fallbacks.clone()),
        ] {
            self.registry.register(collector).expect("unique metric names");
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for metrics this registry accepted.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}
