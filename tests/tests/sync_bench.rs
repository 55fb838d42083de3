//! Benchmark of ns-ha-sync against the incumbent's transport (`make bench`,
//! `#[ignore]` otherwise): `rsync -a --delete`, and the same with `--fsync`
//! (ns-ha-sync fsyncs what it applies), from fw1 to fw2 over the same HA
//! link and the same sshd, as a user would run them: each run is one
//! process started in fw1's namespace, SSH connection included.
//!
//! Each tool keeps its own copy on fw2 (ns-ha-sync its node root, rsync
//! `/srv/rsync-bench*`), so every run is incremental against what that tool
//! left. Each case is measured 5 times (NS_HA_SYNC_BENCH_ROUNDS), the order
//! of the tools rotating round by round; time is the median of the runs,
//! bytes are what crossed fw1's HA link on TCP port 22 in both directions
//! (an nftables counter: IP headers, SSH and the protocol included). Every
//! run is checked to have delivered the change. Nothing is asserted about
//! speed: the rows go to the bench table (`ns_ha_tests::bench`).
//!
//! SYNC_BENCH_TRACE=1 runs ns-ha-sync with `-vv` and prints its trace
//! (each step's time on both nodes: `timing:` lines).
//! NS_HA_SYNC_BENCH_CASES=one,hundred,... measures only those cases (keys:
//! full, one, hundred, none, watch, lists, four, hashing, big); the others
//! are only set up, unmeasured, so that a change can be measured before and
//! after without the whole run.

#[path = "sync_support.rs"]
mod sync_support;

use std::io::{Seek, SeekFrom, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ns_ha_tests::bench::{self, Figure, Row};
use ns_ha_tests::{net, wait_until, Lab};
use sync_support::*;

/// CPU time spent on the whole host so far (all CPUs, not idle or iowait),
/// in ms: the trace's measure of what one run costs, processes on both
/// nodes (sshd, the shell, the tool) included.
fn busy_cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().expect("a number"))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle, iowait.
    let busy: u64 = cpu
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy * 1000 / 100
}

/// The directories the benchmark fills on fw1: small config files, and the
/// threat shield's IP lists (large, changed a few lines at a time).
const SMALL: &str = "/etc/nginx/bench";
const LISTS: &str = "/etc/banip";
/// Where each rsync variant keeps its copy on fw2 (inside fw2's node root).
const RSYNC_DEST: &str = "/srv/rsync-bench";
const RSYNC_FSYNC_DEST: &str = "/srv/rsync-fsync-bench";
/// The nftables table counting fw1's SSH bytes.
const WIRE_TABLE: &str = "nsha_bench_wire";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Tool {
    NsHaSync,
    Rsync,
    RsyncFsync,
}

const TOOLS: [Tool; 3] = [Tool::NsHaSync, Tool::Rsync, Tool::RsyncFsync];

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::NsHaSync => "ns-ha-sync push",
            Tool::Rsync => "rsync -a --delete",
            Tool::RsyncFsync => "rsync -a --delete --fsync",
        }
    }
}

/// One tool's samples of one case.
#[derive(Default)]
struct Samples {
    times: Vec<Duration>,
    bytes: Vec<u64>,
}

struct Bench {
    lab: Lab,
    /// `-e` of rsync: ssh with the bench key, host key not checked (as the incumbent).
    rssh: String,
    rounds: usize,
    trace: bool,
    /// The cases to measure (`None`: all).
    cases: Option<Vec<String>>,
}

