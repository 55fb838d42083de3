//! Benchmark rows and the one table `make bench` prints.
//!
//! Why this module exists: every figure ns-ha claims is only worth something
//! next to its baseline measured in the same run, on the same machine (the
//! incumbent's rsync, keepalived settings or hook chain). Each benchmark test
//! measures both and hands one [`Row`] to [`record`], which appends it as a
//! JSON line to `rows.jsonl` in the bench dir; after the tests, the
//! `bench-report` binary turns all rows of the run into one Markdown table
//! (`bench.md`), a plot (`bench.svg`) and the README's "Benchmarks" block.
//!
//! Adding a benchmark: measure, then
//! `bench::record(&Row::new("group", "case", ours).baseline(theirs))`, with
//! [`Figure`]s built from the samples ([`Figure::from_samples`] takes the
//! median and keeps the spread). Rows appear in the table in the order they
//! were recorded. Nothing here asserts speed: the table shows the ratios.
//!
//! The bench dir is `$NS_HA_BENCH_DIR`, or `bench/` in the target dir of the
//! running test binary (`target/release/deps/x` gives `target/bench`).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The rows file inside the bench dir.
pub const ROWS_FILE: &str = "rows.jsonl";
/// Markers around the generated block in the README.
pub const README_BEGIN: &str = "<!-- bench:begin (make bench writes this block) -->";
pub const README_END: &str = "<!-- bench:end -->";

/// One measured figure: a median time, optionally bytes on the wire, and
/// the fastest and slowest sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// What was measured ("ns-ha-sync", "rsync -a --delete").
    pub label: String,
    /// Median time in milliseconds.
    pub ms: f64,
    /// Median bytes on the wire (both directions), if measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Fastest and slowest sample in milliseconds, if there were several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<(f64, f64)>,
    /// How many samples the median is of.
    #[serde(default = "one")]
    pub samples: usize,
}

fn one() -> usize {
    1
}

impl Figure {
    /// A single measurement.
    pub fn once(label: &str, took: Duration) -> Figure {
        Figure::from_ms(label, &[ms(took)])
    }

    /// The median of `samples` (and their spread).
    pub fn from_samples(label: &str, samples: &[Duration]) -> Figure {
        let v: Vec<f64> = samples.iter().map(|d| ms(*d)).collect();
        Figure::from_ms(label, &v)
    }

    /// The median of samples given in milliseconds.
    pub fn from_ms(label: &str, samples: &[f64]) -> Figure {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let spread = (v.len() > 1).then(|| (v[0], v[v.len() - 1]));
        Figure {
            label: label.to_string(),
            ms: median_sorted(&v),
            bytes: None,
            spread,
            samples: v.len(),
        }
    }

    /// With the median of the bytes on the wire of each sample.
    pub fn bytes(mut self, samples: &[u64]) -> Figure {
        let mut v = samples.to_vec();
        v.sort_unstable();
        self.bytes = v.get(v.len().saturating_sub(1) / 2).copied();
        self
    }
}

/// One line of the table: our figure and one or more baselines of the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Which part of the product ("sync", "failover", "role engine").
    pub group: String,
    /// The case, as a user would name it.
    pub case: String,
    pub ours: Figure,
    pub baselines: Vec<Figure>,
    /// How it was measured, where the table needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Row {
    pub fn new(group: &str, case: &str, ours: Figure) -> Row {
        Row {
            group: group.to_string(),
            case: case.to_string(),
            ours,
            baselines: Vec::new(),
            note: None,
        }
    }

    pub fn baseline(mut self, f: Figure) -> Row {
        self.baselines.push(f);
        self
    }

    pub fn note(mut self, note: &str) -> Row {
        self.note = Some(note.to_string());
        self
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median_sorted(v: &[f64]) -> f64 {
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The bench dir of this run (see the module comment).
pub fn bench_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NS_HA_BENCH_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test>-<hash>
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("bench")))
        .unwrap_or_else(|| PathBuf::from("target/bench"))
}

/// Append `row` to the run's rows file and print it (one line) on stdout.
pub fn record(row: &Row) {
    let dir = bench_dir();
    let line = serde_json::to_string(row).expect("a row serializes");
    let res = std::fs::create_dir_all(&dir).and_then(|()| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(ROWS_FILE))?;
        // One write per line: rows of tests that run at once do not mix.
        f.write_all(format!("{line}\n").as_bytes())
    });
    if let Err(e) = res {
        panic!("cannot record a bench row in {}: {e}", dir.display());
    }
    println!("bench row: {}", table_lines(row).join(" / "));
}

/// The rows recorded in `dir` (in recording order).
pub fn load(dir: &Path) -> Result<Vec<Row>> {
    let path = dir.join(ROWS_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}: run `make bench` first", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a bench row", path.display(), i + 1))
        })
        .collect()
}

