//! report.html in a real browser: Debian's headless Chromium loads the page of a rich
//! run (two overlapping steps, a duty cycle of three windows, two probes checked in every
//! phase, an abort) from a file, with every network lookup failing, and dumps the DOM
//! after load. The test checks that the page loaded without console errors or failed
//! requests, and that the DOM holds the charts: an <svg> each, a polyline per series with
//! one point per sample, and a shaded rectangle per fault window.
//!
//! Needs no root. Without a chromium binary the test ends as skipped with the reason
//! (libtest-mimic), never as passed: `apt-get install chromium` (scripts/setup.sh).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

mod common;
use common::TempDir;
#[path = "common/chromium.rs"]
mod chromium;
use chromium::headless_chromium;

/// The renderer and its fixtures, compiled into this test from the CLI's sources (the
/// CLI is a binary crate: there is no library to link).
/// html.rs finds these in its parent, here the crate root.
#[allow(dead_code)]
#[path = "../src/report/summary.rs"]
mod summary;
use summary::{outcome, utc, verdict_name};
// Its unit tests are compiled here but not run (no libtest harness).
#[allow(dead_code)]
#[path = "../src/report/fixtures.rs"]
mod fixtures;
#[allow(unused_imports)]
#[path = "../src/report/html.rs"]
mod html;

/// A browser gets this long; a page of four charts loads in about a second.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(20);

fn main() {
    let args = Arguments::from_args();
    let tests = vec![Trial::ignorable_test("report_html_loads_with_its_charts_in_chromium", loads_in_chromium)];
    libtest_mimic::run(&args, tests).exit();
}

/// Debian's chromium, or why there is none.
fn chromium() -> Result<PathBuf, String> {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).is_file() {
            return Ok(candidate.into());
        }
    }
    Err("no chromium binary (/usr/bin/chromium): apt-get install chromium (scripts/setup.sh installs it)".into())
}

/// Runs chromium with `args` on `url`, bounded by [`BROWSER_TIMEOUT`]: (stdout, stderr).
fn run_browser(browser: &Path, profile: &Path, args: &[&str], url: &str) -> Result<(String, String), Failed> {
    let out_path = profile.with_extension("stdout");
    let err_path = profile.with_extension("stderr");
    let mut child = headless_chromium(browser, profile)
        .map_err(|e| format!("chromium's profile {}: {e}", profile.display()))?
        .args([
            // Every host name fails to resolve: the page must need none.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).map_err(|e| format!("{e}"))?)
        .stderr(std::fs::File::create(&err_path).map_err(|e| format!("{e}"))?)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", browser.display()))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("{e}"))? {
            break status;
        }
        if started.elapsed() > BROWSER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("chromium did not finish within {BROWSER_TIMEOUT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if !status.success() {
        return Err(format!("chromium exited with {status}: {}", tail(&stderr)).into());
    }
    Ok((stdout, stderr))
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// The value of `attribute` in the tag that starts `tag`.
fn attribute<'a>(tag: &'a str, attribute: &str) -> Option<&'a str> {
    let end = tag.find('>').unwrap_or(tag.len());
    let tag = &tag[..end];
    let start = tag.find(&format!(" {attribute}=\""))? + attribute.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// Each `<tag` in `html`, from its start to the end of `html`.
fn tags<'a>(html: &'a str, tag: &str) -> std::vec::IntoIter<&'a str> {
    let needle = format!("<{tag}");
    html.match_indices(&needle).map(|(i, _)| &html[i..]).collect::<Vec<_>>().into_iter()
}

/// With CHAOS_REPORT_HTML_KEEP=DIR, a copy of `file` (the page, the DOM after load, the
/// screenshot) goes to DIR, for a person to look at.
fn keep(file: &Path) {
    if let (Ok(dir), Some(name)) = (std::env::var("CHAOS_REPORT_HTML_KEEP"), file.file_name()) {
        let _ = std::fs::copy(file, Path::new(&dir).join(name));
    }
}