impl Bench {
    fn new() -> Bench {
        let lab = paired_lab();
        for d in [SMALL, LISTS, RSYNC_DEST, RSYNC_FSYNC_DEST] {
            let node = if d.starts_with("/srv") { "fw2" } else { "fw1" };
            std::fs::create_dir_all(lab.path(node, d)).expect("bench dir");
        }
        // rsync's own key on fw2's sshd: the sshd allows root only with a
        // forced command, so the key's forced command runs what rsync asks
        // for (the incumbent's rsync key is unrestricted). Test-lab only.
        let key = lab.dir().join("bench-rsync-key");
        let key_s = key.to_str().expect("utf-8 path").to_string();
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ns-ha-bench-rsync"])
            .args(["-f", &key_s])
            .output()
            .expect("ssh-keygen");
        assert!(out.status.success(), "ssh-keygen: {out:?}");
        let public = std::fs::read_to_string(format!("{key_s}.pub")).expect("public key");
        let auth = lab.path("fw2", lab.ssh_server().authorized_keys());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&auth)
            .expect("fw2's authorized_keys");
        writeln!(
            f,
            "restrict,command=\"$SSH_ORIGINAL_COMMAND\" {}",
            public.trim()
        )
        .expect("append the rsync key");
        let rssh = format!(
            "ssh -i {key_s} -o BatchMode=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        );
        // Count SSH bytes both ways on fw1.
        let rules = format!(
            "table inet {WIRE_TABLE} {{\n counter wire {{ }}\n\
             chain i {{ type filter hook input priority 0; policy accept; tcp sport 22 counter name wire; }}\n\
             chain o {{ type filter hook output priority 0; policy accept; tcp dport 22 counter name wire; }}\n}}\n"
        );
        let path = lab.dir().join("bench-wire.nft");
        std::fs::write(&path, rules).expect("write nft rules");
        lab.exec_ok("fw1", &["nft", "-f", path.to_str().expect("utf-8 path")]);
        let rounds = std::env::var("NS_HA_SYNC_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        Bench {
            lab,
            rssh,
            rounds,
            trace: std::env::var_os("SYNC_BENCH_TRACE").is_some(),
            cases: std::env::var("NS_HA_SYNC_BENCH_CASES")
                .ok()
                .map(|v| v.split(',').map(|c| c.trim().to_string()).collect()),
        }
    }

    /// Whether the case `key` is measured in this run.
    fn wants(&self, key: &str) -> bool {
        self.cases
            .as_ref()
            .is_none_or(|c| c.iter().any(|k| k == key))
    }

    fn wire_bytes(&self) -> u64 {
        let out = self.lab.exec_ok(
            "fw1",
            &["nft", "list", "counter", "inet", WIRE_TABLE, "wire"],
        );
        out.split_whitespace()
            .skip_while(|w| *w != "bytes")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no byte count in: {out}"))
    }

