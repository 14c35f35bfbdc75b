//! The run directory's `spans.jsonl`: a tracing-subscriber layer that writes every closed
//! chaos-ebpf span (run, step, inject, revert, cleanup) as one JSON object a line, in the
//! form `verify` reads (`chaos_model::expect::SpanRecord`). Lines are flushed as spans
//! close, so what a killed run closed is on disk.

use std::{
    fs::File,
    io::{LineWriter, Write},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, OnceLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use chaos_model::expect::{SpanRecord, Status};
use serde_json::{Map, Value};
use tracing::{
    field::{Field, Visit},
    span::{Attributes, Id, Record},
    Subscriber,
};
use tracing_subscriber::{layer::Context, registry::LookupSpan, Layer};

/// Where closed spans go; unset (commands without a run directory): nowhere.
static OUT: OnceLock<Mutex<LineWriter<File>>> = OnceLock::new();

/// Writes the spans that close from now on to `path` (created; it must not exist).
pub fn write_to(path: &Path) -> std::io::Result<()> {
    let file = File::options().write(true).create_new(true).open(path)?;
    let _ = OUT.set(Mutex::new(LineWriter::new(file)));
    Ok(())
}

/// The layer; install it once, in `main`.
pub struct SpanFile {
    next_id: AtomicU64,
}

impl SpanFile {
    pub fn new() -> Self {
        SpanFile { next_id: AtomicU64::new(1) }
    }
}

/// A span while it is open: our id (tracing reuses its ids), start and attributes.
struct Open {
    id: u64,
    start_unix_ns: u64,
    attributes: Map<String, Value>,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Only chaos-ebpf's own spans (targets chaos_engine::..., chaos_datapath::...).
fn ours(target: &str) -> bool {
    target.starts_with("chaos_")
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanFile {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if OUT.get().is_none() || !ours(attrs.metadata().target()) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut attributes = Map::new();
        attrs.record(&mut Fields(&mut attributes));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        span.extensions_mut().insert(Open { id, start_unix_ns: now_ns(), attributes });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(open) = extensions.get_mut::<Open>() {
            values.record(&mut Fields(&mut open.attributes));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(out) = OUT.get() else { return };
        let Some(span) = ctx.span(&id) else { return };
        let Some(mut open) = span.extensions_mut().remove::<Open>() else { return };
        let parent = span.parent();
        let parent_id = parent.as_ref().and_then(|p| p.extensions().get::<Open>().map(|o| o.id));
        let status = match open.attributes.remove("otel.status_code").as_ref().and_then(Value::as_str) {
            Some(code) if code.eq_ignore_ascii_case("ok") => Status::Ok,
            Some(code) if code.eq_ignore_ascii_case("error") => Status::Error,
            _ => Status::Unset,
        };
        let status_message = match open.attributes.remove("otel.status_message") {
            Some(Value::String(message)) => Some(message),
            _ => None,
        };
        let record = SpanRecord {
            name: span.name().to_owned(),
            id: open.id,
            parent_id,
            parent: parent.map(|p| p.name().to_owned()),
            start_unix_ns: open.start_unix_ns,
            end_unix_ns: now_ns(),
            status,
            status_message,
            attributes: open.attributes,
        };
        if let Ok(line) = serde_json::to_string(&record) {
            let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
            // A full disk must not stop the revert: the span is lost, the run goes on.
            let _ = writeln!(out, "{line}");
        }
    }
}

/// Span fields as JSON values of their own type.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%value` fields arrive here, formatted with Display.
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// Spans with explicit parents, recorded fields and statuses come out as records
    /// `verify` reads: parent names and ids, typed attributes, status lifted out.
    #[test]
    fn closed_spans_become_records() {
        let dir = std::env::temp_dir().join(format!("chaos-spans-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spans.jsonl");
        let _ = std::fs::remove_file(&path);
        write_to(&path).unwrap();
        let subscriber = tracing_subscriber::registry().with(SpanFile::new());
        tracing::subscriber::with_default(subscriber, || {
            let run = tracing::info_span!(target: "chaos_engine::run", "run", seed = 7u64, otel.status_code = tracing::field::Empty);
            let step = tracing::info_span!(target: "chaos_engine::run", parent: &run, "step", step = %"loss", dropped = tracing::field::Empty);
            step.record("dropped", 12u64);
            drop(step);
            let _foreign = tracing::info_span!(target: "aya", "not ours");
            run.record("otel.status_code", "error");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let spans = chaos_model::expect::parse_spans("spans.jsonl", &text).unwrap();
        assert_eq!(spans.len(), 2, "{text}");
        assert_eq!((spans[0].name.as_str(), spans[0].parent.as_deref()), ("step", Some("run")), "{text}");
        assert_eq!(spans[0].parent_id, Some(spans[1].id));
        assert_eq!(spans[0].attributes["dropped"], 12);
        assert_eq!(spans[0].attributes["step"], "loss");
        assert_eq!((spans[1].status, spans[1].attributes["seed"].as_u64()), (Status::Error, Some(7)));
        assert!(!spans[1].attributes.contains_key("otel.status_code"));
        assert!(spans[0].start_unix_ns <= spans[0].end_unix_ns && spans[0].end_unix_ns <= spans[1].end_unix_ns);
    }
}
