//! `cargo xtask vm-test`: the privileged kernel tests inside real Debian kernels under
//! qemu, for what this machine's own kernel cannot show (no sch_fq, no sch_netem) and
//! for the kernels users run (6.1 without TCX: the netlink path; 6.12 with TCX).
//!
//! - Kernels: the newest `linux-image-6.1.0-*-amd64` and `linux-image-6.12.*+deb12-amd64`
//!   in the apt index, fetched with `apt-get download` and unpacked with `dpkg -x` under
//!   target/vm (cached).
//! - Initramfs: a newc cpio written here (no cpio tool needed) holding busybox-static,
//!   ip, tc, ping and bpftool with the libraries `ldd` names, the needed modules and
//!   their dependencies (read from each module's .modinfo), and the test binaries at the
//!   absolute paths they were built with.
//! - qemu: `-accel tcg -cpu max` (KVM does not boot stock kernels on this machine kind;
//!   CHAOS_VM_ACCEL=kvm overrides), serial console read back line by line; the guest's
//!   /init prints the test run's exit code after a marker and powers off.
//!
//! Lines the tests print as `REPORT|...` are collected into target/vm/report-<kernel>.txt;
//! the count and `SKIP|` lines into a [`KernelRun`] per kernel, which also fails when a
//! module did not load (`VMTEST-MODULE-FAILED`): a test that needs it would otherwise
//! skip or fail for the wrong reason.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::KernelRun;

/// Modules the tests need (with their dependencies added automatically).
const MODULES: &[&str] = &["veth", "sch_fq", "sch_netem", "sch_ingress", "cls_bpf", "bridge", "macvlan"];
/// Host programs the tests call, beyond busybox.
const PROGRAMS: &[&str] = &["ip", "tc", "ping", "bpftool"];
/// Copied when the host has them: the TLS tests' server and clients (they skip without).
const OPTIONAL_PROGRAMS: &[&str] = &["openssl", "curl"];
/// Limit per kernel for the whole guest run under TCG.
const GUEST_TIMEOUT: Duration = Duration::from_secs(25 * 60);

struct Kernel {
    label: String,
    package: String,
}

fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Version key for sorting package names: the numbers in order.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

fn newest(pattern: &str, filter: impl Fn(&str) -> bool) -> Result<String> {
    let list = output(Command::new("apt-cache").args(["search", "--names-only", pattern]))?;
    let mut names: Vec<&str> = list.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| filter(n)).collect();
    names.sort_by_key(|n| version_key(n));
    names.last().map(|s| s.to_string()).ok_or_else(|| anyhow!("no package matches {pattern}: run apt-get update"))
}

fn kernels() -> Result<Vec<Kernel>> {
    let k61 = newest("^linux-image-6\\.1\\.0-[0-9]+-amd64$", |n| {
        n.starts_with("linux-image-6.1.0-") && n.ends_with("-amd64") && !n.contains("cloud") && !n.contains("-rt-")
    })?;
    let k612 = newest("^linux-image-6\\.12\\.[0-9]+\\+deb12-amd64$", |n| {
        n.starts_with("linux-image-6.12.") && n.ends_with("+deb12-amd64")
    })?;
    Ok(vec![Kernel { label: "6.1".into(), package: k61 }, Kernel { label: "6.12".into(), package: k612 }])
}

/// Unpacks the kernel package under target/vm/<package> (once) and returns that dir.
fn fetch(kernel: &Kernel, vm_dir: &Path) -> Result<PathBuf> {
    let root = vm_dir.join(&kernel.package);
    if root.join("boot").exists() {
        return Ok(root);
    }
    let debs = vm_dir.join("debs");
    fs::create_dir_all(&debs)?;
    eprintln!("xtask: downloading {}", kernel.package);
    output(Command::new("apt-get").args(["download", "-q", &kernel.package]).current_dir(&debs))?;
    let deb = fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{}_", kernel.package))))
        .ok_or_else(|| anyhow!("apt-get download left no .deb for {}", kernel.package))?;
    let tmp = vm_dir.join(format!("{}.tmp", kernel.package));
    let _ = fs::remove_dir_all(&tmp);
    output(Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp))?;
    fs::rename(&tmp, &root)?;
    Ok(root)
}

