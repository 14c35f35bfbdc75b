//! Privileged tests on the real kernel: real namespaces, veths, cgroups and traffic.
//! Run as root with `cargo xtask test` (one test at a time: they assert on machine-wide
//! BPF state); `cargo xtask vm-test` runs the same binary on Debian 6.1 and 6.12.
//!
//! # The harness, and how to add tests
//!
//! This binary has `harness = false` and runs on libtest-mimic, because libtest cannot
//! end a test as skipped at run time, and a test that needs what this kernel lacks (such
//! as sch_fq on the host) must not pass vacuously. The command line is libtest's:
//! filters (several allowed), `--exact`, `--list`, `--test-threads=1`, `--nocapture`.
//!
//! - A test is a plain `fn()` that panics on failure.
//! - `support::skip("reason")` ends it as skipped. The run prints each skip at the end
//!   as `SKIP|<test>|<reason>` and a `KERNEL-TESTS|...` count line, which `cargo xtask
//!   test` and `vm-test` collect: a skip is listed with its reason, never counted as a
//!   pass.
//! - Each file `tests/kernel/<concern>.rs` starts with `use crate::support::*;` and
//!   lists its tests: `pub const TESTS: &[Test] = tests![first_test, second_test];`
//! - main.rs is this runner and nothing else: it names each file once, one line in
//!   `test_modules!` below (`gso,`). Fixtures and helpers that several files use are in
//!   support.rs; a helper of one file's tests stays in that file.

#[macro_use]
mod support;

use std::{
    io::Write,
    panic::{catch_unwind, AssertUnwindSafe},
    process::ExitCode,
    sync::Mutex,
};

use libtest_mimic::{Arguments, Completion, Trial};
use support::{begin_test, Skipped, Test};

/// Declares the test files (`tests/kernel/<name>.rs`) and gathers their `TESTS`.
macro_rules! test_modules {
    ($($module:ident),* $(,)?) => {
        $(mod $module;)*

        fn all_tests() -> Vec<Test> {
            #[allow(unused_mut)] // while no file is listed
            let mut all = Vec::new();
            $(all.extend_from_slice($module::TESTS);)*
            all
        }
    };
}

test_modules! {
    // One line per file tests/kernel/<concern>.rs, e.g. `gso,`.
    loss,
    partition,
    delay,
    rate,
    stacking,
    lifecycle,
    cleanup,
    bad_input,
    lab,
    timeline,
    hypothesis,
    gso,
    parsing,
    ownership,
    tcp_delay,
    spans,
    metrics,
    reports,
    otlp,
    lab_cluster,
    lab_control,
    lab_scenarios,
    tls_refuse,
    agent,
    stack,
    hyper_lab,
    docker,
    dashboard,
    kubernetes,
}

/// Skipped tests of this run: (name, reason).
static SKIPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Options of the libtest command line that take a value (the rest of the positional
/// arguments are filters).
const OPTIONS_WITH_VALUE: &[&str] = &["--test-threads", "--logfile", "--skip", "--color", "--format", "-Z"];

/// libtest takes several filters (a test runs if any matches); libtest-mimic takes one,
/// so the filters are split off here and applied before it runs.
fn split_filters(args: impl Iterator<Item = String>) -> (Vec<String>, Vec<String>) {
    let (mut options, mut filters) = (Vec::new(), Vec::new());
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        if OPTIONS_WITH_VALUE.contains(&arg.as_str()) {
            options.push(arg);
            options.extend(args.next());
        } else if arg.starts_with('-') {
            options.push(arg);
        } else {
            filters.push(arg);
        }
    }
    (options, filters)
}

/// Runs one test: a `Skipped` panic ends it as ignored with its reason (and is recorded
/// for the summary); any other panic goes on to libtest-mimic, which reports a failure.
fn run_test(name: &'static str, test: fn()) -> Result<Completion, libtest_mimic::Failed> {
    begin_test();
    match catch_unwind(AssertUnwindSafe(test)) {
        Ok(()) => Ok(Completion::Completed),
        Err(payload) => match payload.downcast::<Skipped>() {
            Ok(skipped) => {
                SKIPPED.lock().unwrap_or_else(|e| e.into_inner()).push((name.to_owned(), skipped.0.clone()));
                Ok(Completion::ignored_with(skipped.0))
            }
            Err(other) => std::panic::resume_unwind(other),
        },
    }
}

fn main() -> ExitCode {
    let mut argv = std::env::args();
    let program = argv.next().unwrap_or_default();
    let (options, filters) = split_filters(argv);
    let args = Arguments::from_iter(std::iter::once(program).chain(options));
    let tests = all_tests();
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in &tests {
        assert!(seen.insert(*name), "two kernel tests are named {name}: rename one");
    }
    // A skip is a panic by design: keep the default "panicked at" message for failures only.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<Skipped>().is_none() {
            default_hook(info);
        }
    }));
    let selected = |name: &str| {
        filters.is_empty() || filters.iter().any(|f| if args.exact { name == f } else { name.contains(f.as_str()) })
    };
    let trials: Vec<Trial> = tests
        .into_iter()
        .filter(|(name, _)| selected(name))
        .map(|(name, test)| Trial::ignorable_test(name, move || run_test(name, test)))
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    support::end_tests();
    if !args.list {
        let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "KERNEL-TESTS|kernel={}|passed={}|failed={}|skipped={}",
            kernel.trim(),
            conclusion.num_passed,
            conclusion.num_failed,
            skipped.len()
        );
        for (name, reason) in skipped.iter() {
            let _ = writeln!(out, "SKIP|{name}|{reason}");
        }
    }
    conclusion.exit_code()
}
