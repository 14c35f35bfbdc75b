//! Span expectations (`chaos-ebpf verify RUN_DIR --expect FILE`): the spans a run
//! recorded in its run directory (`spans.jsonl`, one [`SpanRecord`] a line) checked
//! against a YAML file of expectations, so a test proves that a fault was installed and
//! reverted, not only that the exit code was 0.
//!
//! ```yaml
//! spans:
//!   - name: inject                # a span of this name
//!     parent: step                # whose parent span has this name
//!     attributes: { fault: "loss 30% on netns:a", dropped: { min: 1 } }  # a subset of its attributes
//!     status: ok                  # ok, error or unset
//!     count: 1                    # exactly 1 (default: at least 1); or { min: 1, max: 3 }
//! order:
//!   - { before: inject, after: { name: revert, parent: step } }  # every `before` span ends before every `after` span starts
//! ```

use std::{
    fmt,
    io::Read,
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::{
    locate::{locate, Seg},
    Problem,
};

/// One closed span of a run, as `spans.jsonl` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub name: String,
    /// Unique within the run directory (tracing's own ids are reused).
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<u64>,
    /// The parent span's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Wall clock, ns since the Unix epoch.
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    pub attributes: Map<String, Value>,
}

/// A span's outcome (OpenTelemetry's three): set by the code that ends the span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Unset,
    Ok,
    Error,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Unset => "unset",
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

/// The expectation file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    #[serde(default)]
    pub spans: Vec<SpanExpectation>,
    #[serde(default)]
    pub order: Vec<OrderExpectation>,
    /// Where each expectation is in the file, for the failure lines.
    #[serde(skip)]
    file: String,
    #[serde(skip)]
    source: String,
}

/// Spans that must exist: those matching the selector, counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanExpectation {
    pub name: String,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default, deserialize_with = "attribute_map")]
    pub attributes: Vec<(String, AttributeExpectation)>,
    #[serde(default)]
    pub status: Option<Status>,
    #[serde(default)]
    pub count: Count,
}

/// Every span matching `before` ends before any span matching `after` starts (and each
/// matches at least one span).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderExpectation {
    pub before: Selector,
    pub after: Selector,
}

/// Which spans: a name, and optionally the parent's name, attributes and status. In
/// `order`, a plain string is a name alone.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub name: String,
    pub parent: Option<String>,
    pub attributes: Vec<(String, AttributeExpectation)>,
    pub status: Option<Status>,
}

/// How many spans must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub min: u64,
    pub max: Option<u64>,
}

impl Default for Count {
    /// At least one.
    fn default() -> Self {
        Count { min: 1, max: None }
    }
}

/// An attribute's expected value: equal to a scalar, or a number within bounds.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeExpectation {
    Equals(Value),
    Within { min: Option<f64>, max: Option<f64> },
}

impl SpanExpectation {
    fn selector(&self) -> Selector {
        Selector {
            name: self.name.clone(),
            parent: self.parent.clone(),
            attributes: self.attributes.clone(),
            status: self.status,
        }
    }
}

impl Selector {
    /// Whether `span` is one of these.
    pub fn matches(&self, span: &SpanRecord) -> bool {
        span.name == self.name
            && self.parent.as_ref().is_none_or(|p| span.parent.as_ref() == Some(p))
            && self.status.is_none_or(|s| span.status == s)
            && self.attributes.iter().all(|(key, want)| span.attributes.get(key).is_some_and(|got| want.matches(got)))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "span '{}'", self.name)?;
        if let Some(parent) = &self.parent {
            write!(f, " under '{parent}'")?;
        }
        if let Some(status) = self.status {
            write!(f, " with status {}", status.name())?;
        }
        if !self.attributes.is_empty() {
            let attributes: Vec<String> = self.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, " with {}", attributes.join(", "))?;
        }
        Ok(())
    }
}

impl AttributeExpectation {
    pub fn matches(&self, got: &Value) -> bool {
        match self {
            AttributeExpectation::Equals(want) => match (want, got) {
                (Value::Number(w), Value::Number(g)) => w.as_f64() == g.as_f64(),
                // `seed: "7"` and `seed: 7` both name the number 7.
                (Value::String(w), Value::Number(g)) => *w == g.to_string(),
                (Value::Number(w), Value::String(g)) => w.to_string() == *g,
                _ => want == got,
            },
            AttributeExpectation::Within { min, max } => {
                got.as_f64().is_some_and(|v| min.is_none_or(|min| v >= min) && max.is_none_or(|max| v <= max))
            }
        }
    }
}