/// A newc ("070701") cpio archive, built in memory.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    inode: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, path: &str, mode: u32, body: &[u8]) {
        self.inode += 1;
        let name = path.trim_start_matches('/');
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            body.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
        self.data.extend_from_slice(body);
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn dir(&mut self, path: &str) {
        let path = path.trim_end_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, 0o040755, &[]);
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn file(&mut self, path: &str, body: &[u8], mode: u32) {
        self.parent(path);
        self.entry(path, 0o100000 | mode, body);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entry(path, 0o120777, target.as_bytes());
    }

    /// Copies a host file (following symlinks) to the same path in the archive.
    fn host_file(&mut self, path: &Path) -> Result<()> {
        let body = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        self.file(&path.to_string_lossy(), &body, 0o755);
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.data
    }
}

/// Shared libraries (and the interpreter) a dynamic executable needs, per `ldd`.
fn libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(exe).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn which(program: &str) -> Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{program} not found: run `bash scripts/setup.sh`")
}

/// The module file's bytes (decompressed if .ko.xz) and its dependencies.
fn read_module(path: &Path) -> Result<(Vec<u8>, Vec<String>)> {
    let body = if path.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz").arg("-dc").arg(path).output()?;
        if !out.status.success() {
            bail!("xz -dc {} failed", path.display());
        }
        out.stdout
    } else {
        fs::read(path)?
    };
    let needle = b"depends=";
    let deps = body
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| {
            let rest = &body[at + needle.len()..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(0);
            String::from_utf8_lossy(&rest[..end]).split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
        })
        .unwrap_or_default();
    Ok((body, deps))
}

/// Finds each module (by name, `-` and `_` alike) under lib/modules and returns them in
/// load order, dependencies first.
fn modules(root: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let base =
        fs::read_dir(root.join("lib/modules"))?.flatten().next().ok_or_else(|| anyhow!("no lib/modules"))?.path();
    let mut index: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut stack = vec![base];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) {
                if let Some(stem) = name.strip_suffix(".ko").or_else(|| name.strip_suffix(".ko.xz")) {
                    index.insert(stem.replace('-', "_"), p);
                }
            }
        }
    }
    let mut ordered: Vec<(String, Vec<u8>)> = Vec::new();
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        ordered: &mut Vec<(String, Vec<u8>)>,
        depth: u32,
    ) -> Result<()> {
        let name = name.replace('-', "_");
        if depth > 16 || ordered.iter().any(|(n, _)| *n == name) {
            return Ok(());
        }
        // Not found: built into this kernel.
        let Some(path) = index.get(&name) else { return Ok(()) };
        let (body, deps) = read_module(path)?;
        for dep in deps {
            visit(&dep, index, ordered, depth + 1)?;
        }
        ordered.push((name, body));
        Ok(())
    }
    for m in MODULES {
        visit(m, &index, &mut ordered, 0)?;
    }
    Ok(ordered)
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# /tmp stays on the (writable) initramfs root: the test binaries may live under /tmp.
mount -t tmpfs run /run
mkdir -p /sys/fs/cgroup /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
for m in $(cat /modules.order); do insmod /modules/$m.ko || echo "VMTEST-MODULE-FAILED $m"; done
ip link set lo up
# Hold the kernel's static keys for timestamps (ping's SO_TIMESTAMP) and for tc hooks
# (a clsact) on for the whole run, so that the tests do not flip them. Every flip patches
# kernel text with an int3; under TCG with two vCPUs that race once panicked 6.12 in
# __netif_receive_skb_core. Full paths: Debian's busybox sh runs its own applets before
# PATH, and busybox's tc knows no clsact (nor does its ping set SO_TIMESTAMP).
/usr/sbin/ip link add vmkeys0 type veth peer name vmkeys1
/usr/sbin/tc qdisc add dev vmkeys0 clsact || echo "VMTEST-KEYS-FAILED clsact"
/usr/sbin/ping -q -i 100000 127.0.0.1 >/dev/null 2>&1 &
echo "VMTEST-START $(uname -r)"
TEST=$(cat /vmtest.exe)
$TEST --test-threads=1 --nocapture $(cat /vmtest.args) 2>&1
echo "VMTEST-EXIT $?"
poweroff -f
"#;