/// Where and when the figures were measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// UTC date and time of the report.
    pub date: String,
    /// CPU model and the number of CPUs.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// This machine, now.
    pub fn here() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown CPU", |(_, m)| m.trim())
            .to_string();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string());
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown date".to_string());
        Machine {
            date,
            cpu: format!("{model}, {cpus} CPUs"),
            kernel: format!("Linux {kernel}"),
        }
    }
}

/// `1234 ms`, `12.3 ms`.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// Decimal units, as network tools print them: `812 B`, `86.0 KB`, `22.4 MB`.
pub fn fmt_bytes(b: u64) -> String {
    let f = b as f64;
    if f >= 1e9 {
        format!("{:.2} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} KB", f / 1e3)
    } else {
        format!("{b} B")
    }
}

fn fmt_figure(f: &Figure) -> String {
    let mut s = format!("{}: {}", f.label, fmt_ms(f.ms));
    if let Some(b) = f.bytes {
        let _ = write!(s, ", {}", fmt_bytes(b));
    }
    if let Some((lo, hi)) = f.spread {
        let _ = write!(s, " ({:.0}–{:.0})", lo, hi);
    }
    s
}

/// ours / baseline, `—` when the baseline is zero or missing.
pub fn ratio(ours: f64, base: f64) -> Option<f64> {
    (base > 0.0 && ours.is_finite() && base.is_finite()).then(|| ours / base)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".to_string(), |r| format!("{r:.2}"))
}

/// Time ratio and bytes ratio of `ours` against `base`.
pub fn ratios(ours: &Figure, base: &Figure) -> (Option<f64>, Option<f64>) {
    let bytes = match (ours.bytes, base.bytes) {
        (Some(o), Some(b)) => ratio(o as f64, b as f64),
        _ => None,
    };
    (ratio(ours.ms, base.ms), bytes)
}

/// A row as plain text, one string per baseline (for the test's own output).
fn table_lines(row: &Row) -> Vec<String> {
    let ours = fmt_figure(&row.ours);
    if row.baselines.is_empty() {
        return vec![format!("{} | {}: {ours}", row.group, row.case)];
    }
    row.baselines
        .iter()
        .map(|b| {
            let (t, by) = ratios(&row.ours, b);
            format!(
                "{} | {}: {ours} vs {} → time {}, bytes {}",
                row.group,
                row.case,
                fmt_figure(b),
                fmt_ratio(t),
                fmt_ratio(by)
            )
        })
        .collect()
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The Markdown table of a run: one line per (row, baseline), ratios = ours / baseline.
pub fn markdown(rows: &[Row], machine: &Machine) -> String {
    let mut out = format!(
        "Measured {} on {} ({}), by `make bench`: medians (fastest–slowest) in the lab \
         (network namespaces, real sshd and keepalived); ratio = ns-ha / baseline, \
         below 1.00 is better.\n\n",
        machine.date, machine.cpu, machine.kernel
    );
    out.push_str("| | case | ns-ha | baseline (same run) | time ratio | bytes ratio |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for row in rows {
        let ours = fmt_figure(&row.ours);
        let case = match &row.note {
            Some(n) => format!("{} ({n})", row.case),
            None => row.case.clone(),
        };
        if row.baselines.is_empty() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | — | — | — |",
                cell(&row.group),
                cell(&case),
                cell(&ours)
            );
        }
        for (i, b) in row.baselines.iter().enumerate() {
            let (t, by) = ratios(&row.ours, b);
            let (g, c, o) = if i == 0 {
                (cell(&row.group), cell(&case), cell(&ours))
            } else {
                (String::new(), String::new(), "″".to_string())
            };
            let _ = writeln!(
                out,
                "| {g} | {c} | {o} | {} | {} | {} |",
                cell(&fmt_figure(b)),
                fmt_ratio(t),
                fmt_ratio(by)
            );
        }
    }
    out
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// At most [`LABEL_CHARS`] characters (a plot label has room for about that many).
fn short(s: &str) -> String {
    if s.chars().count() <= LABEL_CHARS {
        return s.to_string();
    }
    let mut out: String = s.chars().take(LABEL_CHARS - 1).collect();
    out.push('…');
    out
}

const LABEL_CHARS: usize = 85;

