//! `chaos-ebpf verify RUN_DIR --expect FILE`: the spans a run recorded checked against
//! expectations (chaos_model::expect). Exit 0 when all hold, 1 with one line per failed
//! expectation, 2 when FILE or RUN_DIR cannot be read.

use std::path::Path;

use anyhow::Result;
use chaos_model::{expect, spec, Problem};

use crate::{clip_lines, exit, output};

/// Most bytes of spans.jsonl read: a run records a few hundred bytes per span.
const MAX_SPANS_BYTES: u64 = 64 << 20;

pub fn run(run_dir: &Path, expect_file: &Path) -> Result<i32> {
    let expectations = expect::load(expect_file)?;
    let fix = "give a run directory chaos-ebpf wrote (`run` or `inject`, see --run-dir)";
    if !run_dir.is_dir() {
        let shown = spec::shorten(&run_dir.display().to_string(), 120);
        return Err(Problem::located(&shown, 0, 0, "not a directory", fix).into());
    }
    let path = run_dir.join("spans.jsonl");
    let text = expect::read_text(&path, MAX_SPANS_BYTES, fix)?;
    let spans = expect::parse_spans(&spec::shorten(&path.display().to_string(), 120), &text)?;
    let failures = expectations.check(&spans);
    let total = expectations.spans.len() + expectations.order.len();
    if failures.is_empty() {
        output::out(&format!("{}: all {total} expectations hold ({} spans)", run_dir.display(), spans.len()));
        return Ok(0);
    }
    for failure in &failures {
        output::out(&clip_lines(failure));
    }
    output::out(&format!("{} of {total} expectations failed", failures.len()));
    Ok(exit::FAILED)
}