    fn rsync_dest(tool: Tool) -> &'static str {
        if tool == Tool::RsyncFsync {
            RSYNC_FSYNC_DEST
        } else {
            RSYNC_DEST
        }
    }

    /// Run one tool once; its time and bytes on the wire.
    fn run(&self, tool: Tool) -> (Duration, u64) {
        let before = self.wire_bytes();
        let busy0 = busy_cpu_ms();
        let t0 = Instant::now();
        match tool {
            Tool::NsHaSync => {
                let args: &[&str] = if self.trace {
                    &["-vv", "push"]
                } else {
                    &["push"]
                };
                let out = sync(&self.lab, "fw1", args);
                assert!(out.status.success(), "ns-ha-sync push: {}", describe(&out));
                if self.trace {
                    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
                }
            }
            Tool::Rsync | Tool::RsyncFsync => {
                let root = self.lab.root("fw1");
                let root = root.to_str().expect("utf-8 path");
                let srcs = [SMALL, LISTS].map(|d| format!("{root}/.{d}"));
                let dest = format!(
                    "root@{}:{}/",
                    net::FW2_HA,
                    self.lab.path("fw2", Self::rsync_dest(tool)).display()
                );
                let mut argv = vec!["rsync", "-a", "--delete", "--relative"];
                if tool == Tool::RsyncFsync {
                    argv.push("--fsync");
                }
                argv.extend(["-e", &self.rssh]);
                argv.extend(srcs.iter().map(String::as_str));
                argv.push(&dest);
                let out = self.lab.exec("fw1", &argv);
                assert!(out.status.success(), "{argv:?}: {}", describe(&out));
            }
        }
        let took = t0.elapsed();
        if self.trace {
            eprintln!(
                "{}: {took:?}, CPU busy on the host {} ms",
                tool.label(),
                busy_cpu_ms() - busy0
            );
        }
        (took, self.wire_bytes() - before)
    }

    /// `rounds` rounds of: `prepare(round)`, then every tool once (the order
    /// rotating), then `check`. The samples of each tool, in [`TOOLS`] order.
    fn measure(
        &self,
        case: &str,
        mut prepare: impl FnMut(&Bench, usize),
        check: impl Fn(&Bench, Tool),
    ) -> Vec<Samples> {
        let mut samples: Vec<Samples> = TOOLS.iter().map(|_| Samples::default()).collect();
        for round in 0..self.rounds {
            prepare(self, round);
            for k in 0..TOOLS.len() {
                let i = (round + k) % TOOLS.len();
                let (t, b) = self.run(TOOLS[i]);
                check(self, TOOLS[i]);
                samples[i].times.push(t);
                samples[i].bytes.push(b);
            }
        }
        let line: Vec<String> = TOOLS
            .iter()
            .zip(&samples)
            .map(|(t, s)| format!("{}: {:?} {:?}", t.label(), s.times, s.bytes))
            .collect();
        println!("{case}: {}", line.join("; "));
        samples
    }

    /// [`Bench::measure`] when the case `key` is wanted; no samples otherwise.
    fn measure_if(
        &self,
        key: &str,
        case: &str,
        prepare: impl FnMut(&Bench, usize),
        check: impl Fn(&Bench, Tool),
    ) -> Vec<Samples> {
        if self.wants(key) {
            self.measure(case, prepare, check)
        } else {
            Vec::new()
        }
    }

    /// [`Bench::record`] of a case that was measured.
    fn record_if(&self, case: &str, samples: &[Samples], note: Option<&str>) {
        if !samples.is_empty() {
            self.record(case, samples, note);
        }
    }

    /// Record a row: ns-ha-sync against both rsync variants.
    fn record(&self, case: &str, samples: &[Samples], note: Option<&str>) {
        let fig = |i: usize| {
            Figure::from_samples(TOOLS[i].label(), &samples[i].times).bytes(&samples[i].bytes)
        };
        let mut row = Row::new("sync", case, fig(0))
            .baseline(fig(1))
            .baseline(fig(2));
        if let Some(n) = note {
            row = row.note(n);
        }
        bench::record(&row);
    }

    /// Empty the bench dirs everywhere: ns-ha-sync pushes the deletion
    /// (not measured), rsync's copies are removed on fw2.
    fn clear(&self) {
        for d in [SMALL, LISTS] {
            let p = self.lab.path("fw1", d);
            std::fs::remove_dir_all(&p).expect("clear a bench dir");
            std::fs::create_dir_all(&p).expect("bench dir");
        }
        // Deleting thousands of files can outlast the sender's wait for the
        // backup's answer on a busy machine (exit 6, the backup still
        // applies): not what is measured here, so wait and push again.
        let mut last = None;
        for _ in 0..5 {
            let out = sync(&self.lab, "fw1", &["push"]);
            if out.status.success() {
                last = None;
                break;
            }
            eprintln!("clearing push failed, retrying: {}", describe(&out));
            last = Some(out);
            std::thread::sleep(Duration::from_secs(5));
        }
        if let Some(out) = last {
            panic!("the clearing push kept failing: {}", describe(&out));
        }
        for d in [RSYNC_DEST, RSYNC_FSYNC_DEST] {
            let p = self.lab.path("fw2", d);
            std::fs::remove_dir_all(&p).expect("clear rsync's copy");
            std::fs::create_dir_all(&p).expect("rsync dir");
        }
    }

    /// Let every tool see the current tree once (not measured), after the
    /// files are old enough for the hash cache to trust them.
    fn settle(&self) {
        std::thread::sleep(Duration::from_secs(2));
        for t in TOOLS {
            self.run(t);
        }
    }

    /// The copy of `rel` (a path on fw1) that `tool` made on fw2.
    fn copy_of(&self, tool: Tool, rel: &str) -> std::path::PathBuf {
        match tool {
            Tool::NsHaSync => self.lab.path("fw2", rel),
            _ => self
                .lab
                .path("fw2", &format!("{}{rel}", Self::rsync_dest(tool))),
        }
    }

    fn same(&self, tool: Tool, rel: &str) -> bool {
        let src = std::fs::read(self.lab.path("fw1", rel)).expect("source file");
        std::fs::read(self.copy_of(tool, rel)).ok().as_deref() == Some(src.as_slice())
    }

    fn assert_same(&self, tool: Tool, rel: &str) {
        assert!(
            self.same(tool, rel),
            "{}: {rel} on fw2 differs from fw1's",
            tool.label()
        );
    }
}

