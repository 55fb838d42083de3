//! The top of an ns-ha binary, written once.
//!
//! Every tool parses the same global options (`--root`, `--json`, `-v`),
//! runs one command into a [`Report`], prints it (text for people, JSON for
//! scripts) or prints the error once with its whole chain, and exits with a
//! code from the shared table. Sharing it keeps the tools' behaviour the
//! same: a script that reads one tool's `{"error": ..., "code": ...}` reads
//! all of them.
//!
//! The JSON rule (docs/json.md): with `--json` a run prints exactly one
//! compact JSON object on stdout, on success and on failure. A failure's
//! object carries `error` (the message chain) and `code` (the exit code)
//! next to whatever data the command had gathered (kept files, drift,
//! failed actions), so a script reads the data the same way either way.
//! Only streaming commands print more than one line (JSON lines, one per
//! event, see [`print_json_line`]).

use anyhow::Result;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit::{code_of, Code};

/// Options every tool takes, flattened into its clap `Cli`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GlobalArgs {
    /// Root directory of the node's filesystem (default: $NS_HA_ROOT or /):
    /// an absolute path of letters, digits and / . _ - + , : @ only.
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print results as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// What a command tells the administrator: text for people, JSON for scripts.
#[derive(Debug, Clone)]
pub struct Report {
    pub human: String,
    /// The command's data: a JSON object (`Null` for a command that printed
    /// its own output, see [`Report::printed`]).
    pub json: serde_json::Value,
    /// Exit code after printing (a check that found problems still prints them all).
    pub code: Code,
    /// Why the command failed, when it failed after gathering its data
    /// (printed on stderr and as `error` in the JSON object).
    pub error: Option<String>,
}

impl Report {
    pub fn new(human: impl Into<String>, json: serde_json::Value) -> Report {
        Report {
            human: human.into(),
            json,
            code: Code::Ok,
            error: None,
        }
    }

    /// A command that printed its own output (streaming tools): nothing more to print.
    pub fn printed() -> Report {
        Report::new("", serde_json::Value::Null)
    }

    /// The same report, ending with `code`.
    pub fn with_code(mut self, code: Code) -> Report {
        self.code = code;
        self
    }

    /// The same report, failed with `err` after its data was gathered: the
    /// data is still printed, the error goes to stderr (and into the JSON
    /// object as `error`), and the run ends with the error's exit code.
    pub fn failed(mut self, err: anyhow::Error) -> Report {
        self.code = code_of(&err);
        self.error = Some(format!("{err:#}"));
        self
    }

    /// `Ok(self)`, or `self` failed with the error of `check` (for commands
    /// whose data decides whether they failed).
    pub fn failed_if(self, check: Result<()>) -> Report {
        match check {
            Ok(()) => self,
            Err(e) => self.failed(e),
        }
    }

    /// The one JSON document of this report: the data object, plus `error`
    /// and `code` when the run failed. Data that is not an object (a bug in
    /// a command) is kept under `data` so the document is still an object.
    pub fn document(&self) -> serde_json::Value {
        let mut doc = match &self.json {
            serde_json::Value::Object(m) => m.clone(),
            serde_json::Value::Null => serde_json::Map::new(),
            other => {
                let mut m = serde_json::Map::new();
                m.insert("data".into(), other.clone());
                m
            }
        };
        if self.code != Code::Ok {
            let error = self
                .error
                .clone()
                .unwrap_or_else(|| meaning(self.code).to_string());
            doc.insert("error".into(), error.into());
            doc.insert("code".into(), self.code.as_u8().into());
        }
        serde_json::Value::Object(doc)
    }
}

/// The exit-code table's one-line meaning of `code`.
fn meaning(code: Code) -> &'static str {
    Code::TABLE
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, m)| *m)
        .unwrap_or("failed")
}

/// The document of an error with no data: `{"error": chain, "code": n}`
/// (a streaming command's line for a failed attempt it goes on after).
pub fn error_document(err: &anyhow::Error) -> serde_json::Value {
    serde_json::json!({"error": format!("{err:#}"), "code": code_of(err).as_u8()})
}

