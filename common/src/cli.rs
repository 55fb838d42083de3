//! The top of an ns-ha binary, written once.
//!
//! Every tool parses the same global options (`--root`, `--json`, `-v`),
//! runs one command into a [`Report`], prints it (text for people, JSON for
//! scripts) or prints the error once with its whole chain, and exits with a
//! code from the shared table. Sharing it keeps the tools' behaviour the
//! same: a script that reads one tool's `{"error": ..., "code": ...}` reads
//! all of them.

use anyhow::Result;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit::{code_of, Code};

/// Options every tool takes, flattened into its clap `Cli`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GlobalArgs {
    /// Root directory of the node's filesystem (default: $NS_HA_ROOT or /).
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
    pub json: serde_json::Value,
    /// Exit code after printing (a check that found problems still prints them all).
    pub code: Code,
}

impl Report {
    pub fn new(human: impl Into<String>, json: serde_json::Value) -> Report {
        Report {
            human: human.into(),
            json,
            code: Code::Ok,
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
}

/// Parse a command line; `--help`/`--version` and usage errors are printed
/// here and come back as the exit code to end with (0 or 2).
pub fn parse<C: clap::Parser>(args: impl IntoIterator<Item = OsString>) -> Result<C, ExitCode> {
    C::try_parse_from(args).map_err(|e| {
        let _ = e.print();
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
    crate::logging::init(cli.global().verbose);
    let json = cli.global().json;
    finish(tool, json, run(cli))
}

/// Print the result of a command and turn it into the process exit code:
/// the report on stdout (JSON with `--json`), or the error once on stderr as
/// `tool: chain` (plus `{"error", "code"}` on stdout with `--json`).
pub fn finish(tool: &str, json: bool, result: Result<Report>) -> ExitCode {
    match result {
        Ok(report) => {
            if json {
                if !report.json.is_null() {
                    println!("{}", report.json);
                }
            } else if !report.human.is_empty() {
                println!("{}", report.human.trim_end());
            }
            ExitCode::from(report.code.as_u8())
        }
        Err(err) => {
            let code = code_of(&err);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"error": format!("{err:#}"), "code": code.as_u8()})
                );
            }
            eprintln!("{tool}: {err:#}");
            ExitCode::from(code.as_u8())
        }
    }
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
    fn reports_keep_their_code() {
        let r = Report::new("x", serde_json::json!({})).with_code(Code::Unhealthy);
        assert_eq!(r.code, Code::Unhealthy);
        assert_eq!(
            finish("t", false, Err(crate::exit::fail(Code::Peer, "gone"))),
            ExitCode::from(6)
        );
    }
}
