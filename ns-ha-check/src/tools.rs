//! What `status` and `doctor` learn from the other tools, through their
//! command lines and documented JSON.
//!
//! The role engine and the sync own their facts (maintenance, applied and
//! pending actions, history, sync runs, the backup's drift). `ns-ha-check`
//! does not link those tools: it runs them (`ns-ha-role status --json`,
//! `ns-ha-sync status --json --local`, `ns-ha-sync verify --json`) next to
//! its own executable, against the same `--root`, and reads their answers.
//! [`ToolQuery`] is the seam: [`ToolRunner`] runs the real tools through a
//! [`CommandRunner`], and unit tests replay recorded JSON.
//!
//! Parsing rules, so this works whether a failing command prints one JSON
//! document or a report followed by an `{"error","code"}` line: the first
//! JSON document on stdout is the answer; exit 0 and exit 10 ("differences
//! found", e.g. drift) are data; any other exit is a failure whose message
//! is the document's `error` (or the tool's last stderr line).

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use ns_ha_common::activate::tool_path;
use ns_ha_common::cmd::CommandRunner;
use ns_ha_common::exit::{fail, Code};
use ns_ha_common::NodeRoot;

/// How long one tool may take (verify asks the backup over SSH).
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// A tool's answer: its exit code and the first JSON document it printed.
#[derive(Debug, Clone)]
pub struct ToolAnswer {
    pub code: i32,
    pub doc: serde_json::Value,
}

/// Ask a sibling ns-ha tool something, with `--json`.
pub trait ToolQuery {
    /// Run `tool --root ROOT --json ARGS`; exit 0 and 10 are answers,
    /// anything else an error naming the tool and its reason.
    fn query(&self, root: &NodeRoot, tool: &str, args: &[&str]) -> Result<ToolAnswer>;
}

/// The first JSON document of `stdout`, if it starts with one.
pub fn first_document(stdout: &str) -> Option<serde_json::Value> {
    serde_json::Deserializer::from_str(stdout)
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(|r| r.ok())
}

/// Turn a finished tool run into its answer or its error.
pub fn interpret(
    what: &str,
    status: Option<i32>,
    stdout: &str,
    reason: impl FnOnce() -> String,
) -> Result<ToolAnswer> {
    let doc = first_document(stdout);
    match (status, doc) {
        (Some(code @ (0 | 10)), Some(doc)) => Ok(ToolAnswer { code, doc }),
        (Some(code @ (0 | 10)), None) => Err(fail(
            Code::Dependency,
            format!("{what} exited {code} without a JSON answer: install the same ns-ha release for every tool"),
        )),
        (_, doc) => {
            let msg = doc
                .as_ref()
                .and_then(|d| d["error"].as_str().map(str::to_string))
                .unwrap_or_else(reason);
            Err(fail(Code::Dependency, format!("{what}: {msg}")))
        }
    }
}

/// Runs the real tools, found the way keepalived's notify hook finds
/// `ns-ha-role`: `NS_HA_BIN_DIR`, else next to this executable.
pub struct ToolRunner<'a> {
    pub runner: &'a dyn CommandRunner,
}

impl ToolQuery for ToolRunner<'_> {
    fn query(&self, root: &NodeRoot, tool: &str, args: &[&str]) -> Result<ToolAnswer> {
        let exe: PathBuf = tool_path(tool)?;
        let mut argv = vec![
            "--root".to_string(),
            root.base().to_string_lossy().into_owned(),
            "--json".to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        let what = format!("{tool} {}", args.join(" "));
        let out = self
            .runner
            .run(&exe.to_string_lossy(), &argv, TOOL_TIMEOUT)?;
        if out.timed_out {
            return Err(fail(
                Code::Timeout,
                format!("{what} timed out after {TOOL_TIMEOUT:?}"),
            ));
        }
        interpret(&what, out.status, &out.stdout, || out.reason())
    }
}

fn parse<T: DeserializeOwned>(what: &str, doc: serde_json::Value) -> Result<T> {
    serde_json::from_value(doc).map_err(|e| {
        fail(
            Code::Dependency,
            format!("{what}: unexpected JSON ({e}): install the same ns-ha release for every tool"),
        )
    })
}

/// One action of the role engine (pending, or in a transition).
#[derive(Debug, Clone, Deserialize)]
pub struct RoleAction {
    pub action: String,
    pub outcome: String,
    #[serde(default)]
    pub detail: String,
}

impl RoleAction {
    pub fn failed(&self) -> bool {
        matches!(self.outcome.as_str(), "failed" | "timed-out")
    }
}

