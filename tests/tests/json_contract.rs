//! Issue 7 item 3 acceptance: every subcommand of every tool, run with
//! `--json` once where it fails and once where it succeeds, prints exactly
//! ONE JSON object on stdout; a success carries the fields docs/json.md
//! lists for it (read from the doc's `json-contract` block, so the doc and
//! the tools cannot drift apart), a failure carries `error` and `code` (the
//! exit status), plus the data fields where the command fails with data.
//!
//! Most runs need no lab: the real binaries against a temporary node root
//! (`--root`), broken (malformed config) for failures, a sample unpaired
//! primary for successes. What needs the peer or the real daemons (pairing,
//! cluster edits, push/verify, health, who-holds) runs in one lab.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ns_ha_tests::cluster::tool;
use ns_ha_tests::{bin, net, wait_until, Lab};

const TOOLS: [&str; 5] = [
    "ns-ha-init",
    "ns-ha-sync",
    "ns-ha-role",
    "ns-ha-check",
    "ns-ha-vip",
];

/// docs/json.md's contract: "tool command[ (variant)]" -> [(field, type)].
fn contract() -> BTreeMap<String, Vec<(String, String)>> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/json.md");
    let text = std::fs::read_to_string(&doc).expect("docs/json.md");
    let block = text
        .split("```json-contract\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("docs/json.md has a json-contract block");
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (key, fields) = l.split_once(": ").expect("'key: fields' line");
            if fields.trim() == "-" {
                return (key.to_string(), Vec::new());
            }
            let fields = fields
                .split(", ")
                .map(|f| {
                    let (n, t) = f.split_once(':').expect("field:type");
                    (n.to_string(), t.to_string())
                })
                .collect();
            (key.to_string(), fields)
        })
        .collect()
}

fn type_ok(v: &Value, ty: &str) -> bool {
    let (ty, nullable) = match ty.strip_suffix('?') {
        Some(t) => (t, true),
        None => (ty, false),
    };
    match v {
        Value::Null => nullable,
        Value::String(_) => ty == "string",
        Value::Number(_) => ty == "number",
        Value::Bool(_) => ty == "bool",
        Value::Array(_) => ty == "array",
        Value::Object(_) => ty == "object",
    }
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Exactly one JSON object on one line of stdout.
fn one_document(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "not one line of JSON: {}", describe(out));
    let v: Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", describe(out)));
    assert!(v.is_object(), "not a JSON object: {}", describe(out));
    v
}

/// Which runs were seen, to check that every command was run both ways.
#[derive(Default)]
struct Seen {
    ok: BTreeSet<String>,
    failed: BTreeSet<String>,
}

struct Checker {
    contract: BTreeMap<String, Vec<(String, String)>>,
    seen: Seen,
}

/// "tool command" of a contract key ("ns-ha-sync list (rules)" -> "ns-ha-sync list").
fn command_of(key: &str) -> String {
    key.split(" (").next().unwrap_or(key).to_string()
}

/// Commands the contract marks `-`: no document on success (their stdout
/// is a wire protocol); only their failure document is checked.
fn without_document(c: &BTreeMap<String, Vec<(String, String)>>) -> BTreeSet<String> {
    c.iter()
        .filter(|(_, f)| f.is_empty())
        .map(|(k, _)| command_of(k))
        .collect()
}

impl Checker {
    fn new() -> Checker {
        Checker {
            contract: contract(),
            seen: Seen::default(),
        }
    }

    fn fields(&self, doc: &Value, key: &str, out: &Output) {
        let fields = self
            .contract
            .get(key)
            .unwrap_or_else(|| panic!("docs/json.md has no contract for '{key}'"));
        for (name, ty) in fields {
            let v = doc
                .get(name.as_str())
                .unwrap_or_else(|| panic!("'{key}': no field '{name}' in {}", describe(out)));
            assert!(
                type_ok(v, ty),
                "'{key}': field '{name}' is not {ty}: {v}\n{}",
                describe(out)
            );
        }
    }