/// A bar per (row, baseline): the time ratio on a log scale from 1/16 to
/// 16, with the line at 1 (as fast as the baseline); green left of it,
/// red right of it. Hand-written SVG: no plotting dependency for a bar chart.
pub fn svg(rows: &[Row], machine: &Machine) -> String {
    let bars: Vec<(String, f64)> = rows
        .iter()
        .flat_map(|row| {
            row.baselines.iter().filter_map(move |b| {
                ratios(&row.ours, b).0.map(|r| {
                    (
                        short(&format!("{}: {} vs {}", row.group, row.case, b.label)),
                        r,
                    )
                })
            })
        })
        .collect();
    let (label_w, plot_w, bar_h, top) = (600.0, 420.0, 22.0, 60.0);
    let width = label_w + plot_w + 80.0;
    let height = top + bars.len() as f64 * bar_h + 40.0;
    let span = 4.0; // log2(16)
    let x_of = |r: f64| label_w + (r.log2().clamp(-span, span) + span) / (2.0 * span) * plot_w;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"15\">ns-ha time / baseline time (log scale; left of 1 = faster)</text>\n\
         <text x=\"10\" y=\"38\" fill=\"#555\">{}</text>\n",
        xml(&format!("{} · {} · {}", machine.date, machine.cpu, machine.kernel))
    );
    for tick in [1.0 / 16.0, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0] {
        let x = x_of(tick);
        let label = if tick < 1.0 {
            format!("1/{:.0}", 1.0 / tick)
        } else {
            format!("{tick:.0}")
        };
        let stroke = if tick == 1.0 { "#000" } else { "#ccc" };
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{stroke}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            height - 30.0,
            height - 15.0
        );
    }
    let one = x_of(1.0);
    for (i, (label, r)) in bars.iter().enumerate() {
        let y = top + i as f64 * bar_h;
        let x = x_of(*r);
        let (x0, w) = if x < one {
            (x, one - x)
        } else {
            (one, x - one)
        };
        let color = if *r <= 1.0 { "#2e8b57" } else { "#c0392b" };
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{r:.2}</text>",
            label_w - 8.0,
            y + bar_h * 0.7,
            xml(label),
            y + 3.0,
            w.max(1.0),
            bar_h - 6.0,
            x.max(one) + 6.0,
            y + bar_h * 0.7,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// `readme` with the text between [`README_BEGIN`] and [`README_END`] replaced by `block`.
pub fn replace_block(readme: &str, block: &str) -> Result<String> {
    let (Some(b), Some(e)) = (readme.find(README_BEGIN), readme.find(README_END)) else {
        bail!("the README has no bench block: add the lines '{README_BEGIN}' and '{README_END}'");
    };
    if e < b {
        bail!("the README's bench markers are in the wrong order: '{README_BEGIN}' comes first");
    }
    Ok(format!(
        "{}{README_BEGIN}\n{}{}",
        &readme[..b],
        block,
        &readme[e..]
    ))
}

/// What `bench-report` does: read the run's rows from `dir`, write
/// `bench.md` and `bench.svg` there, and return the Markdown (to print).
/// With `publish` (a dir such as `docs/bench`) also copy both there and
/// rewrite the block of `readme` (its image is `publish/bench.svg`).
pub fn report(dir: &Path, publish: Option<(&Path, &Path)>) -> Result<String> {
    let rows = load(dir)?;
    if rows.is_empty() {
        bail!(
            "{} holds no rows: the benchmarks recorded nothing",
            dir.join(ROWS_FILE).display()
        );
    }
    let machine = Machine::here();
    let md = markdown(&rows, &machine);
    let plot = svg(&rows, &machine);
    write(&dir.join("bench.md"), &md)?;
    write(&dir.join("bench.svg"), &plot)?;
    if let Some((docs, readme)) = publish {
        std::fs::create_dir_all(docs)
            .with_context(|| format!("cannot create {}", docs.display()))?;
        write(&docs.join("bench.md"), &md)?;
        write(&docs.join("bench.svg"), &plot)?;
        let text = std::fs::read_to_string(readme)
            .with_context(|| format!("cannot read {}", readme.display()))?;
        let image = docs
            .strip_prefix(readme.parent().unwrap_or(Path::new("")))
            .unwrap_or(docs)
            .join("bench.svg");
        let block = format!(
            "{md}\n![ns-ha against its baselines, time ratios]({})\n",
            image.display()
        );
        write(readme, &replace_block(&text, &block)?)?;
    }
    Ok(md)
}

const USAGE: &str = "usage: bench-report BENCH_DIR [--publish DOCS_DIR README]";

/// The `bench-report` program: print the table, or one line of error
/// (exit codes from the shared table: usage 2, failure 1).
pub fn report_main(args: Vec<std::ffi::OsString>) -> std::process::ExitCode {
    use ns_ha_common::exit::Code;
    let args: Vec<PathBuf> = args.into_iter().map(PathBuf::from).collect();
    let (dir, publish) = match args.as_slice() {
        [dir] => (dir, None),
        [dir, flag, docs, readme] if flag.as_os_str() == "--publish" => {
            (dir, Some((docs.as_path(), readme.as_path())))
        }
        _ => {
            eprintln!("bench-report: {USAGE}");
            return std::process::ExitCode::from(Code::Usage.as_u8());
        }
    };
    match report(dir, publish) {
        Ok(md) => {
            println!("{md}");
            println!("(written to {}/bench.md and bench.svg)", dir.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-report: {e:#}");
            std::process::ExitCode::from(Code::Failure.as_u8())
        }
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            date: "2026-11-30 12:00 UTC".into(),
            cpu: "Test CPU, 2 CPUs".into(),
            kernel: "Linux 6.1".into(),
        }
    }

    fn row() -> Row {
        Row::new(
            "sync",
            "one file changed",
            Figure::from_ms("ns-ha-sync", &[300.0, 100.0, 200.0]).bytes(&[10, 30, 20]),
        )
        .baseline(Figure::from_ms("rsync", &[400.0]).bytes(&[40]))
        .baseline(Figure::from_ms("rsync --fsync", &[150.0]))
    }

    #[test]
    fn figures_are_medians_with_their_spread() {
        let f = Figure::from_ms("x", &[300.0, 100.0, 200.0, 1000.0]);
        assert_eq!(f.ms, 250.0);
        assert_eq!(f.spread, Some((100.0, 1000.0)));
        assert_eq!(f.samples, 4);
        assert_eq!(Figure::from_ms("x", &[7.0]).spread, None);
        let f = Figure::from_samples("x", &[Duration::from_millis(5), Duration::from_millis(9)]);
        assert_eq!(f.ms, 7.0);
        assert_eq!(f.clone().bytes(&[5, 1, 9]).bytes, Some(5));
        assert_eq!(f.bytes(&[]).bytes, None);
    }

    #[test]
    fn the_table_has_a_line_per_baseline_with_ratios() {
        let md = markdown(&[row()], &machine());
        assert!(
            md.contains("2026-11-30 12:00 UTC on Test CPU, 2 CPUs"),
            "{md}"
        );
        let lines: Vec<&str> = md.lines().filter(|l| l.starts_with("| sync")).collect();
        assert_eq!(lines.len(), 1, "{md}");
        assert!(
            lines[0].contains("ns-ha-sync: 200 ms, 20 B (100–300)")
                && lines[0].contains("rsync: 400 ms, 40 B")
                && lines[0].ends_with("| 0.50 | 0.50 |"),
            "{md}"
        );
        let second = md.lines().find(|l| l.contains("rsync --fsync")).unwrap();
        assert!(second.ends_with("| 1.33 | — |"), "{second}");
        assert!(second.starts_with("|  |  | ″ |"), "{second}");
    }

    #[test]
    fn rows_round_trip_through_the_rows_file() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("NS_HA_BENCH_DIR", dir.path());
        record(&row());
        record(&Row::new(
            "role",
            "no baseline",
            Figure::from_ms("x", &[1.0]),
        ));
        let rows = load(dir.path()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], row());
        assert!(
            markdown(&rows, &machine()).contains("| role | no baseline | x: 1.0 ms | — | — | — |")
        );
    }

    #[test]
    fn the_plot_has_a_bar_per_baseline() {
        let s = svg(&[row()], &machine());
        assert_eq!(s.matches("<rect x=").count(), 2, "{s}");
        assert!(
            s.contains(">0.50</text>") && s.contains(">1.33</text>"),
            "{s}"
        );
        assert!(s.contains("#2e8b57") && s.contains("#c0392b"));
    }

    #[test]
    fn the_readme_block_is_replaced_between_the_markers() {
        let readme = format!("# x\n\n{README_BEGIN}\nold\n{README_END}\nrest\n");
        let new = replace_block(&readme, "new table\n").unwrap();
        assert_eq!(
            new,
            format!("# x\n\n{README_BEGIN}\nnew table\n{README_END}\nrest\n")
        );
        let err = replace_block("# no markers\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no bench block"), "{err}");
    }

    #[test]
    fn plot_labels_are_cut_to_fit() {
        assert_eq!(short("abc"), "abc");
        let long = "x".repeat(200);
        assert_eq!(short(&long).chars().count(), LABEL_CHARS);
        assert!(short(&long).ends_with('…'));
    }

    #[test]
    fn units() {
        assert_eq!(fmt_bytes(812), "812 B");
        assert_eq!(fmt_bytes(86_000), "86.0 KB");
        assert_eq!(fmt_bytes(22_400_000), "22.4 MB");
        assert_eq!(fmt_ms(4644.4), "4644 ms");
        assert_eq!(fmt_ms(30.25), "30.2 ms");
        assert_eq!(ratio(1.0, 0.0), None);
    }
}
