//! What the chart tests (helm.rs, lab_chart.rs) share: reading what `helm template`
//! renders, and reporting a skip.

use libtest_mimic::{Completion, Failed};
use serde::Deserialize;
use serde_yaml::Value;

/// The YAML documents of a rendering, comment-only documents left out.
pub fn documents(rendered: &str) -> Result<Vec<Value>, Failed> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(rendered) {
        let value = Value::deserialize(doc).map_err(|e| format!("the rendered YAML does not parse: {e}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect()
}

/// Ignored with its reason (as the kernel tests' skips): counted as ignored, never as
/// passed.
pub fn skip(name: &str, why: &str) -> Completion {
    println!("SKIP|{name}|{why}");
    Completion::ignored_with(why)
}