fn build_initramfs(kernel_root: &Path, test_exe: &Path, extra_files: &[PathBuf], args: &str, out: &Path) -> Result<()> {
    let mut cpio = Cpio::default();
    for d in ["/proc", "/sys", "/dev", "/tmp", "/run", "/var", "/etc", "/bin"] {
        cpio.dir(d);
    }
    cpio.symlink("/var/run", "/run");
    // Tests name files as `<crate dir>/../../scenarios/...`, which needs the crate dir
    // (and its parent) to exist.
    cpio.dir(&workspace().join("chaos-userspace/cli").canonicalize()?.to_string_lossy());
    cpio.file("/init", INIT.as_bytes(), 0o755);
    cpio.file("/vmtest.exe", test_exe.to_string_lossy().as_bytes(), 0o644);
    cpio.file("/vmtest.args", args.as_bytes(), 0o644);
    cpio.file(
        "/bin/busybox",
        &fs::read("/bin/busybox").context("busybox-static is missing: run `bash scripts/setup.sh`")?,
        0o755,
    );
    let mut libs = BTreeSet::new();
    let optional = OPTIONAL_PROGRAMS.iter().filter(|p| which(p).is_ok());
    for program in PROGRAMS.iter().chain(optional) {
        let path = which(program)?;
        libs.extend(libraries(&path)?);
        let body = fs::read(&path)?;
        cpio.file(&format!("/usr/sbin/{program}"), &body, 0o755);
        cpio.symlink(&format!("/usr/bin/{program}"), &format!("/usr/sbin/{program}"));
    }
    for file in std::iter::once(test_exe.to_path_buf()).chain(extra_files.iter().cloned()) {
        if file.extension().is_none() {
            libs.extend(libraries(&file).unwrap_or_default());
        }
        cpio.host_file(&file)?;
    }
    for lib in libs {
        let real = fs::canonicalize(&lib)?;
        cpio.file(&lib.to_string_lossy(), &fs::read(&real)?, 0o755);
    }
    let modules = modules(kernel_root)?;
    let mut order = String::new();
    for (name, body) in &modules {
        cpio.file(&format!("/modules/{name}.ko"), body, 0o644);
        order += name;
        order += "\n";
    }
    cpio.file("/modules.order", order.as_bytes(), 0o644);
    fs::write(out, cpio.finish())?;
    Ok(())
}

/// Builds the kernel test binary and returns its path.
fn build_tests() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = output(
        Command::new(&cargo)
            .args(["test", "-p", "chaos-cli", "--test", "kernel", "--no-run", "--message-format=json"])
            .current_dir(workspace()),
    )?;
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "kernel")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| anyhow!("cargo built no kernel test executable"))
}

/// Console text that starts a kernel crash report.
const KERNEL_CRASH: &[&str] = &["BUG: ", "Oops: ", "general protection fault", "int3: ", "Kernel panic"];

/// What the guest's serial console showed.
struct GuestOutput {
    run: KernelRun,
    reports: Vec<String>,
    exit: Option<i32>,
    /// The test that was running last (libtest's `test NAME ...` line).
    last_test: Option<String>,
    /// The first line of a kernel oops or panic, if the guest kernel crashed.
    crash: Option<String>,
}

impl GuestOutput {
    fn new(label: &str) -> GuestOutput {
        GuestOutput {
            run: KernelRun::new(&format!("VM {label}")),
            reports: Vec::new(),
            exit: None,
            last_test: None,
            crash: None,
        }
    }