    /// A success: exit 0, one document with the contract's fields, no `error`.
    fn ok(&mut self, key: &str, out: &Output) -> Value {
        assert!(out.status.success(), "'{key}' failed: {}", describe(out));
        let doc = one_document(out);
        assert!(doc.get("error").is_none(), "'{key}': {}", describe(out));
        self.fields(&doc, key, out);
        self.seen.ok.insert(command_of(key));
        doc
    }

    /// A failure: non-zero exit, one document with `error` (string) and
    /// `code` (the exit status).
    fn failed(&mut self, key: &str, out: &Output) -> Value {
        let code = out.status.code().expect("exit code");
        assert_ne!(code, 0, "'{key}' did not fail: {}", describe(out));
        let doc = one_document(out);
        assert!(
            doc["error"].as_str().is_some_and(|e| !e.is_empty()),
            "'{key}': no error: {}",
            describe(out)
        );
        assert_eq!(doc["code"], code, "'{key}': code: {}", describe(out));
        // The stderr line says the same as `error`.
        let err = String::from_utf8_lossy(&out.stderr);
        if doc.as_object().is_none_or(|d| d.len() <= 2) {
            assert!(
                err.contains(doc["error"].as_str().unwrap_or_default()),
                "'{key}': stderr differs from error: {}",
                describe(out)
            );
        }
        self.seen.failed.insert(command_of(key));
        doc
    }

    /// A failure that keeps the command's data fields next to error and code.
    fn failed_with_data(&mut self, key: &str, out: &Output) -> Value {
        let doc = self.failed(key, out);
        self.fields(&doc, key, out);
        doc
    }
}

/// A node root in a temp dir.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        Root {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }

    /// Malformed node and cluster config: every command that reads them fails.
    fn broken() -> Root {
        let r = Root::new();
        r.write("etc/ns-ha/node.json", "{");
        r.write("etc/ns-ha/cluster.json", "{");
        r
    }

    /// An unpaired primary with a cluster config, HA not enabled.
    fn primary() -> Root {
        let r = Root::new();
        let cluster = serde_json::json!({
            "schema_version": 1,
            "cluster_id": "0123456789abcdef0123456789abcdef",
            "enabled": false,
            "ha": {"interface": "nsha-nope0", "primary_address": "10.99.250.1/24",
                   "backup_address": "10.99.250.2/24", "heartbeat_vip": "10.99.250.254"},
            "lans": [{"interface": "nsha-nope1", "vrid": 51, "primary_address": "10.99.251.1/24",
                      "backup_address": "10.99.251.2/24", "vips": ["10.99.251.254/24"]}],
        });
        let node = serde_json::json!({"schema_version": 1, "role": "primary", "peer_address": "10.99.250.2"});
        r.write("etc/ns-ha/cluster.json", &cluster.to_string());
        r.write("etc/ns-ha/node.json", &node.to_string());
        std::fs::create_dir_all(r.path("run")).expect("run");
        r
    }

    fn cmd(&self, tool: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin(tool));
        c.arg("--root")
            .arg(self.dir.path())
            .arg("--json")
            .args(args);
        // No ns-ha-sync next to ns-ha-role here: its push is skipped. The
        // other tools find their siblings (ns-ha-check runs ns-ha-role and
        // ns-ha-sync) next to themselves, in cargo's build directory.
        if tool == "ns-ha-role" {
            c.env("NS_HA_BIN_DIR", self.dir.path());
        }
        c
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        self.cmd(tool, args).output().expect("run tool")
    }
}

