//! OTLP export of a run's spans (run, step, inject, revert, cleanup, ...), next to the
//! run directory's spans.jsonl: `--otlp-endpoint URL` or the OpenTelemetry environment
//! variables (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT) turn it on.
//!
//! Transport: OTLP/HTTP with protobuf bodies, POST to `<endpoint>/v1/traces`, from the
//! SDK's batch processor on a thread of its own: a slow or dead collector never stalls the
//! run. The export is flushed when the command ends, within [`FLUSH_LIMIT`]; a collector
//! that fails or cannot be reached costs one warning line, never the run.

use std::{
    sync::{mpsc, Arc, Mutex, OnceLock},
    time::Duration,
};

use anyhow::Result;
use opentelemetry::{
    trace::{TraceContextExt as _, TracerProvider as _},
    KeyValue,
};
use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter},
    Resource,
};
use tracing::{
    dispatcher::WeakDispatch,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
    Dispatch, Subscriber,
};
use tracing_subscriber::{filter::filter_fn, layer::Context, registry::LookupSpan, Layer};

use crate::output;

/// The longest a command waits at its end for the last spans to reach the collector.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// One HTTP export (all its retries included) gives up after this: a collector that does
/// not answer holds the export thread no longer, and the final flush fits in
/// [`FLUSH_LIMIT`] even right after a failed periodic export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// The OTLP/HTTP path of traces.
const TRACES_PATH: &str = "/v1/traces";

/// The span attribute the engine records an error's message in; OTLP carries it as the
/// status message (tracing-opentelemetry reads only `otel.status_description`).
const STATUS_MESSAGE: &str = "otel.status_message";

/// `--otlp-endpoint`: the collector's base URL (`http://HOST:4318`), to which
/// `/v1/traces` is added, or the full URL ending in `/v1/traces`.
pub fn parse_endpoint(value: &str) -> Result<String, String> {
    traces_url(value, true)
}

/// The traces URL of an endpoint; `base`: the path /v1/traces is added unless it is
/// already there (OTEL_EXPORTER_OTLP_ENDPOINT and the flag), else used as it is
/// (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).
fn traces_url(value: &str, base: bool) -> Result<String, String> {
    let value = value.trim();
    let lower = value.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err("https needs TLS, which this build leaves out: send to a collector over http:// \
                    (such as an OpenTelemetry Collector on http://127.0.0.1:4318 that forwards over TLS)"
            .into());
    }
    let Some(rest) = lower.strip_prefix("http://") else {
        return Err("expected an http:// URL, such as http://127.0.0.1:4318 (a collector's OTLP/HTTP port)".into());
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) || value.contains(['?', '#']) {
        return Err("expected http://HOST[:PORT][/PATH], such as http://127.0.0.1:4318".into());
    }
    if !base || value.trim_end_matches('/').ends_with(TRACES_PATH) {
        return Ok(value.trim_end_matches('/').to_owned());
    }
    Ok(format!("{}{TRACES_PATH}", value.trim_end_matches('/')))
}

/// Where spans go: the flag, else the environment (unset or empty: no export). A bad
/// value in the environment is bad input too, named with its variable.
pub fn endpoint(flag: Option<&str>) -> Result<Option<String>> {
    if let Some(url) = flag {
        return Ok(Some(url.to_owned()));
    }
    for (variable, base) in [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", false), ("OTEL_EXPORTER_OTLP_ENDPOINT", true)] {
        let Ok(value) = std::env::var(variable) else { continue };
        if value.trim().is_empty() {
            continue;
        }
        return traces_url(&value, base).map(Some).map_err(|why| {
            chaos_datapath::Error::unsupported(
                format!("{variable}={}: {why}", chaos_model::spec::shorten(&value, 80)),
                format!("set {variable} to an http:// URL, or unset it to export no spans"),
            )
            .into()
        });
    }
    Ok(None)
}

/// tracing-opentelemetry turns `u64` fields (the engine's counters, seeds, rule ids) into
/// strings; this layer, after it, sets them again as integers on the OpenTelemetry span
/// (those that fit an i64). The exporter keeps the last value of a key.
#[derive(Default)]
struct IntegerFields {
    dispatch: OnceLock<WeakDispatch>,
}

impl IntegerFields {
    fn set(&self, id: &Id, fields: Vec<KeyValue>) {
        if fields.is_empty() {
            return;
        }
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else { return };
        // Holds no span extensions here, as get_otel_context requires.
        if let Some(cx) = tracing_opentelemetry::get_otel_context(id, &dispatch) {
            let span = cx.span();
            for field in fields {
                span.set_attribute(field);
            }
        }
    }
}