/// The content a round writes into a changed file: one byte longer each
/// round, so that rsync's quick check (size, mtime) sees every edit.
fn edit(round: usize, tag: &str) -> String {
    format!("# changed {tag}{}\n", "+".repeat(round + 1))
}

fn small_file(d: usize, f: usize) -> String {
    format!("{SMALL}/d{d:02}/f{f:03}.conf")
}

/// The 10,000 small files (~200 B each); `salt` makes each generation new.
fn write_small_tree(lab: &Lab, dirs: usize, salt: usize) {
    for d in 0..dirs {
        for f in 0..100 {
            lab.write(
                "fw1",
                &small_file(d, f),
                format!(
                    "# bench file {d}/{f} generation {salt}\nserver {{ listen {}; }}\n{}\n",
                    10000 + d * 100 + f,
                    "x".repeat(120)
                ),
            );
        }
    }
}

fn list_file(i: usize) -> String {
    format!("{LISTS}/list{i:02}.v4")
}

/// A 10 MB IP list, one `a.b.c.d/32` per line.
fn ip_list(seed: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(10_000_000 + 20);
    let mut x = (seed as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while out.len() < 10_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_be_bytes();
        out.extend_from_slice(format!("{}.{}.{}.{}/32\n", b[0], b[1], b[2], b[3]).as_bytes());
    }
    out
}

