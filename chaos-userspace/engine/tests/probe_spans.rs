//! Every check of the hypothesis checker is a `probe` span, seen by a subscriber of the
//! test's thread. Its own test binary, alone in its process: tracing caches whether a
//! callsite is enabled, and a test without a subscriber that reaches the `probe`
//! callsite at the same moment on another thread can leave it cached as disabled (in
//! hypothesis.rs, beside 15 other tests, this failed in the first run of two fresh CI
//! clones and passed in every later run).

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use chaos_engine::hypothesis::Checker;
use chaos_model::hypothesis::ProbeCheck;

mod common;

use common::{hypothesis, ms, probe, NOT_INTERRUPTED};

// A subscriber that keeps the fields of every closed `probe` span.
#[derive(Clone, Default)]
struct ProbeSpans(Arc<Mutex<Vec<std::collections::BTreeMap<String, String>>>>);

struct Fields(std::collections::BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").trim_matches('"').to_owned());
    }
}

impl<S> tracing_subscriber::Layer<S> for ProbeSpans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = Fields(Default::default());
        attrs.record(&mut fields);
        if let Some(parent) = attrs.parent().and_then(|p| ctx.span(p)) {
            fields.0.insert("parent".into(), parent.name().into());
        }
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let span = ctx.span(id).unwrap();
        let mut extensions = span.extensions_mut();
        values.record(extensions.get_mut::<Fields>().unwrap());
    }
    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        if span.name() == "probe" {
            let mut fields = span.extensions().get::<Fields>().unwrap().0.clone();
            fields.insert("name".into(), span.name().into());
            self.0.lock().unwrap().push(fields);
        }
    }
}

/// Every check is a `probe` span, a child of the span given to the checker, with its
/// outcome; the subscriber is this thread's only (the runtime's threads use it too).
#[test]
fn each_check_is_a_probe_span() {
    use tracing_subscriber::layer::SubscriberExt;
    let spans = ProbeSpans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let argv = |a: &str| vec![a.to_string()];
    tracing::subscriber::with_default(subscriber, || {
        let run = tracing::info_span!("run");
        let probes = vec![
            probe("ok", ProbeCheck::Command { argv: argv("true"), exit: 0, output_contains: None }),
            probe("bad", ProbeCheck::Command { argv: argv("false"), exit: 0, output_contains: None }),
        ];
        let hypothesis = hypothesis(probes, ms(50), ms(300));
        let mut checker = Checker::new("spans", Some(&hypothesis), &[], Instant::now(), &run).unwrap();
        assert!(checker.steady_state(&NOT_INTERRUPTED, &mut |_| {}).is_err());
        drop(checker);
    });
    let spans = spans.0.lock().unwrap();
    let ok = spans.iter().find(|s| s["probe"] == "ok").expect("a span of the passing probe");
    assert_eq!(
        (ok["parent"].as_str(), ok["scenario"].as_str(), ok["kind"].as_str(), ok["phase"].as_str()),
        ("run", "spans", "command", "before")
    );
    assert_eq!((ok["ok"].as_str(), ok["otel.status_code"].as_str()), ("true", "ok"));
    assert!(ok["latency_ms"].parse::<f64>().unwrap() > 0.0);
    // A check still running at the deadline is cancelled: its span says so, without an outcome.
    let (bad, cancelled): (Vec<_>, Vec<_>) =
        spans.iter().filter(|s| s["probe"] == "bad").partition(|s| s.contains_key("ok"));
    assert!(bad.len() >= 2, "checked until steady-within: {spans:?}");
    assert!(bad.iter().all(|s| s["ok"] == "false" && s["otel.status_code"] == "error"));
    assert_eq!(bad[0]["otel.status_message"], "\"false\" exited 1, expected 0");
    assert!(cancelled.len() <= 1, "{cancelled:?}");
    assert!(cancelled
        .iter()
        .all(|s| s["detail"] == "cancelled: its phase ended first" && !s.contains_key("otel.status_code")));
}