impl fmt::Display for AttributeExpectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttributeExpectation::Equals(v) => write!(f, "{v}"),
            AttributeExpectation::Within { min, max } => match (min, max) {
                (Some(min), Some(max)) => write!(f, "{min}..{max}"),
                (Some(min), None) => write!(f, ">={min}"),
                (None, Some(max)) => write!(f, "<={max}"),
                (None, None) => write!(f, "any number"),
            },
        }
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.max {
            Some(max) if max == self.min => write!(f, "exactly {max}"),
            Some(max) => write!(f, "{}..{max}", self.min),
            None => write!(f, "at least {}", self.min),
        }
    }
}

/// Most bytes an expectation file may have; one is a few hundred bytes.
pub const MAX_EXPECT_BYTES: u64 = 1 << 20;

/// Reads and checks an expectation file; problems (exit 2) say file:line:column.
pub fn load(path: &Path) -> Result<Expectations, Problem> {
    let file = crate::spec::shorten(&path.display().to_string(), 120);
    let source = read_text(path, MAX_EXPECT_BYTES, "give the path of a YAML expectation file (see docs/telemetry.md)")?;
    parse(&file, &source)
}

/// Parses an expectation file's text (`file` names it in errors).
pub fn parse(file: &str, source: &str) -> Result<Expectations, Problem> {
    crate::locate::check_costs(source).map_err(|e| e.in_file(file))?;
    let mut expectations: Expectations = serde_yaml::from_str(source).map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        let message = e.to_string();
        let problem = message.split(" at line ").next().unwrap_or(&message);
        Problem::located(
            file,
            line,
            column,
            crate::spec::shorten(problem, 200),
            "write `spans:` (name, parent, attributes, status, count) and `order:` (before, after) as in docs/telemetry.md",
        )
    })?;
    expectations.file = file.into();
    expectations.source = source.into();
    if expectations.spans.is_empty() && expectations.order.is_empty() {
        return Err(Problem::located(
            file,
            0,
            0,
            "the file expects nothing (no `spans:` and no `order:` entries)",
            "list the spans the run must have recorded under `spans:`",
        ));
    }
    for (i, span) in expectations.spans.iter().enumerate() {
        if span.count.max.is_some_and(|max| max < span.count.min) {
            let (line, column) = locate(source, &[Seg::Key("spans"), Seg::Index(i), Seg::Key("count")]);
            return Err(Problem::located(
                file,
                line,
                column,
                format!("count: max {} is below min {}", span.count.max.unwrap_or(0), span.count.min),
                "give min <= max, or a single number for an exact count",
            ));
        }
    }
    Ok(expectations)
}

impl Expectations {
    /// One line per expectation that does not hold (empty: all hold), each starting with
    /// the expectation's file:line:column.
    pub fn check(&self, spans: &[SpanRecord]) -> Vec<String> {
        let mut failures = Vec::new();
        for (i, expectation) in self.spans.iter().enumerate() {
            let selector = expectation.selector();
            let found = spans.iter().filter(|s| selector.matches(s)).count() as u64;
            let count = expectation.count;
            if found >= count.min && count.max.is_none_or(|max| found <= max) {
                continue;
            }
            let named = spans.iter().filter(|s| s.name == selector.name).count();
            let near = if found == 0 && named > 0 {
                format!(" ({named} spans named '{}' differ in parent, status or attributes)", selector.name)
            } else {
                String::new()
            };
            failures.push(format!(
                "{}: expected {count} {selector}, found {found}{near}",
                self.position(&[Seg::Key("spans"), Seg::Index(i)])
            ));
        }
        for (i, order) in self.order.iter().enumerate() {
            let at = self.position(&[Seg::Key("order"), Seg::Index(i)]);
            let before: Vec<&SpanRecord> = spans.iter().filter(|s| order.before.matches(s)).collect();
            let after: Vec<&SpanRecord> = spans.iter().filter(|s| order.after.matches(s)).collect();
            if before.is_empty() || after.is_empty() {
                let missing = if before.is_empty() { &order.before } else { &order.after };
                failures.push(format!("{at}: order: no {missing} was recorded"));
                continue;
            }
            let last_end = before.iter().max_by_key(|s| s.end_unix_ns).expect("not empty");
            let first_start = after.iter().min_by_key(|s| s.start_unix_ns).expect("not empty");
            if last_end.end_unix_ns > first_start.start_unix_ns {
                failures.push(format!(
                    "{at}: order: {} (id {}) ends {:.3} ms after {} (id {}) starts",
                    order.before,
                    last_end.id,
                    (last_end.end_unix_ns - first_start.start_unix_ns) as f64 / 1e6,
                    order.after,
                    first_start.id
                ));
            }
        }
        failures
    }