/// The integer fields of a span's values.
struct Integers(Vec<KeyValue>);

impl Visit for Integers {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if let Ok(value) = i64::try_from(value) {
            self.0.push(KeyValue::new(field.name(), value));
        }
    }
    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for IntegerFields {
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut integers = Integers(Vec::new());
        attrs.record(&mut integers);
        self.set(id, integers.0);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut integers = Integers(Vec::new());
        values.record(&mut integers);
        self.set(id, integers.0);
    }
}

/// A span's attributes with one value a key: the last set (see [`IntegerFields`]).
fn last_value_per_key(span: &mut SpanData) {
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<KeyValue> = span.attributes.drain(..).rev().filter(|kv| seen.insert(kv.key.clone())).collect();
    kept.reverse();
    span.attributes = kept;
}

/// What the exports did: for the warning at the end.
#[derive(Debug, Default)]
struct Outcome {
    exported: usize,
    failed: usize,
    first_error: Option<String>,
}

/// The OTLP exporter, with the status message lifted into the status and each export's
/// outcome counted.
#[derive(Debug)]
struct Exporter {
    inner: opentelemetry_otlp::SpanExporter,
    outcome: Arc<Mutex<Outcome>>,
}

/// A span's `otel.status_message` attribute becomes the message of its error status.
fn lift_status_message(span: &mut SpanData) {
    let Some(at) = span.attributes.iter().position(|kv| kv.key.as_str() == STATUS_MESSAGE) else { return };
    let message = span.attributes.remove(at).value.as_str().into_owned();
    if matches!(span.status, opentelemetry::trace::Status::Error { .. }) {
        span.status = opentelemetry::trace::Status::error(message);
    }
}