/// `len` bytes that do not compress.
fn noise(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
#[ignore = "benchmark: make bench"]
fn bench_sync_against_rsync() {
    let b = Bench::new();

    // --- 10,000 small files --------------------------------------------------
    if b.wants("full") {
        let full = b.measure(
            "10,000 files, full",
            |b, round| {
                if round > 0 {
                    b.clear();
                }
                write_small_tree(&b.lab, 100, round);
            },
            |b, tool| b.assert_same(tool, &small_file(99, 99)),
        );
        b.record("10,000 small files (~200 B), full sync", &full, None);
    } else {
        write_small_tree(&b.lab, 100, 0);
    }
    b.settle();

    // The watch row's baseline is this case's rsync run. Each round's edit
    // has a size of its own: rsync's quick check compares size and mtime,
    // and two rounds' writes within one second of each other with the same
    // size were skipped by it (a fresh clone's make bench, 2026-12-01).
    let one = b.measure_if(
        if b.wants("watch") { "watch" } else { "one" },
        "10,000 files, one changed",
        |b, round| b.lab.write("fw1", &small_file(42, 42), edit(round, "")),
        |b, tool| b.assert_same(tool, &small_file(42, 42)),
    );
    if b.wants("one") {
        b.record_if("same, one file changed", &one, None);
    }

    let hundred = b.measure_if(
        "hundred",
        "10,000 files, 100 changed",
        |b, round| {
            for d in 0..100 {
                b.lab
                    .write("fw1", &small_file(d, 7), edit(round, &d.to_string()));
            }
        },
        |b, tool| b.assert_same(tool, &small_file(99, 7)),
    );
    b.record_if("same, 100 files changed", &hundred, None);

    let none = b.measure_if("none", "10,000 files, no change", |_, _| {}, |_, _| {});
    b.record_if("same, no change", &none, None);

    if b.wants("watch") {
        // Its baseline is rsync's one-file run (measured with "one").
        watch_rows(&b, &one);
    }

    // --- 2,000 files and 20 lists of 10 MB ----------------------------------
    b.clear();
    let lists = b.measure_if(
        "lists",
        "2,000 files + 20 lists of 10 MB, full",
        |b, round| {
            if round > 0 {
                b.clear();
            }
            write_small_tree(&b.lab, 20, round);
            for i in 0..20 {
                b.lab.write("fw1", &list_file(i), ip_list(round * 100 + i));
            }
        },
        |b, tool| {
            b.assert_same(tool, &list_file(19));
            b.assert_same(tool, &small_file(19, 99));
        },
    );
    if !b.wants("lists") {
        write_small_tree(&b.lab, 20, 0);
        for i in 0..20 {
            b.lab.write("fw1", &list_file(i), ip_list(i));
        }
    }
    b.record_if("2,000 small files + 20 lists of 10 MB, full", &lists, None);
    b.settle();

    let four = b.measure_if(
        "four",
        "one 10 MB list, 4 bytes changed",
        |b, round| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(b.lab.path("fw1", &list_file(7)))
                .expect("open a list");
            f.seek(SeekFrom::Start(1_000_003 + round as u64 * 777_777))
                .expect("seek");
            f.write_all(format!("{:04}", round % 10_000).as_bytes())
                .expect("change 4 bytes");
        },
        |b, tool| b.assert_same(tool, &list_file(7)),
    );
    b.record_if("one 10 MB list with 4 bytes changed", &four, None);

    if b.wants("hashing") {
        hashing_row(&b);
    }

    // --- one 500 MB file ---------------------------------------------------
    if !b.wants("big") {
        return;
    }
    b.clear();
    let big_src = b.lab.dir().join("bench-500mb");
    std::fs::write(&big_src, noise(500_000_000)).expect("write the 500 MB file");
    let big = format!("{LISTS}/big.bin");
    let big_samples = b.measure(
        "one 500 MB file",
        |b, round| {
            if round > 0 {
                b.clear();
            }
            // A hard link: the same data every round, written once.
            std::fs::hard_link(&big_src, b.lab.path("fw1", &big)).expect("link the big file");
        },
        |b, tool| {
            let len = std::fs::metadata(b.copy_of(tool, &big)).map(|m| m.len());
            assert_eq!(len.ok(), Some(500_000_000), "{}: big file", tool.label());
        },
    );
    // The content of the big file is checked once (reading 1.5 GB per round would double the case).
    for t in TOOLS {
        b.assert_same(t, &big);
    }
    b.record("one 500 MB file, full", &big_samples, None);
    b.clear();
    let _ = std::fs::remove_file(&big_src);
}