    fn position(&self, path: &[Seg]) -> String {
        let (line, column) = locate(&self.source, path);
        format!("{}:{line}:{column}", self.file)
    }
}

/// The spans of a `spans.jsonl` text; a bad line is a problem at `file:line:column`.
pub fn parse_spans(file: &str, text: &str) -> Result<Vec<SpanRecord>, Problem> {
    let mut spans = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let span: SpanRecord = serde_json::from_str(line).map_err(|e| {
            let problem = e.to_string();
            let problem = problem.split(" at line ").next().unwrap_or(&problem);
            Problem::located(
                file,
                i + 1,
                e.column(),
                format!("not a span record: {}", crate::spec::shorten(problem, 160)),
                "give a run directory chaos-ebpf wrote (`run` or `inject` with --run-dir); do not edit spans.jsonl by hand",
            )
        })?;
        spans.push(span);
    }
    Ok(spans)
}

/// A regular file's text, read without blocking (a FIFO without a writer cannot hang the
/// open; pipes, devices and directories are refused) and to at most `limit` bytes.
pub fn read_text(path: &Path, limit: u64, fix: &str) -> Result<String, Problem> {
    let file = crate::spec::shorten(&path.display().to_string(), 120);
    let problem = |what: String| Problem::located(&file, 0, 0, what, fix);
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| problem(format!("cannot open it: {e}")))?;
    let kind = opened.metadata().map_err(|e| problem(format!("cannot stat it: {e}")))?.file_type();
    if kind.is_dir() || kind.is_fifo() || kind.is_char_device() || kind.is_block_device() || kind.is_socket() {
        return Err(problem("it is not a regular file".into()));
    }
    let mut bytes = Vec::new();
    opened.take(limit + 1).read_to_end(&mut bytes).map_err(|e| problem(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(problem(format!("it is larger than {limit} bytes")));
    }
    String::from_utf8(bytes)
        .map_err(|e| problem(format!("it is not UTF-8 (invalid byte at {})", e.utf8_error().valid_up_to())))
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Range {
            #[serde(default)]
            min: u64,
            #[serde(default)]
            max: Option<u64>,
        }
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number (an exact count) or { min: N, max: N }")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Count, E> {
                Ok(Count { min: n, max: Some(n) })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Count, A::Error> {
                let range = Range::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Count { min: range.min, max: range.max })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl<'de> Deserialize<'de> for AttributeExpectation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Range {
            min: Option<f64>,
            max: Option<f64>,
        }
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = AttributeExpectation;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean (equal), or { min: N, max: N } (a number within)")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(AttributeExpectation::Equals(Value::Bool(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(AttributeExpectation::Equals(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(AttributeExpectation::Equals(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(AttributeExpectation::Equals(v.into()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(AttributeExpectation::Equals(v.into()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let range = Range::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(AttributeExpectation::Within { min: range.min, max: range.max })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `attributes:` as a mapping, kept in the file's order (for the failure lines).
fn attribute_map<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<(String, AttributeExpectation)>, D::Error> {
    struct Visitor;
    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Vec<(String, AttributeExpectation)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping of attribute names to expected values")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Visitor)
}

/// A selector in `order:`: a name alone, or a mapping like a `spans:` entry without count.
impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            name: String,
            #[serde(default)]
            parent: Option<String>,
            #[serde(default, deserialize_with = "attribute_map")]
            attributes: Vec<(String, AttributeExpectation)>,
            #[serde(default)]
            status: Option<Status>,
        }
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Selector;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a span name, or { name, parent, attributes, status }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Selector, E> {
                Ok(Selector { name: v.into(), ..Selector::default() })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Selector, A::Error> {
                let Full { name, parent, attributes, status } =
                    Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Selector { name, parent, attributes, status })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(
        id: u64,
        name: &str,
        parent: Option<(u64, &str)>,
        start: u64,
        end: u64,
        status: Status,
        attrs: Value,
    ) -> SpanRecord {
        SpanRecord {
            name: name.into(),
            id,
            parent_id: parent.map(|p| p.0),
            parent: parent.map(|p| p.1.into()),
            start_unix_ns: start,
            end_unix_ns: end,
            status,
            status_message: None,
            attributes: attrs.as_object().cloned().unwrap_or_default(),
        }
    }

    /// A run as the engine records it: run > step > inject, a revert per rule, the run's revert.
    fn run_spans() -> Vec<SpanRecord> {
        use serde_json::json;
        vec![
            span(
                3,
                "inject",
                Some((2, "step")),
                20,
                50,
                Status::Ok,
                json!({"fault": "loss 50% on netns:a", "seed": 7, "dropped": 12}),
            ),
            span(
                4,
                "revert",
                Some((2, "step")),
                51,
                60,
                Status::Ok,
                json!({"fault": "loss 50% on netns:a", "rule_id": 1}),
            ),
            span(2, "step", Some((1, "run")), 10, 61, Status::Error, json!({"step": "loss", "ended": "interrupted"})),
            span(5, "revert", Some((1, "run")), 62, 80, Status::Ok, json!({"clean": true})),
            span(1, "run", None, 0, 81, Status::Error, json!({"scenario": "inject-loss", "seed": 7})),
        ]
    }

    fn check(yaml: &str) -> Vec<String> {
        parse("expect.yaml", yaml).expect("a good file").check(&run_spans())
    }

    #[test]
    fn a_run_meets_what_it_did() {
        let yaml = "spans:
  - { name: run, count: 1, status: error, attributes: { scenario: inject-loss, seed: 7 } }
  - { name: step, parent: run, attributes: { ended: interrupted } }
  - { name: inject, parent: step, status: ok, attributes: { dropped: { min: 1 }, seed: \"7\" } }
  - { name: revert, parent: step, attributes: { fault: loss 50% on netns:a } }
  - { name: revert, count: { min: 2, max: 2 } }
  - { name: cleanup, count: 0 }
order:
  - { before: inject, after: { name: revert, parent: step } }
  - { before: step, after: { name: revert, parent: run } }
";
        assert_eq!(check(yaml), Vec::<String>::new());
    }

    #[test]
    fn a_missing_span_fails_naming_it_and_its_line() {
        let failures = check("spans:\n  - name: run\n  - name: abort\n    parent: run\n");
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].starts_with("expect.yaml:3:"), "{failures:?}");
        assert!(failures[0].contains("expected at least 1 span 'abort' under 'run', found 0"), "{failures:?}");
    }

    #[test]
    fn parent_status_attributes_and_counts_each_can_fail() {
        for (yaml, says) in [
            ("spans: [{ name: inject, parent: run }]", "under 'run', found 0 (1 spans named 'inject' differ"),
            ("spans: [{ name: inject, status: error }]", "with status error, found 0"),
            ("spans: [{ name: inject, attributes: { dropped: { min: 13 } } }]", "dropped=>=13, found 0"),
            ("spans: [{ name: inject, attributes: { fault: loss } }]", "fault=\"loss\", found 0"),
            ("spans: [{ name: inject, attributes: { missing: 1 } }]", "found 0"),
            ("spans: [{ name: revert, count: 1 }]", "expected exactly 1 span 'revert', found 2"),
            ("spans: [{ name: revert, count: { max: 1 } }]", "expected 0..1 span 'revert', found 2"),
        ] {
            let failures = check(yaml);
            assert_eq!(failures.len(), 1, "{yaml}: {failures:?}");
            assert!(failures[0].contains(says), "{yaml}: {failures:?}");
        }
    }

    #[test]
    fn order_fails_when_reversed_or_missing() {
        let failures = check("order:\n  - { before: revert, after: inject }\n  - { before: inject, after: abort }\n");
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].starts_with("expect.yaml:2:") && failures[0].contains("ends"), "{failures:?}");
        assert!(failures[1].contains("no span 'abort' was recorded"), "{failures:?}");
    }

    #[test]
    fn bad_files_say_where_and_how_to_fix() {
        for (yaml, line, says) in [
            ("spans:\n  - name: run\n    colour: red\n", 3, "unknown field `colour`"),
            ("spans:\n  - name: run\n    count: -1\n", 3, "min: N"),
            ("spans:\n  - name: run\n    status: fine\n", 3, "unknown variant `fine`"),
            ("spans:\n  - name: run\n    count: { min: 3, max: 1 }\n", 3, "max 1 is below min 3"),
            ("order:\n  - { before: run }\n", 2, "missing field `after`"),
            ("spans: []\n", 0, "expects nothing"),
            ("spans: [\n", 2, "YAML syntax"),
        ] {
            let e = parse("e.yaml", yaml).expect_err(yaml);
            assert_eq!(e.at.line, line, "{yaml}: {e}");
            assert!(e.problem.contains(says), "{yaml}: {e}");
            assert!(e.to_string().starts_with("e.yaml:"), "{e}");
        }
    }

    #[test]
    fn span_lines_round_trip_and_bad_lines_are_located() {
        let text: String = run_spans().iter().map(|s| serde_json::to_string(s).unwrap() + "\n").collect();
        assert_eq!(parse_spans("spans.jsonl", &text).unwrap(), run_spans());
        let e = parse_spans("spans.jsonl", &format!("{text}{{\"name\": 3}}\n")).unwrap_err();
        assert_eq!(e.at.line, 6, "{e}");
    }
}
