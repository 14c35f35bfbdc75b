//! The lab: the README's sample scenario runs on the embedded lab and leaves nothing.

use crate::support::*;

pub const TESTS: &[Test] = tests![
    lab_demo_scenario_runs_and_leaves_nothing,
];

/// The README's main job: the sample scenario on the embedded lab, as JSON.
fn lab_demo_scenario_runs_and_leaves_nothing() {
    require_root();
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios/lab-demo.yaml");
    let (code, out, err) = chaos_run(&["run", scenario, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["seed"], 42);
    assert_eq!(report["clean"], true);
    let probe = |step: &str| {
        let s = report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == step)
            .unwrap_or_else(|| panic!("no step {step}"));
        let p = &s["probe"];
        (p["delivered"].as_f64().unwrap(), p["sent"].as_f64().unwrap().max(1.0))
    };
    let ratio = |step: &str| {
        let (delivered, sent) = probe(step);
        delivered / sent
    };
    assert!(ratio("baseline") > 0.97, "baseline {}", ratio("baseline"));
    // Loss 0.3 on the probe's requests: delivered ~ Binomial(sent, 0.7), held to 4 sigma
    // of the packets actually sent, plus 2 packets for the step's edges (a request in
    // flight when the step ends; one sent while the rule is being installed).
    let (delivered, sent) = probe("lossy-link");
    let sigma = (sent * 0.7 * 0.3).sqrt();
    println!(
        "lab demo lossy-link: delivered {delivered} of {sent} ({:.3} sigma from 0.7)",
        (delivered - 0.7 * sent) / sigma
    );
    assert!(
        (delivered - 0.7 * sent).abs() <= 4.0 * sigma + 2.0,
        "lossy-link delivered {delivered} of {sent}, expected {:.0} +- {:.0}",
        0.7 * sent,
        4.0 * sigma + 2.0
    );
    assert!(sent >= 400.0, "the probe sent only {sent} packets in 4 s at 200/s");
    // The probe counts from the moment the partition is in force; requests sent before
    // it may still wait in the server's socket then (its thread lags under emulation).
    let (delivered, sent) = probe("cut-off");
    assert!(
        delivered < 0.02 * sent + 2.0,
        "cut-off: {delivered} of {sent} requests arrived through the partition"
    );
    assert!(ratio("recovered") > 0.97, "recovered {}", ratio("recovered"));
    let namespaces = String::from_utf8_lossy(&sh("ip", &["netns", "list"]).stdout).into_owned();
    assert!(!namespaces.contains("chaos-lab-"), "lab namespaces left: {namespaces}");
    assert_nothing_left();
}