/// The watcher process, killed (by its own pid) when dropped.
struct Watcher(Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `watch`: from a write on fw1 until fw2's file is identical (polled every
/// 2 ms), against rsync run once right after a write (the one-file case's
/// samples: the incumbent has no watch mode; its cron runs every 600 s).
/// Then, the watcher still running (as installed: the packages start it),
/// a one-shot `push` right after a write, which the watcher takes over its
/// open session, against the same rsync runs.
fn watch_rows(b: &Bench, rsync_one: &[Samples]) {
    let lab = &b.lab;
    let log = lab.dir().join("bench-watch.log");
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("fw1")])
        .arg(lab.bin("ns-ha-sync"))
        .args([
            "--root",
            lab.root("fw1").to_str().expect("utf-8 path"),
            "watch",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("watch log"))
        .spawn()
        .expect("start ns-ha-sync watch");
    let _watcher = Watcher(child);
    let rel = small_file(13, 13);
    // Ready once a first change went through.
    lab.write("fw1", &rel, "# watch warm-up\n");
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(20), || b
            .same(Tool::NsHaSync, &rel)),
        "watch did not push: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut times = Vec::new();
    let mut bytes = Vec::new();
    for round in 0..b.rounds {
        std::thread::sleep(Duration::from_millis(300));
        let content = format!("# watch round {round}\n");
        let before = b.wire_bytes();
        let t0 = Instant::now();
        lab.write("fw1", &rel, &content);
        let seen = wait_until(Duration::from_secs(10), Duration::from_millis(2), || {
            std::fs::read_to_string(lab.path("fw2", &rel))
                .ok()
                .as_deref()
                == Some(content.as_str())
        });
        assert!(
            seen,
            "watch did not deliver within 10 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        times.push(t0.elapsed());
        // The push's last bytes (the backup's answer) may follow the file by a moment.
        std::thread::sleep(Duration::from_millis(200));
        bytes.push(b.wire_bytes() - before);
    }
    println!("watch: {times:?} {bytes:?}");
    bench::record(
        &Row::new(
            "sync",
            "watch: one file written until identical on the backup",
            Figure::from_samples("ns-ha-sync watch", &times).bytes(&bytes),
        )
        .baseline(
            Figure::from_samples("rsync -a --delete, run at once", &rsync_one[1].times)
                .bytes(&rsync_one[1].bytes),
        )
        .note("10,000-file set; the incumbent runs rsync every 600 s"),
    );

    let mut times = Vec::new();
    let mut bytes = Vec::new();
    for round in 0..b.rounds {
        std::thread::sleep(Duration::from_millis(300));
        let content = format!("# push to the watcher, round {round}\n");
        let before = b.wire_bytes();
        lab.write("fw1", &rel, &content);
        let t0 = Instant::now();
        let out = sync(lab, "fw1", &["-vv", "push"]);
        times.push(t0.elapsed());
        assert!(out.status.success(), "push: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("a running watch takes the push"),
            "the push was not handed to the watcher: {}",
            describe(&out)
        );
        assert!(
            b.same(Tool::NsHaSync, &rel),
            "push returned before fw2 had the file"
        );
        std::thread::sleep(Duration::from_millis(200));
        bytes.push(b.wire_bytes() - before);
    }
    println!("push to the watcher: {times:?} {bytes:?}");
    let mut row = Row::new(
        "sync",
        "same, one file changed, the watcher running (as installed): a one-shot push",
        Figure::from_samples("ns-ha-sync push, handed to the watch", &times).bytes(&bytes),
    );
    for (tool, s) in TOOLS.iter().zip(rsync_one).skip(1) {
        row = row.baseline(Figure::from_samples(tool.label(), &s.times).bytes(&s.bytes));
    }
    bench::record(&row);
}

/// Hashing the whole set from cold (ns-ha-sync's hash cache moved aside):
/// `ns-ha-sync list` against `sha256sum` of the same files.
fn hashing_row(b: &Bench) {
    let lab = &b.lab;
    // The sync state dir: the OpenWrt layout's, or the Debian one.
    let caches: Vec<_> = ["/etc/ns-ha-sync", "/var/lib/ns-ha/sync"]
        .iter()
        .map(|d| lab.path("fw1", d))
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("hash-cache"))
        })
        .collect();
    assert!(
        !caches.is_empty(),
        "no hash cache (hash-cache*) in fw1's sync state dir: the benchmark must move it aside to hash from cold"
    );
    let root = lab.root("fw1");
    let script = format!(
        "find {r}{SMALL} {r}{LISTS} -type f -print0 | xargs -0 sha256sum >/dev/null",
        r = root.display()
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..b.rounds {
        for k in 0..2 {
            if (round + k) % 2 == 0 {
                for c in &caches {
                    let _ = std::fs::rename(c, c.with_extension("bench-aside"));
                }
                let t0 = Instant::now();
                sync_ok(lab, "fw1", &["list"]);
                ours.push(t0.elapsed());
                for c in &caches {
                    let _ = std::fs::rename(c.with_extension("bench-aside"), c);
                }
            } else {
                let t0 = Instant::now();
                lab.sh_ok("fw1", &script);
                theirs.push(t0.elapsed());
            }
        }
    }
    println!("hashing: ns-ha-sync list {ours:?}; sha256sum {theirs:?}");
    bench::record(
        &Row::new(
            "sync",
            "hashing the set from cold (2,000 files + 200 MB)",
            Figure::from_samples("ns-ha-sync list, no hash cache", &ours),
        )
        .baseline(Figure::from_samples("find | xargs sha256sum", &theirs))
        .note("files in the page cache"),
    );
}
