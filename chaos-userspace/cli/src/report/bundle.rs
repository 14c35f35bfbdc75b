//! RUN_DIR.tar.gz next to the run directory: the whole directory as one file to attach
//! to a ticket or a CI run. Entries are in name order under `<dir name>/`, owned by 0:0
//! with mode 0644 (0755 for directories); their mtimes are the files' own, or under
//! `--freeze-clock` the frozen epoch plus the file's offset from the run's start.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use anyhow::{Context, Result};
use flate2::{write::GzEncoder, Compression, GzBuilder};

use super::Clock;

/// `<run dir>.tar.gz`, beside it.
pub fn path_of(run_dir: &Path) -> PathBuf {
    let mut name = run_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "run".into());
    name.push(".tar.gz");
    run_dir.with_file_name(name)
}

/// Every file under `dir`, relative to it, in name order (directories before their
/// contents).
fn entries(dir: &Path, relative: &Path, out: &mut Vec<(PathBuf, bool)>) -> Result<()> {
    let mut names: Vec<_> =
        std::fs::read_dir(dir.join(relative))?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = relative.join(&name);
        let meta = std::fs::symlink_metadata(dir.join(&path))?;
        if meta.is_dir() {
            out.push((path.clone(), true));
            entries(dir, &path, out)?;
        } else if meta.is_file() {
            out.push((path, false));
        }
    }
    Ok(())
}

pub fn write(run_dir: &Path, bundle: &Path, clock: Clock) -> Result<()> {
    let top = PathBuf::from(run_dir.file_name().context("the run directory has no name")?);
    let mut files = Vec::new();
    entries(run_dir, Path::new(""), &mut files)?;
    let partial = bundle.with_extension("gz.partial");
    let file = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    // No name and mtime 0 in the gzip header: the same files give the same bytes.
    let gz: GzEncoder<File> = GzBuilder::new().mtime(0).write(file, Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mtime = |path: &Path| -> Result<u64> {
        let modified = std::fs::metadata(path)?.modified()?;
        let unix_ms = modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Ok(clock.ms(unix_ms) / 1000)
    };
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    header.set_mtime(mtime(run_dir)?);
    tar.append_data(&mut header, &top, std::io::empty())?;
    for (path, is_dir) in &files {
        let full = run_dir.join(path);
        let mut header = tar::Header::new_gnu();
        header.set_mtime(mtime(&full)?);
        if *is_dir {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, top.join(path), std::io::empty())?;
        } else {
            let data = std::fs::read(&full).with_context(|| format!("reading {}", full.display()))?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            tar.append_data(&mut header, top.join(path), data.as_slice())?;
        }
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    gz.finish()?.sync_all()?;
    std::fs::rename(&partial, bundle)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{fixtures, FROZEN_EPOCH_MS};
    use std::io::Read;

    fn list(bundle: &Path) -> Vec<(String, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(File::open(bundle).unwrap()));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mtime = e.header().mtime().unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, mtime, data)
            })
            .collect()
    }

    /// Every file of the directory is in the bundle with its content, in name order;
    /// with a frozen clock the mtimes are from 2000 and two bundles of the same files are
    /// the same bytes.
    #[test]
    fn the_bundle_holds_every_file() {
        let dir = fixtures::TempDir::new("bundle");
        let run_dir = dir.path().join("20261127T154659Z-4242");
        std::fs::create_dir(&run_dir).unwrap();
        let report = fixtures::rich_report();
        std::fs::write(run_dir.join("spans.jsonl"), fixtures::spans_jsonl(&report)).unwrap();
        std::fs::write(run_dir.join("report.json"), "{}\n").unwrap();
        let warnings = crate::report::write_all(&run_dir, &fixtures::plan(), &report, &Default::default());
        assert!(warnings.is_empty(), "{warnings:?}");
        let bundle = path_of(&run_dir);
        assert_eq!(bundle, dir.path().join("20261127T154659Z-4242.tar.gz"));
        let listed = list(&bundle);
        let names: Vec<&str> = listed.iter().map(|(n, _, _)| n.as_str()).collect();
        let mut on_disk: Vec<String> = std::fs::read_dir(&run_dir)
            .unwrap()
            .map(|e| format!("20261127T154659Z-4242/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        on_disk.sort();
        assert_eq!(names[0], "20261127T154659Z-4242");
        assert_eq!(names[1..], on_disk.iter().map(String::as_str).collect::<Vec<_>>()[..]);
        for file in [
            "spans.jsonl",
            "report.json",
            "report.md",
            "junit.xml",
            "report.html",
            "cleanup.json",
            "topology.json",
            "plan.json",
            "digest.txt",
            "meta.json",
        ] {
            let name = format!("20261127T154659Z-4242/{file}");
            let (_, _, data) =
                listed.iter().find(|(n, _, _)| *n == name).unwrap_or_else(|| panic!("{name} in {names:?}"));
            assert_eq!(data, &std::fs::read(run_dir.join(file)).unwrap(), "{file}");
        }
        // Not frozen: the files' own mtimes (now).
        let now = std::time::SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(listed.iter().all(|(_, m, _)| now.abs_diff(*m) < 3600), "{listed:?}");

        let frozen = Clock::new(report.started_unix_ms, true);
        let (first, second) = (dir.path().join("a.tar.gz"), dir.path().join("b.tar.gz"));
        write(&run_dir, &first, frozen).unwrap();
        write(&run_dir, &second, frozen).unwrap();
        assert_eq!(std::fs::read(&first).unwrap(), std::fs::read(&second).unwrap());
        for (name, mtime, _) in list(&first) {
            // Whatever the files' offset from the fixture's start, the stamp is counted
            // from 2000.
            assert!(mtime >= FROZEN_EPOCH_MS / 1000 && mtime < now - 3600, "{name}: {mtime}");
        }
    }
}
