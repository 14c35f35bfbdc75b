//! `chaos-lab-node verify`: reads back every write a journal says etcd acknowledged.

use std::{
    collections::{BTreeMap, HashMap},
    process::ExitCode,
};

use serde::{Deserialize, Serialize};

use super::{args::VerifyArgs, bounded, etcd::Etcd};

/// One line of the journal: a write etcd acknowledged.
#[derive(Debug, Serialize, Deserialize)]
pub struct Acked {
    pub key: String,
    pub value: String,
    /// The revision of etcd's answer to the put.
    pub revision: i64,
    pub latency_ms: f64,
    pub acked_unix_ms: u64,
}

/// What the check found: keys missing, and keys that hold another value.
#[derive(Debug, Default)]
pub struct Findings {
    pub checked: usize,
    pub missing: Vec<Acked>,
    pub mismatched: Vec<(Acked, String)>,
}

/// Compares the journal with what etcd holds (`stored`: key to value).
pub fn compare(journal: Vec<Acked>, stored: &HashMap<String, String>) -> Findings {
    let mut findings = Findings { checked: journal.len(), ..Findings::default() };
    for acked in journal {
        match stored.get(&acked.key) {
            None => findings.missing.push(acked),
            Some(value) if *value != acked.value => findings.mismatched.push((acked, value.clone())),
            Some(_) => {}
        }
    }
    findings
}

/// The journal's records; a torn last line (the node killed mid-write) is ignored, any
/// other unreadable line is an error naming it.
pub fn read_journal(text: &str) -> Result<Vec<Acked>, String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut records = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Acked>(line) {
            Ok(record) => records.push(record),
            Err(_) if index + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => return Err(format!("line {}: {e}: {}", index + 1, bounded(line, 120))),
        }
    }
    Ok(records)
}

pub async fn run(args: VerifyArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.journal) {
        Ok(text) => text,
        Err(e) => {
            eprintln!(
                "chaos-lab-node verify: cannot read --journal {}: {e}; give the node's journal file",
                args.journal.display()
            );
            return ExitCode::from(2);
        }
    };
    let journal = match read_journal(&text) {
        Ok(journal) => journal,
        Err(problem) => {
            eprintln!(
                "chaos-lab-node verify: --journal {} is not a chaos-lab-node journal: {problem}",
                args.journal.display()
            );
            return ExitCode::from(2);
        }
    };
    let etcd = match Etcd::new(&args.etcd.etcd, &args.etcd.tls(), args.etcd.call_timeout) {
        Ok(etcd) => etcd,
        Err(problem) => {
            eprintln!("chaos-lab-node verify: {}", bounded(&problem, 400));
            return ExitCode::from(2);
        }
    };
    // One range per key directory (PREFIX/data/NAME/) instead of one call per key.
    let mut directories: BTreeMap<&str, ()> = BTreeMap::new();
    for acked in &journal {
        let directory = acked.key.rfind('/').map_or(acked.key.as_str(), |at| &acked.key[..=at]);
        directories.insert(directory, ());
    }
    let mut stored = HashMap::new();
    for directory in directories.keys() {
        let end = super::etcd::prefix_end(directory.as_bytes());
        match etcd.range(directory.as_bytes(), Some(&end)).await {
            Ok(kvs) => stored.extend(kvs.into_iter().map(|kv| {
                (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned())
            })),
            Err(e) => {
                eprintln!("chaos-lab-node verify: cannot read {directory} back: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let findings = compare(journal, &stored);
    const SHOWN: usize = 20;
    for acked in findings.missing.iter().take(SHOWN) {
        println!("missing: {} (acknowledged at revision {})", acked.key, acked.revision);
    }
    for (acked, found) in findings.mismatched.iter().take(SHOWN) {
        println!(
            "mismatched: {} (acknowledged {:?} at revision {}, etcd holds {:?})",
            acked.key,
            bounded(&acked.value, 80),
            acked.revision,
            bounded(found, 80)
        );
    }
    let more = findings.missing.len().saturating_sub(SHOWN) + findings.mismatched.len().saturating_sub(SHOWN);
    if more > 0 {
        println!("... and {more} more");
    }
    let connections = |transport: &str| etcd.transport.connections.with_label_values(&[transport]).get();
    println!(
        "transport: {} connections over h2, {} over http/1.1, {} fallbacks from h2 to http/1.1",
        connections("h2"),
        connections("http/1.1"),
        etcd.transport.fallbacks.get()
    );
    println!(
        "verify: {} acknowledged writes, {} readable, {} missing, {} mismatched",
        findings.checked,
        findings.checked - findings.missing.len() - findings.mismatched.len(),
        findings.missing.len(),
        findings.mismatched.len()
    );
    if findings.missing.is_empty() && findings.mismatched.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(key: &str, value: &str) -> Acked {
        Acked { key: key.into(), value: value.into(), revision: 7, latency_ms: 1.5, acked_unix_ms: 1 }
    }

    #[test]
    fn journal_lines_round_trip_and_a_torn_tail_is_ignored() {
        let line = serde_json::to_string(&acked("/p/data/n1/1-1", "v")).expect("json");
        let records = read_journal(&format!("{line}\n{line}\n{{\"key\":\"/p/da")).expect("torn tail ignored");
        assert_eq!(records.len(), 2);
        let problem = read_journal(&format!("{line}\nnot json\n{line}\n")).expect_err("bad middle line");
        assert!(problem.starts_with("line 2:"), "{problem}");
    }

    #[test]
    fn compare_finds_missing_and_mismatched_keys() {
        let stored: HashMap<String, String> =
            [("/a".to_owned(), "1".to_owned()), ("/b".to_owned(), "other".to_owned())].into();
        let findings = compare(vec![acked("/a", "1"), acked("/b", "2"), acked("/c", "3")], &stored);
        assert_eq!(findings.checked, 3);
        assert_eq!(findings.missing.iter().map(|a| a.key.as_str()).collect::<Vec<_>>(), ["/c"]);
        assert_eq!(findings.mismatched.len(), 1);
        assert_eq!(findings.mismatched[0].1, "other");
    }
}