/// The subcommands a tool's `--help` lists.
fn subcommands(tool: &str) -> Vec<String> {
    let out = Command::new(bin(tool))
        .arg("--help")
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("Commands:\n")
        .nth(1)
        .expect("a Commands: section")
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_contract_lists_every_subcommand_of_every_tool() {
    let c = contract();
    let documented: BTreeSet<String> = c.keys().map(|k| command_of(k)).collect();
    for t in TOOLS {
        for sub in subcommands(t) {
            assert!(
                documented.contains(&format!("{t} {sub}")),
                "docs/json.md has no document for '{t} {sub}'"
            );
        }
    }
}

/// Every failing run, and the successes that need no peer.
fn offline(ck: &mut Checker) {
    let b = Root::broken();
    let fails: &[(&str, &[&str])] = &[
        (
            "ns-ha-init check",
            &[
                "check",
                "--role",
                "primary",
                "--ha-interface",
                "nsha-nope0",
                "--peer",
                "10.99.250.2",
            ],
        ),
        (
            "ns-ha-init init-primary",
            &[
                "init-primary",
                "--ha-interface",
                "nsha-nope0",
                "--peer",
                "10.99.250.2",
            ],
        ),
        (
            "ns-ha-init init-backup",
            &[
                "init-backup",
                "--ha-interface",
                "nsha-nope0",
                "--peer",
                "10.99.250.1",
                "--primary-key",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB ns-ha-primary",
            ],
        ),
        (
            "ns-ha-init pair",
            &["pair", "--host-key-fingerprint", "SHA256:abc"],
        ),
        (
            "ns-ha-init add-lan",
            &["add-lan", "--interface", "lan0", "--vip", "10.99.1.254/24"],
        ),
        (
            "ns-ha-init add-wan",
            &["add-wan", "--interface", "wan1", "--ipv4", "dhcp"],
        ),
        (
            "ns-ha-init remove-interface",
            &["remove-interface", "--interface", "lan0"],
        ),
        (
            "ns-ha-init add-vip",
            &["add-vip", "--interface", "lan0", "--vip", "10.99.1.253/24"],
        ),
        (
            "ns-ha-init remove-vip",
            &["remove-vip", "--vip", "10.99.1.253"],
        ),
        ("ns-ha-init show-config", &["show-config"]),
        ("ns-ha-init enable", &["enable"]),
        ("ns-ha-init disable", &["disable"]),
        ("ns-ha-init reset", &["reset"]),
        (
            "ns-ha-init upgrade-remote",
            &[
                "upgrade-remote",
                "/nonexistent/ns-ha-upgrade-probe_1.0_all.deb",
            ],
        ),
        ("ns-ha-sync list", &["list"]),
        ("ns-ha-sync push", &["push"]),
        ("ns-ha-sync diff", &["diff"]),
        ("ns-ha-sync receive", &["receive"]),
        ("ns-ha-sync verify", &["verify"]),
        ("ns-ha-sync status", &["status"]),
        ("ns-ha-sync recover", &["recover"]),
        ("ns-ha-sync watch", &["watch"]),
        ("ns-ha-role notify", &["notify", "GROUP", "ns_ha", "MASTER"]),
        (
            "ns-ha-role fifo-reader",
            &["fifo-reader", "/nonexistent/fifo"],
        ),
        ("ns-ha-role apply", &["apply", "--wait", "1"]),
        ("ns-ha-role status", &["status"]),
        (
            "ns-ha-role maintenance",
            &["maintenance", "on", "--wait", "0"],
        ),
        ("ns-ha-role sync-applied", &["sync-applied"]),
        ("ns-ha-role defaults", &["defaults", "--bogus"]),
        ("ns-ha-check status", &["status"]),
        ("ns-ha-check health", &["health"]),
        ("ns-ha-check monitor", &["monitor"]),
        ("ns-ha-check metrics", &["metrics"]),
        ("ns-ha-vip list", &["list"]),
        ("ns-ha-vip announce", &["announce"]),
        ("ns-ha-vip who-holds", &["who-holds", "10.99.1.254"]),
    ];
    for (key, args) in fails {
        let t = key.split(' ').next().expect("tool");
        ck.failed(key, &b.run(t, args));
    }
    // doctor on a broken node fails with its findings.
    let d = ck.failed_with_data("ns-ha-check doctor", &b.run("ns-ha-check", &["doctor"]));
    assert_eq!(d["healthy"], false);

    let p = Root::primary();
    ck.ok(
        "ns-ha-init show-config",
        &p.run("ns-ha-init", &["show-config"]),
    );
    ck.ok("ns-ha-sync list", &p.run("ns-ha-sync", &["list"]));
    ck.ok(
        "ns-ha-sync list (rules)",
        &p.run("ns-ha-sync", &["list", "--rules"]),
    );
    ck.ok("ns-ha-sync status", &p.run("ns-ha-sync", &["status"]));
    ck.ok("ns-ha-sync recover", &p.run("ns-ha-sync", &["recover"]));
    ck.ok(
        "ns-ha-role notify",
        &p.run("ns-ha-role", &["notify", "GROUP", "ns_ha", "BACKUP"]),
    );
    ck.ok(
        "ns-ha-role apply",
        &p.run("ns-ha-role", &["apply", "--wait", "5"]),
    );
    ck.ok("ns-ha-role status", &p.run("ns-ha-role", &["status"]));
    ck.ok(
        "ns-ha-role sync-applied",
        &p.run("ns-ha-role", &["sync-applied"]),
    );
    ck.ok("ns-ha-role defaults", &p.run("ns-ha-role", &["defaults"]));
    let m = ck.ok(
        "ns-ha-role maintenance",
        &p.run("ns-ha-role", &["maintenance", "on", "--wait", "0"]),
    );
    assert_eq!(m["maintenance"], true);
    // fifo-reader reads until the writer (keepalived) closes the FIFO.
    let fifo = p.path("run/test.fifo");
    let mk = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(mk.success());
    let reader = p
        .cmd(
            "ns-ha-role",
            &["fifo-reader", fifo.to_str().expect("utf-8")],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn fifo-reader");
    std::fs::write(&fifo, "GROUP \"ns_ha\" BACKUP 100\n").expect("write the FIFO");
    let out = reader.wait_with_output().expect("fifo-reader");
    let f = ck.ok("ns-ha-role fifo-reader", &out);
    assert_eq!(f["events"], 1, "{}", describe(&out));
    ck.ok("ns-ha-check status", &p.run("ns-ha-check", &["status"]));
    ck.ok("ns-ha-vip list", &p.run("ns-ha-vip", &["list"]));
    ck.ok("ns-ha-vip announce", &p.run("ns-ha-vip", &["announce"]));
    ck.ok(
        "ns-ha-init reset",
        &p.run("ns-ha-init", &["reset", "--yes"]),
    );
}

/// `tool --json args` on a lab firewall.
fn lab_run(lab: &Lab, node: &str, name: &str, args: &[&str]) -> Output {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    tool(lab, node, name, &a)
}

/// The successes that need the peer or the real daemons, and the failures
/// that carry data (kept files, drift, failed actions).
fn in_lab(ck: &mut Checker) {
    let lab = Lab::up();
    // The roles start dnsmasq on MASTER: `check` wants its config first
    // (removed again below to make an action fail).
    ns_ha_tests::cluster::configure_dnsmasq(&lab);
    let lan_vip = format!("{}/24", net::LAN_VIP);
    let wan_vip = format!("{}/24", net::WAN_VIP);
    ck.ok(
        "ns-ha-init check",
        &lab_run(
            &lab,
            "fw1",
            "ns-ha-init",
            &[
                "check",
                "--role",
                "primary",
                "--ha-interface",
                net::HA_IF,
                "--peer",
                net::FW2_HA,
            ],
        ),
    );
    let p = ck.ok(
        "ns-ha-init init-primary",
        &lab_run(
            &lab,
            "fw1",
            "ns-ha-init",
            &[
                "init-primary",
                "--ha-interface",
                net::HA_IF,
                "--peer",
                net::FW2_HA,
            ],
        ),
    );
    let key = p["public_key"].as_str().expect("public_key").to_string();
    let b = ck.ok(
        "ns-ha-init init-backup",
        &lab_run(
            &lab,
            "fw2",
            "ns-ha-init",
            &[
                "init-backup",
                "--ha-interface",
                net::HA_IF,
                "--peer",
                net::FW1_HA,
                "--primary-key",
                &key,
            ],
        ),
    );
    let fp = b["host_key_fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    ck.ok(
        "ns-ha-init pair",
        &lab_run(
            &lab,
            "fw1",
            "ns-ha-init",
            &["pair", "--host-key-fingerprint", &fp],
        ),
    );
    let init = |args: &[&str]| lab_run(&lab, "fw1", "ns-ha-init", args);
    ns_ha_tests::packages::dpkg_root(&lab, "fw2");
    let debs = tempfile::tempdir().expect("tempdir");
    let probe = ns_ha_tests::packages::probe_deb(debs.path(), "1.0");
    ck.ok(
        "ns-ha-init upgrade-remote",
        &init(&["upgrade-remote", probe.to_str().expect("utf-8 path")]),
    );
    ck.ok(
        "ns-ha-init add-lan",
        &init(&["add-lan", "--interface", net::WAN_IF, "--vip", &wan_vip]),
    );
    ck.ok(
        "ns-ha-init remove-interface",
        &init(&["remove-interface", "--interface", net::WAN_IF]),
    );
    // HA is not enabled yet: the role engine leaves the WANs alone.
    ck.ok(
        "ns-ha-init add-wan (vip)",
        &init(&[
            "add-wan",
            "--interface",
            net::WAN_IF,
            "--mode",
            "vip",
            "--vip",
            &wan_vip,
        ]),
    );
    ck.ok(
        "ns-ha-init remove-interface",
        &init(&["remove-interface", "--interface", net::WAN_IF]),
    );
    ck.ok(
        "ns-ha-init add-wan",
        &init(&["add-wan", "--interface", "wan1", "--ipv4", "10.99.3.1/24"]),
    );
    ck.ok(
        "ns-ha-init remove-interface",
        &init(&["remove-interface", "--interface", "wan1"]),
    );
    ck.ok(
        "ns-ha-init add-lan",
        &init(&["add-lan", "--interface", net::LAN_IF, "--vip", &lan_vip]),
    );
    ck.ok(
        "ns-ha-init add-vip",
        &init(&[
            "add-vip",
            "--interface",
            net::LAN_IF,
            "--vip",
            "10.99.1.253/24",
        ]),
    );
    ck.ok(
        "ns-ha-init remove-vip",
        &init(&["remove-vip", "--vip", "10.99.1.253"]),
    );
    ck.ok("ns-ha-init enable", &init(&["enable"]));
    assert!(
        lab.wait_holders(net::LAN_VIP, &["fw1"], Duration::from_secs(15)),
        "fw1 did not become MASTER"
    );

    // A failed action (dnsmasq's config removed): apply fails with its passes.
    // The role engine starts dnsmasq on becoming MASTER, after the VIP is up:
    // wait for that start, then stop dnsmasq without its config, so apply's own
    // start is the one that fails (a running dnsmasq is "unchanged").
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(100), || lab
            .status("fw1", "dnsmasq")),
        "the MASTER role did not start dnsmasq on fw1"
    );
    std::fs::remove_file(lab.path("fw1", "/etc/dnsmasq.conf")).expect("remove dnsmasq.conf");
    lab.stop("fw1", "dnsmasq");
    let role_fw1 = |args: &[&str]| lab_run(&lab, "fw1", "ns-ha-role", args);
    let a = ck.failed_with_data("ns-ha-role apply", &role_fw1(&["apply"]));
    assert_eq!(a["code"], 9, "{a}");
    lab.write("fw1", "/etc/dnsmasq.conf", "interface=lan0\nbind-dynamic\n");

    let sync = |node: &str, args: &[&str]| lab_run(&lab, node, "ns-ha-sync", args);
    ck.ok("ns-ha-sync push", &sync("fw1", &["push"]));
    ck.ok("ns-ha-sync diff", &sync("fw1", &["diff"]));
    ck.ok("ns-ha-sync verify", &sync("fw1", &["verify"]));
    ck.ok("ns-ha-sync verify (backup)", &sync("fw2", &["verify"]));
    let st = ck.ok("ns-ha-sync status", &sync("fw1", &["status"]));
    assert!(st["peer"].is_object(), "{st}");
    // Issue 13.4: after a successful push the backup's last attempt is known.
    assert_eq!(st["peer"]["last_attempt"]["ok"], true, "{st}");

    // Edited on the backup: verify fails with the drift, a push keeps it.
    lab.write("fw2", "/etc/dnsmasq.conf", "edited on the backup\n");
    let v = ck.failed_with_data("ns-ha-sync verify", &sync("fw1", &["verify"]));
    assert_eq!(v["drift"][0]["path"], "/etc/dnsmasq.conf", "{v}");
    let v = ck.failed_with_data("ns-ha-sync verify (backup)", &sync("fw2", &["verify"]));
    assert_eq!(v["code"], 10, "{v}");
    lab.write(
        "fw1",
        "/etc/dnsmasq.conf",
        "interface=lan0\nbind-dynamic\nno-hosts\n",
    );
    let k = ck.failed_with_data("ns-ha-sync push", &sync("fw1", &["push"]));
    assert_eq!(
        (k["code"].as_u64(), k["kept"][0].as_str()),
        (Some(8), Some("/etc/dnsmasq.conf")),
        "{k}"
    );
    ck.ok("ns-ha-sync push", &sync("fw1", &["push", "--force"]));

    // watch streams JSON lines: one push document per change.
    let root = lab.root("fw1");
    let exe = lab.bin("ns-ha-sync");
    let script = format!(
        "(sleep 1.5; echo '# changed' >> {r}/etc/dnsmasq.conf) & timeout 5 {exe} --root {r} --json watch",
        r = root.display(),
        exe = exe.display()
    );
    let out = lab.sh("fw1", &script);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("watch line ({e}): {l}")))
        .collect();
    assert!(
        !lines.is_empty(),
        "watch printed nothing: {}",
        describe(&out)
    );
    for l in &lines {
        let o = Output {
            status: out.status,
            stdout: format!("{l}\n").into_bytes(),
            stderr: Vec::new(),
        };
        assert!(l.get("error").is_none(), "{l}");
        ck.fields(l, "ns-ha-sync watch (line)", &o);
    }
    ck.seen.ok.insert("ns-ha-sync watch".into());

    // dnsmasq has its config now: the retry succeeds.
    let a = role_fw1(&["apply"]);
    assert!(a.status.success(), "{}", describe(&a));
    ck.ok(
        "ns-ha-check health",
        &lab_run(&lab, "fw1", "ns-ha-check", &["health"]),
    );
    ck.ok(
        "ns-ha-check health (list)",
        &lab_run(&lab, "fw1", "ns-ha-check", &["health", "--list"]),
    );
    ck.ok(
        "ns-ha-check metrics",
        &lab_run(&lab, "fw1", "ns-ha-check", &["metrics"]),
    );
    let d = lab_run(&lab, "fw1", "ns-ha-check", &["doctor"]);
    if d.status.success() {
        ck.ok("ns-ha-check doctor", &d);
    } else {
        // Not the point of this test: its shape still holds.
        let doc = ck.failed_with_data("ns-ha-check doctor", &d);
        panic!("doctor on a healthy pair is unhealthy: {doc}");
    }
    ck.ok(
        "ns-ha-vip who-holds",
        &lab_run(&lab, "fw2", "ns-ha-vip", &["who-holds", net::LAN_VIP]),
    );
    ck.ok("ns-ha-init disable", &init(&["disable"]));
}

#[test]
fn every_command_prints_one_document_failing_and_succeeding() {
    let mut ck = Checker::new();
    offline(&mut ck);
    in_lab(&mut ck);
    let all: BTreeSet<String> = ck.contract.keys().map(|k| command_of(k)).collect();
    let silent = without_document(&ck.contract);
    let missing_ok: Vec<&String> = all
        .difference(&ck.seen.ok)
        .filter(|c| !silent.contains(*c))
        .collect();
    let missing_failed: Vec<&String> = all.difference(&ck.seen.failed).collect();
    assert!(
        missing_ok.is_empty() && missing_failed.is_empty(),
        "never run successfully: {missing_ok:?}; never run failing: {missing_failed:?}"
    );
}