/// One line of a streaming command's JSON output (JSON lines: one compact
/// object per event, flushed at once so a reader sees it as it happens).
pub fn print_json_line(value: &impl serde::Serialize) {
    use std::io::Write;
    if let Ok(line) = serde_json::to_string(value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Parse a command line; `--help`/`--version` and usage errors are printed
/// here and come back as the exit code to end with (0 or 2).
/// With `--json` among the arguments, a usage error also prints its
/// `{"error", "code": 2}` document on stdout.
pub fn parse<C: clap::Parser>(args: impl IntoIterator<Item = OsString>) -> Result<C, ExitCode> {
    let args: Vec<OsString> = args.into_iter().collect();
    let json = args.iter().skip(1).any(|a| a == "--json");
    C::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        if json && e.use_stderr() {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("usage error");
            let message = first.strip_prefix("error: ").unwrap_or(first);
            println!(
                "{}",
                serde_json::json!({"error": message, "code": Code::Usage.as_u8()})
            );
        }
        ExitCode::from(if e.use_stderr() {
            Code::Usage.as_u8()
        } else {
            Code::Ok.as_u8()
        })
    })
}

/// A tool's clap command line, which flattens [`GlobalArgs`].
pub trait ToolCli: clap::Parser {
    fn global(&self) -> &GlobalArgs;
}

/// A tool's whole `main`: parse `args`, set up logging, run the command with
/// `run`, print its report or its error once, and return the exit code.
pub fn main<C: ToolCli>(
    tool: &str,
    args: impl IntoIterator<Item = OsString>,
    run: impl FnOnce(C) -> Result<Report>,
) -> ExitCode {
    let cli: C = match parse(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // The node's syslog socket is under its root (a bad root fails the
    // command later, with its fix; logging then just has no syslog).
    let root = crate::root::NodeRoot::from_arg_or_env(cli.global().root.as_deref()).ok();
    crate::logging::init(tool, cli.global().verbose, root.as_ref().map(|r| r.base()));
    let json = cli.global().json;
    finish(tool, json, run(cli))
}

/// Print the result of a command and turn it into the process exit code:
/// the report on stdout (one compact JSON object with `--json`, carrying
/// `error` and `code` when the run failed), and an error once on stderr as
/// `tool: chain`. This is the only place a tool prints its document.
pub fn finish(tool: &str, json: bool, result: Result<Report>) -> ExitCode {
    let report = match result {
        Ok(report) => report,
        Err(err) => Report::new("", serde_json::Value::Null).failed(err),
    };
    if json {
        if !report.json.is_null() || report.code != Code::Ok {
            println!("{}", report.document());
        }
    } else if !report.human.is_empty() {
        println!("{}", report.human.trim_end());
    }
    if let Some(e) = &report.error {
        eprintln!("{tool}: {e}");
    }
    ExitCode::from(report.code.as_u8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Demo {
        #[command(flatten)]
        global: GlobalArgs,
        #[arg(long)]
        name: String,
    }

    #[test]
    fn parses_global_options_and_refuses_bad_usage() {
        let d: Demo =
            parse(["demo", "--name", "x", "--json", "-vv", "--root", "/r"].map(OsString::from))
                .unwrap();
        assert!(d.global.json);
        assert_eq!(d.global.verbose, 2);
        assert_eq!(d.global.root, Some(PathBuf::from("/r")));
        let e = parse::<Demo>(["demo", "--bogus"].map(OsString::from)).unwrap_err();
        assert_eq!(e, ExitCode::from(2));
    }

    #[test]
    fn a_failed_report_is_one_object_with_its_data_error_and_code() {
        let r = Report::new("x", serde_json::json!({"kept": ["/etc/a"]}))
            .failed(crate::exit::fail(Code::Conflict, "1 path kept"));
        let doc = r.document();
        assert_eq!(doc["kept"][0], "/etc/a");
        assert_eq!(doc["error"], "1 path kept");
        assert_eq!(doc["code"], 8);
        // A plain error has no data but the same two fields.
        let e = Report::new("", serde_json::Value::Null)
            .failed(crate::exit::fail(Code::Peer, "gone"))
            .document();
        assert_eq!(e, serde_json::json!({"error": "gone", "code": 6}));
        // A report ended with a code but no message says what the code means.
        let u = Report::new("", serde_json::json!({"healthy": false})).with_code(Code::Unhealthy);
        assert_eq!(u.document()["error"], meaning(Code::Unhealthy));
        assert_eq!(u.document()["code"], 10);
        // Success: the data alone.
        let ok = Report::new("", serde_json::json!({"a": 1})).failed_if(Ok(()));
        assert_eq!(ok.document(), serde_json::json!({"a": 1}));
    }

    #[test]
    fn reports_keep_their_code() {
        let r = Report::new("x", serde_json::json!({})).with_code(Code::Unhealthy);
        assert_eq!(r.code, Code::Unhealthy);
        assert_eq!(
            finish("t", false, Err(crate::exit::fail(Code::Peer, "gone"))),
            ExitCode::from(6)
        );
    }
}