    fn read_line(&mut self, line: &str) {
        if let Some(report) = line.split("REPORT|").nth(1) {
            self.reports.push(report.to_owned());
        }
        if let Some(module) = line.split("VMTEST-MODULE-FAILED ").nth(1) {
            self.run.problems.push(format!("module {} did not load", module.trim()));
        }
        if let Some(name) = line.strip_prefix("test ").and_then(|rest| rest.split_whitespace().next()) {
            self.last_test = Some(name.to_owned());
        }
        if self.crash.is_none() && KERNEL_CRASH.iter().any(|mark| line.contains(mark)) {
            // The console line begins with the kernel's `[ seconds]` stamp.
            let text = line.split_once("] ").map_or(line, |(_, text)| text);
            self.crash = Some(text.chars().take(160).collect());
        }
        self.run.read_line(line);
        if let Some(rest) = line.strip_prefix("VMTEST-EXIT ") {
            self.exit = rest.trim().parse().ok();
        }
    }

    /// The run, once the guest is gone.
    fn finish(mut self) -> (KernelRun, Vec<String>) {
        match self.exit {
            Some(code) => self.run.finish(code),
            None => {
                let during = self.last_test.as_deref().map(|t| format!(" during {t}")).unwrap_or_default();
                self.run.problems.push(match &self.crash {
                    Some(crash) => {
                        format!("the guest kernel crashed{during}: {crash} (the console above has the trace)")
                    }
                    None => {
                        format!("the guest ended without reporting a test result{during} (limit {GUEST_TIMEOUT:?})")
                    }
                })
            }
        }
        (self.run, self.reports)
    }
}