/// The last keepalived event the role engine counts.
#[derive(Debug, Clone, Deserialize)]
pub struct RoleEvent {
    pub unix_ms: u64,
    pub state: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RoleTarget {
    pub label: String,
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RoleApplied {
    pub label: String,
    #[serde(default)]
    pub since_ms: u64,
    #[serde(default)]
    pub pending: Vec<RoleAction>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RoleTransition {
    pub unix_ms: u64,
    pub done_unix_ms: u64,
    pub from: String,
    pub to: String,
    pub reason: String,
    #[serde(default)]
    pub actions: Vec<RoleAction>,
}

/// A VRRP instance's last reported state (`instances` of `ns-ha-role status`).
#[derive(Debug, Clone, Deserialize)]
pub struct RoleInstance {
    pub name: String,
    pub state: String,
    pub since_ms: u64,
}

/// `ns-ha-role status --json`, the parts this tool reads.
#[derive(Debug, Clone, Deserialize)]
pub struct RoleStatus {
    pub enabled: bool,
    pub maintenance: bool,
    pub last_event: Option<RoleEvent>,
    pub fifo_reader: bool,
    /// Absent from releases before it was added: then no link is known.
    #[serde(default)]
    pub instances: Vec<RoleInstance>,
    pub target: RoleTarget,
    pub applied: RoleApplied,
    #[serde(default)]
    pub history: Vec<RoleTransition>,
}

/// One sync run (`ns-ha-sync status`).
#[derive(Debug, Clone, Deserialize)]
pub struct SyncRun {
    pub at: u64,
    pub ok: bool,
    pub generation: u64,
    pub error: Option<String>,
}

/// This node's part of `ns-ha-sync status --json --local`.
#[derive(Debug, Clone, Deserialize)]
pub struct SyncNode {
    pub generation: u64,
    pub last_attempt: Option<SyncRun>,
    pub last_success: Option<SyncRun>,
    pub journal_pending: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct SyncStatusDoc {
    node: SyncNode,
}

/// A path edited on the backup since the last sync (`ns-ha-sync verify`).
#[derive(Debug, Clone, Deserialize)]
pub struct Drift {
    pub path: String,
    pub what: String,
}

/// `ns-ha-sync verify --json`: the drift list, whether the tool printed it
/// bare (the backup's form), as `drift` of its report (the primary's form),
/// or inside a one-document failure.
fn drift_of(doc: serde_json::Value) -> Result<Vec<Drift>> {
    let list = match doc {
        serde_json::Value::Array(_) => doc,
        mut d => d["drift"].take(),
    };
    if list.is_null() {
        return Ok(Vec::new());
    }
    parse("ns-ha-sync verify", list)
}

/// `ns-ha-role status --json`.
pub fn role_status(q: &dyn ToolQuery, root: &NodeRoot, history: usize) -> Result<RoleStatus> {
    let n = history.to_string();
    let a = q.query(root, "ns-ha-role", &["status", "--history", &n])?;
    parse("ns-ha-role status", a.doc)
}

/// `ns-ha-sync status --json --local` (this node only, no SSH).
pub fn sync_status(q: &dyn ToolQuery, root: &NodeRoot) -> Result<SyncNode> {
    let a = q.query(root, "ns-ha-sync", &["status", "--local"])?;
    Ok(parse::<SyncStatusDoc>("ns-ha-sync status", a.doc)?.node)
}

/// `ns-ha-sync verify --json`: on the primary it asks the backup, on the
/// backup it scans its own files.
pub fn sync_verify(q: &dyn ToolQuery, root: &NodeRoot) -> Result<Vec<Drift>> {
    let a = q.query(root, "ns-ha-sync", &["verify"])?;
    drift_of(a.doc)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ns_ha_common::cmd::{CmdOutput, RecordingRunner};
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Replays recorded answers: key `"tool subcommand"` (e.g. `"ns-ha-sync verify"`).
    #[derive(Default)]
    pub struct ReplayTools {
        answers: Mutex<HashMap<String, (Option<i32>, String)>>,
    }

    impl ReplayTools {
        pub fn answer(&self, key: &str, code: i32, stdout: &str) -> &Self {
            self.answers
                .lock()
                .unwrap()
                .insert(key.into(), (Some(code), stdout.into()));
            self
        }
    }

    impl ToolQuery for ReplayTools {
        fn query(&self, _: &NodeRoot, tool: &str, args: &[&str]) -> Result<ToolAnswer> {
            let key = format!("{tool} {}", args[0]);
            let (code, out) = self
                .answers
                .lock()
                .unwrap()
                .get(&key)
                .cloned()
                .unwrap_or_else(|| panic!("no recorded answer for {key}"));
            interpret(&key, code, &out, || "no reason".into())
        }
    }

    #[test]
    fn first_document_and_exit_10_are_data() {
        // Before the one-document change: report, then an error line.
        let two = "[\n  {\"path\": \"/etc/config/dhcp\", \"what\": \"changed\"}\n]\n{\"error\":\"1 path(s) edited\",\"code\":10}\n";
        let a = interpret("v", Some(10), two, || unreachable!()).unwrap();
        assert_eq!(drift_of(a.doc).unwrap()[0].path, "/etc/config/dhcp");
        // After it: one document with the data and error/code.
        let one = r#"{"error":"1 path(s) edited","code":10,"drift":[{"path":"/x","what":"added"}],"lines":[]}"#;
        let a = interpret("v", Some(10), one, || unreachable!()).unwrap();
        assert_eq!(drift_of(a.doc).unwrap()[0].what, "added");
        // A real failure carries the tool's error.
        let e = interpret(
            "ns-ha-sync verify",
            Some(6),
            r#"{"error":"peer 10.99.0.2:22 does not answer","code":6}"#,
            || unreachable!(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ns-ha-sync verify: peer 10.99.0.2:22 does not answer"
        );
        let e = interpret("x", Some(1), "", || "boom".into()).unwrap_err();
        assert!(e.to_string().ends_with(": boom"), "{e}");
        assert!(interpret("x", Some(0), "not json", String::new).is_err());
    }

    #[test]
    fn the_runner_passes_root_and_json_to_the_sibling_tool() {
        let r = RecordingRunner::new();
        r.answer(
            "status --local",
            CmdOutput {
                status: Some(0),
                stdout: include_str!("../tests/fixtures/fw1-sync-status.json").into(),
                ..Default::default()
            },
        );
        let d = tempfile::tempdir().unwrap();
        let q = ToolRunner { runner: &r };
        let s = sync_status(&q, &NodeRoot::new(d.path()).unwrap()).unwrap();
        assert!(s.last_success.is_some());
        let call = &r.calls()[0];
        assert!(call[0].ends_with("/ns-ha-sync"), "{call:?}");
        assert_eq!(call[1..4], ["--root", d.path().to_str().unwrap(), "--json"]);
        assert_eq!(call[4..], ["status", "--local"]);
    }
}