impl SpanExporter for Exporter {
    async fn export(&self, mut batch: Vec<SpanData>) -> OTelSdkResult {
        for span in &mut batch {
            last_value_per_key(span);
            lift_status_message(span);
        }
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        let mut outcome = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(()) => outcome.exported += spans,
            Err(e) => {
                outcome.failed += spans;
                outcome.first_error.get_or_insert_with(|| match e {
                    OTelSdkError::InternalFailure(why) => why.clone(),
                    other => other.to_string(),
                });
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The export of this command's spans; [`Export::finish`] flushes it.
pub struct Export {
    url: String,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    outcome: Arc<Mutex<Outcome>>,
}

impl Export {
    /// Sets up the exporter and its thread (nothing is sent until spans close). Errors
    /// are bad configuration (exit 2), found before anything changes.
    pub fn start(url: String) -> Result<Export> {
        let inner = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            // A refused connection is retried twice, quickly: the run's end is not held
            // up by a collector that is not there.
            .with_retry_policy(RetryPolicy::recommended().with_max_retries(2))
            .build()
            .map_err(|e| {
                chaos_datapath::Error::unsupported(
                    format!("cannot export spans to {url}: {e}"),
                    "pass --otlp-endpoint http://HOST:PORT (a collector's OTLP/HTTP port, 4318 by default)",
                )
            })?;
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let exporter = Exporter { inner, outcome: outcome.clone() };
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let resource = Resource::builder()
            .with_service_name("chaos-ebpf")
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("host.name", hostname.trim().to_owned()),
            ])
            .build();
        let provider = SdkTracerProvider::builder().with_resource(resource).with_batch_exporter(exporter).build();
        let tracer = provider.tracer("chaos-ebpf");
        Ok(Export { url, provider, tracer, outcome })
    }

    /// The tracing layer that hands chaos-ebpf's own spans (targets `chaos_*`) to the
    /// exporter; spans and events of libraries (the HTTP client's own) stay out.
    pub fn layer<S: Subscriber + for<'a> LookupSpan<'a>>(&self) -> impl Layer<S> {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_tracked_inactivity(false)
            .and_then(IntegerFields::default())
            .with_filter(filter_fn(|metadata| metadata.target().starts_with("chaos_")))
    }

    /// Sends what is still queued and stops the exporter, waiting at most
    /// [`FLUSH_LIMIT`]; a warning line when spans could not be sent.
    pub fn finish(self) {
        let Export { url, provider, outcome, .. } = self;
        let (done, finished) = mpsc::channel();
        // On a thread of its own: the bound holds whatever the exporter does.
        let flushing = std::thread::Builder::new().name("otlp-flush".into()).spawn(move || {
            let _ = done.send(provider.shutdown_with_timeout(FLUSH_LIMIT));
        });
        let flushed = match flushing {
            Ok(_) => finished.recv_timeout(FLUSH_LIMIT + Duration::from_millis(200)).ok(),
            Err(_) => None,
        };
        let outcome = outcome.lock().unwrap_or_else(|e| e.into_inner());
        let kept = "the run directory's spans.jsonl has them";
        if let Some(error) = &outcome.first_error {
            output::err(&crate::clip_lines(&format!(
                "chaos-ebpf: warning: {} of {} spans not exported to {url} ({error}); {kept}",
                outcome.failed,
                outcome.failed + outcome.exported
            )));
        } else if !matches!(flushed, Some(Ok(()))) {
            output::err(&format!(
                "chaos-ebpf: warning: exporting spans to {url} did not finish within {} s; gave up; {kept}",
                FLUSH_LIMIT.as_secs()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_become_traces_urls() {
        assert_eq!(parse_endpoint("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(parse_endpoint("http://collector:4318/").unwrap(), "http://collector:4318/v1/traces");
        assert_eq!(parse_endpoint("http://c:4318/v1/traces").unwrap(), "http://c:4318/v1/traces");
        assert_eq!(parse_endpoint("http://c/otlp").unwrap(), "http://c/otlp/v1/traces");
        assert_eq!(traces_url("http://c:4318/custom", false).unwrap(), "http://c:4318/custom");
        assert!(parse_endpoint("https://c:4318").unwrap_err().contains("TLS"));
        for bad in ["127.0.0.1:4318", "grpc://c:4317", "http://", "http:///v1/traces", "http://c:4318/?x=1"] {
            assert!(parse_endpoint(bad).unwrap_err().starts_with("expected"), "{bad}");
        }
    }

    /// A tiny OTLP/HTTP receiver on loopback: the decoded `ExportTraceServiceRequest` of
    /// each POST, with its path and content type.
    struct Receiver {
        server: Arc<tiny_http::Server>,
        thread: Option<std::thread::JoinHandle<()>>,
        received: mpsc::Receiver<(String, String, ExportTraceServiceRequest)>,
    }

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    impl Receiver {
        fn start() -> Receiver {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind a loopback port"));
            let (sender, received) = mpsc::channel();
            let serving = server.clone();
            let thread = std::thread::spawn(move || {
                for mut request in serving.incoming_requests() {
                    let mut body = Vec::new();
                    let _ = std::io::Read::read_to_end(request.as_reader(), &mut body);
                    let content_type = request
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Content-Type"))
                        .map(|h| h.value.to_string())
                        .unwrap_or_default();
                    let decoded = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP protobuf body");
                    let _ = sender.send((request.url().to_owned(), content_type, decoded));
                    let _ = request.respond(tiny_http::Response::empty(200));
                }
            });
            Receiver { server, thread: Some(thread), received }
        }

        fn url(&self) -> String {
            format!("http://{}", self.server.server_addr().to_ip().unwrap())
        }
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// Spans with explicit parents, fields recorded later and statuses reach a receiver
    /// as OTLP protobuf: names, parent ids, typed attributes, status code and message,
    /// the resource's service name, host and version; a library's span stays out.
    #[test]
    fn spans_reach_an_otlp_receiver() {
        use opentelemetry_proto::tonic::{common::v1::any_value::Value, trace::v1::status::StatusCode};
        use tracing_subscriber::layer::SubscriberExt;
        let receiver = Receiver::start();
        let export = Export::start(parse_endpoint(&receiver.url()).unwrap()).expect("the exporter");
        let subscriber = tracing_subscriber::registry().with(export.layer());
        tracing::subscriber::with_default(subscriber, || {
            let run = tracing::info_span!(target: "chaos_engine::run", "run", scenario = %"s", seed = 7u64,
                otel.status_code = tracing::field::Empty, otel.status_message = tracing::field::Empty);
            let step = tracing::info_span!(target: "chaos_engine::run", parent: &run, "step", step = %"loss",
                otel.status_code = tracing::field::Empty);
            let inject = tracing::info_span!(target: "chaos_engine::run", parent: &step, "inject", rule_id = 1u32,
                dropped = tracing::field::Empty, otel.status_code = tracing::field::Empty);
            inject.record("dropped", 12u64);
            inject.record("otel.status_code", "ok");
            drop(inject);
            drop(step);
            let _foreign = tracing::info_span!(target: "hyper", "not ours");
            run.record("otel.status_code", "error");
            run.record("otel.status_message", "interrupted");
        });
        let started = std::time::Instant::now();
        export.finish();
        println!("OTLP: the flush to a live receiver took {:?}", started.elapsed());
        assert!(started.elapsed() < FLUSH_LIMIT, "the flush took {:?}", started.elapsed());
        let mut spans = Vec::new();
        let mut resources = Vec::new();
        while let Ok((path, content_type, request)) = received_within(&receiver, Duration::from_secs(1)) {
            assert_eq!((path.as_str(), content_type.as_str()), ("/v1/traces", "application/x-protobuf"));
            for resource_spans in request.resource_spans {
                resources.push(resource_spans.resource.clone().unwrap_or_default());
                for scope_spans in resource_spans.scope_spans {
                    spans.extend(scope_spans.spans);
                }
            }
        }
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["inject", "step", "run"], "closing order, and no foreign span");
        let (inject, step, run) = (&spans[0], &spans[1], &spans[2]);
        assert_eq!(
            (inject.parent_span_id.as_slice(), step.parent_span_id.as_slice()),
            (&step.span_id[..], &run.span_id[..])
        );
        assert!(run.parent_span_id.is_empty() && inject.trace_id == run.trace_id);
        let attribute = |span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
            span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()?.value)
        };
        assert_eq!(attribute(inject, "dropped"), Some(Value::IntValue(12)));
        assert_eq!(attribute(inject, "rule_id"), Some(Value::IntValue(1)));
        assert_eq!(attribute(run, "scenario"), Some(Value::StringValue("s".into())));
        assert_eq!(attribute(run, STATUS_MESSAGE), None, "lifted into the status");
        let status = run.status.clone().unwrap_or_default();
        assert_eq!((status.code, status.message.as_str()), (StatusCode::Error as i32, "interrupted"));
        assert_eq!(inject.status.clone().unwrap_or_default().code, StatusCode::Ok as i32);
        assert_eq!(step.status.clone().unwrap_or_default().code, StatusCode::Unset as i32);
        let resource = &resources[0];
        let resource_attribute =
            |key: &str| resource.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()?.value);
        assert_eq!(resource_attribute("service.name"), Some(Value::StringValue("chaos-ebpf".into())));
        assert_eq!(resource_attribute("service.version"), Some(Value::StringValue(env!("CARGO_PKG_VERSION").into())));
        assert!(matches!(resource_attribute("host.name"), Some(Value::StringValue(h)) if !h.is_empty()));
    }

    fn received_within(
        receiver: &Receiver,
        limit: Duration,
    ) -> Result<(String, String, ExportTraceServiceRequest), mpsc::RecvTimeoutError> {
        receiver.received.recv_timeout(limit)
    }

    /// A closed port: the flush gives up quickly (retries included), within the limit.
    #[test]
    fn an_unreachable_collector_costs_bounded_time() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let export = Export::start(format!("http://127.0.0.1:{port}/v1/traces")).expect("the exporter");
        let subscriber = tracing_subscriber::layer::SubscriberExt::with(tracing_subscriber::registry(), export.layer());
        tracing::subscriber::with_default(subscriber, || {
            drop(tracing::info_span!(target: "chaos_engine::run", "run"));
        });
        let started = std::time::Instant::now();
        let outcome = export.outcome.clone();
        export.finish();
        assert!(started.elapsed() < FLUSH_LIMIT, "the flush took {:?}", started.elapsed());
        let outcome = outcome.lock().unwrap();
        assert_eq!((outcome.exported, outcome.failed), (0, 1), "{outcome:?}");
    }

    /// A collector that takes the connection and never answers: the export gives up
    /// after its timeout, the flush within the limit, with a warning.
    #[test]
    fn a_collector_that_never_answers_costs_bounded_time() {
        // Connections complete in the kernel's backlog; nobody reads or answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", silent.local_addr().unwrap());
        let export = Export::start(url).expect("the exporter");
        let subscriber = tracing_subscriber::layer::SubscriberExt::with(tracing_subscriber::registry(), export.layer());
        tracing::subscriber::with_default(subscriber, || {
            drop(tracing::info_span!(target: "chaos_engine::run", "run"));
        });
        let started = std::time::Instant::now();
        let outcome = export.outcome.clone();
        export.finish();
        let took = started.elapsed();
        assert!(took >= EXPORT_TIMEOUT && took < FLUSH_LIMIT, "the flush took {took:?}");
        assert_eq!(outcome.lock().unwrap().failed, 1);
    }
}