fn loads_in_chromium() -> Result<Completion, Failed> {
    let browser = match chromium() {
        Ok(browser) => browser,
        Err(why) => {
            // Ignored with its reason (as the kernel tests' skips): counted as ignored,
            // never as passed.
            println!("SKIP|report_html_loads_with_its_charts_in_chromium|{why}");
            return Ok(Completion::ignored_with(why));
        }
    };
    let dir = TempDir::new("report-html").map_err(|e| format!("{e}"))?;
    let report = fixtures::rich_report();
    let page = html::render(&report).map_err(|e| format!("rendering: {e:#}"))?;
    let file = dir.0.join("report.html");
    std::fs::write(&file, &page).map_err(|e| format!("{e}"))?;
    let url = format!("file://{}", file.display());

    keep(&file);
    let (dom, log) = run_browser(&browser, &dir.0.join("profile"), &["--dump-dom"], &url)?;
    std::fs::write(dir.0.join("dom.html"), &dom).map_err(|e| format!("{e}"))?;
    keep(&dir.0.join("dom.html"));
    // Console messages (and failed loads) are logged as CONSOLE lines or "Failed to load".
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Failed to load") || l.contains("Uncaught"))
        .collect();
    if !problems.is_empty() {
        return Err(format!("the page logged problems:\n{}", problems.join("\n")).into());
    }
    if !dom.contains("</html>") || !dom.contains("<h1>chaos-ebpf run: rich</h1>") {
        return Err(format!("no page in chromium's DOM dump: {}", tail(&dom)).into());
    }

    // The charts as the browser holds them after load.
    let figures: Vec<&str> =
        dom.split("<figure class=\"chart\"").skip(1).map(|f| &f[..f.find("</figure>").unwrap_or(f.len())]).collect();
    let kinds: Vec<&str> = figures.iter().filter_map(|f| attribute(f, "data-chart")).collect();
    if kinds != ["probe-latency", "probe-success", "rule", "rule"] {
        return Err(format!("charts in the DOM: {kinds:?}, expected probe latency, probe success and 2 rules").into());
    }
    let hypothesis = report.hypothesis.as_ref().expect("the fixture has probes");
    for (figure, kind) in figures.iter().zip(&kinds) {
        if tags(figure, "svg").count() != 1 {
            return Err(format!("{kind}: expected one <svg> in its figure").into());
        }
        // One polyline per series, with one point per sample.
        let mut lengths: Vec<usize> = tags(figure, "polyline")
            .filter_map(|t| attribute(t, "points"))
            .map(|p| p.split_whitespace().count())
            .filter(|&n| n > 2) // legend strokes have 2 points
            .collect();
        lengths.sort();
        let mut expected: Vec<usize> = match *kind {
            "probe-latency" | "probe-success" => {
                ["api", "db"].iter().map(|p| hypothesis.samples.iter().filter(|s| s.probe == *p).count()).collect()
            }
            _ => Vec::new(),
        };
        if *kind == "rule" {
            let title = figure.split("rule ").nth(1).unwrap_or("");
            let rule_id: u32 = title.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let n = report.samples.iter().filter(|s| s.rule_id == rule_id).count();
            expected = vec![n, n];
        }
        expected.sort();
        if lengths != expected {
            return Err(
                format!("{kind}: polylines of {lengths:?} points, expected {expected:?} (one per series)").into()
            );
        }
        // Shaded windows: translucent rectangles, one per window (and one in the legend).
        let shaded = tags(figure, "rect")
            .filter(|t| attribute(t, "opacity").and_then(|o| o.parse::<f64>().ok()).is_some_and(|o| o > 0.0 && o < 0.5))
            .count();
        let windows: usize = match *kind {
            "rule" => {
                let step = if figure.contains("flaky-link: rule 1") { "flaky-link" } else { "slow-peer" };
                report.steps.iter().filter(|s| s.name == step).map(|s| s.windows.len()).sum()
            }
            _ => report.steps.iter().map(|s| s.windows.len()).sum(),
        };
        if shaded != windows + 1 {
            return Err(
                format!("{kind}: {shaded} shaded rectangles, expected {windows} windows and a legend entry").into()
            );
        }
    }
    // The latency chart marks each failed check with a red cross (two lines; one more
    // in the legend).
    let failed = hypothesis.samples.iter().filter(|s| !s.ok).count();
    let red_lines = tags(figures[0], "line").filter(|t| attribute(t, "stroke") == Some("#D62728")).count();
    if red_lines != 2 * (failed + 1) {
        return Err(format!(
            "probe latency: {red_lines} red lines, expected a cross for each of {failed} failed checks and the legend"
        )
        .into());
    }

    // A screenshot: the page renders to pixels (kept next to the page for a person).
    let shot = dir.0.join("report.png");
    run_browser(
        &browser,
        &dir.0.join("profile2"),
        &[&format!("--screenshot={}", shot.display()), "--window-size=1000,2400", "--hide-scrollbars"],
        &url,
    )?;
    let png = std::fs::read(&shot).map_err(|e| format!("no screenshot: {e}"))?;
    if png.len() < 10_000 || !png.starts_with(b"\x89PNG") {
        return Err(format!("the screenshot is not a rendered page ({} bytes)", png.len()).into());
    }
    keep(&shot);
    Ok(Completion::Completed)
}