/// Boots one kernel, runs the tests, returns what they showed and the REPORT lines.
fn boot(kernel: &Kernel, root: &Path, initramfs: &Path) -> Result<(KernelRun, Vec<String>)> {
    let vmlinuz = fs::read_dir(root.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz")))
        .ok_or_else(|| anyhow!("no vmlinuz in {}", root.display()))?;
    let accel = std::env::var("CHAOS_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
    // The initramfs holds the debug test binary and chaos-ebpf (about 0.7 GB with the
    // Kubernetes client in them) and is unpacked into RAM next to its own copy: 2 GB
    // made "Initramfs unpacking failed: write error".
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", &accel, "-cpu", "max", "-smp", "2", "-m", "6144", "-nographic", "-no-reboot", "-kernel"])
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=3 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (run `bash scripts/setup.sh`)")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut guest = GuestOutput::new(&kernel.label);
    while start.elapsed() < GUEST_TIMEOUT {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                println!("[{} {:>6.1}s] {line}", kernel.label, start.elapsed().as_secs_f64());
                guest.read_line(&line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if child.try_wait()?.is_some() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(guest.finish())
}

/// Runs the kernel tests (`args`: libtest filters and options) on each Debian kernel.
pub fn run(args: &[String]) -> Result<Vec<KernelRun>> {
    let filter = args.join(" ");
    let vm_dir = workspace().join("target/vm");
    fs::create_dir_all(&vm_dir)?;
    let test_exe = build_tests()?;
    let bin = workspace().join("target/debug/chaos-ebpf");
    let scenarios: Vec<PathBuf> = fs::read_dir(workspace().join("scenarios"))?
        .flatten()
        .map(|e| fs::canonicalize(e.path()))
        .collect::<Result<_, _>>()?;
    let mut extra = vec![fs::canonicalize(&bin)?];
    extra.extend(scenarios);
    let mut runs = Vec::new();
    for kernel in kernels()? {
        let root = fetch(&kernel, &vm_dir)?;
        let initramfs = vm_dir.join(format!("initramfs-{}.cpio", kernel.label));
        build_initramfs(&root, &test_exe, &extra, &filter, &initramfs)?;
        eprintln!("xtask: booting {} ({})", kernel.package, kernel.label);
        let (run, reports) = boot(&kernel, &root, &initramfs)?;
        fs::write(vm_dir.join(format!("report-{}.txt", kernel.label)), reports.join("\n") + "\n")?;
        let netem: Vec<&str> = reports.iter().filter_map(|r| r.strip_prefix("netem|")).collect();
        if !netem.is_empty() {
            let mut table = format!(
                "Linux {} ({}), qemu TCG, veth between two namespaces:\n\n| measure | tc netem | chaos-ebpf |\n|---|---:|---:|\n",
                kernel.label, kernel.package
            );
            for row in netem {
                let cells: Vec<&str> = row.split('|').collect();
                table += &format!("| {} |\n", cells.join(" | "));
            }
            let path = vm_dir.join(format!("netem-comparison-{}.md", kernel.label));
            fs::write(&path, &table)?;
            println!("{table}");
            eprintln!("xtask: wrote {}", path.display());
        }
        runs.push(run);
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::GuestOutput;

    fn transcript(lines: &[&str]) -> GuestOutput {
        let mut guest = GuestOutput::new("6.1");
        for line in lines {
            guest.read_line(line);
        }
        guest
    }

    #[test]
    fn skips_are_listed_and_not_passes() {
        let (run, reports) = transcript(&[
            "VMTEST-START 6.1.0-28-amd64",
            "test delay_without_sch_fq_is_refused ... ignored (this kernel has sch_fq; the delay tests cover it)",
            "test delay_adds_latency_and_reverts_at_once ... REPORT|delay_100ms|baseline_ms=1.00|delayed_ms=101.00",
            "ok",
            "KERNEL-TESTS|kernel=6.1.0-28-amd64|passed=1|failed=0|skipped=1",
            "SKIP|delay_without_sch_fq_is_refused|this kernel has sch_fq; the delay tests cover it",
            "VMTEST-EXIT 0",
        ])
        .finish();
        assert!(!run.failed(), "{:?}", run.problems);
        assert_eq!((run.passed, run.failed), (1, 0));
        assert_eq!(run.release.as_deref(), Some("6.1.0-28-amd64"));
        assert_eq!(
            run.skipped,
            [(
                "delay_without_sch_fq_is_refused".to_owned(),
                "this kernel has sch_fq; the delay tests cover it".to_owned()
            )]
        );
        assert_eq!(reports, ["delay_100ms|baseline_ms=1.00|delayed_ms=101.00"]);
    }

    #[test]
    fn a_module_that_did_not_load_fails_the_run() {
        let (run, _) = transcript(&[
            "insmod: can't insert '/modules/sch_fq.ko': invalid module format",
            "VMTEST-MODULE-FAILED sch_fq",
            "KERNEL-TESTS|kernel=6.1.0-28-amd64|passed=3|failed=0|skipped=0",
            "VMTEST-EXIT 0",
        ])
        .finish();
        assert!(run.failed());
        assert_eq!(run.problems, ["module sch_fq did not load"]);
    }

    #[test]
    fn no_count_line_or_no_test_or_no_exit_fails() {
        let (run, _) = transcript(&["VMTEST-EXIT 0"]).finish();
        assert!(run.failed(), "a binary that printed no count line passed");
        let (run, _) =
            transcript(&["KERNEL-TESTS|kernel=6.12.57+deb12-amd64|passed=0|failed=0|skipped=0", "VMTEST-EXIT 0"])
                .finish();
        assert_eq!(run.problems, ["no kernel test matched the filter"]);
        let (run, _) = transcript(&["KERNEL-TESTS|kernel=6.1.0-28-amd64|passed=2|failed=0|skipped=0"]).finish();
        assert!(run.failed(), "a guest that never printed VMTEST-EXIT passed");
    }

    #[test]
    fn a_guest_kernel_crash_names_the_test_and_the_oops() {
        let (run, _) = transcript(&[
            "VMTEST-START 6.12.57+deb12-amd64",
            "test partition_drops_both_ways ... ok",
            "test delay_adds_latency_and_reverts_at_once ... ",
            "[  745.17] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
            "[  745.17] Kernel panic - not syncing: Fatal exception in interrupt",
        ])
        .finish();
        assert_eq!(
            run.problems,
            ["the guest kernel crashed during delay_adds_latency_and_reverts_at_once: Oops: int3: 0000 [#1] PREEMPT SMP \
              NOPTI (the console above has the trace)"]
        );
    }
}
