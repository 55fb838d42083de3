//! The README's pairing walk-through, run literally against the lab
//! (acceptance of issue 13): the `sh` block under "## Pairing two firewalls"
//! is read from README.md and run command by command, on the node its
//! `# on the primary` / `# on the backup` comments name. Only what the lab
//! must differ in is substituted: interface names and addresses, the node
//! root (every tool gets `--root`, `/etc/` is the node's), the key and the
//! fingerprint the earlier commands printed. It ends with `ns-ha-check
//! doctor`, which must exit 0.

use std::path::Path;

use ns_ha_tests::{net, Lab, SshServer};

/// The README's example values and the lab's.
const LAB_VALUES: &[(&str, &str)] = &[
    ("eth2", net::HA_IF),
    ("10.0.0.1", net::FW1_HA),
    ("10.0.0.2", net::FW2_HA),
    ("192.168.1.", "10.99.1."),
    ("203.0.113.10/24", "10.99.2.254/24"),
];

/// One step of the walk-through: the node and the shell text.
struct Step {
    node: &'static str,
    script: String,
}

/// The steps of the README's pairing block, in order.
fn walkthrough() -> Vec<Step> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let section = readme
        .split("## Pairing two firewalls")
        .nth(1)
        .expect("README has a pairing section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the pairing section has an sh block");
    let mut steps = Vec::new();
    let mut node = None;
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            if trimmed.starts_with("# on the primary") {
                node = Some("fw1");
            } else if trimmed.starts_with("# on the backup") {
                node = Some("fw2");
            }
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        let mut script = line.to_string();
        // A here-document runs as one step with its body.
        if let Some(tag) = line.split("<<'").nth(1).and_then(|t| t.split('\'').next()) {
            for body in lines.by_ref() {
                script.push('\n');
                script.push_str(body);
                if body == tag {
                    break;
                }
            }
        }
        steps.push(Step {
            node: node.expect("a command before any '# on the ...' comment"),
            script,
        });
    }
    steps
}

/// The lab's version of a README command run on `node`.
fn for_the_lab(lab: &Lab, node: &str, script: &str, key: &str, fingerprint: &str) -> String {
    let root = lab.root(node).to_string_lossy().into_owned();
    let mut s = script.to_string();
    for (readme, ours) in LAB_VALUES {
        s = s.replace(readme, ours);
    }
    s = s.replace("'ssh-ed25519 AAAA... ns-ha-primary'", &format!("'{key}'"));
    s = s.replace("SHA256:...", fingerprint);
    s = s.replace(" /etc/", &format!(" {root}/etc/"));
    s = s.replace(">/etc/", &format!(">{root}/etc/"));
    if s.starts_with("ns-ha-") {
        let (tool, rest) = s.split_once(' ').unwrap_or((&s, ""));
        let exe = lab.bin(tool).to_string_lossy().into_owned();
        s = format!("{exe} --root {root} {rest}");
    }
    s
}

#[test]
fn the_readme_pairing_walkthrough_ends_with_a_clean_doctor_over_openssh() {
    walkthrough_with(SshServer::Openssh);
}

/// The same walk-through with dropbear as both firewalls' SSH server (issue 11).
#[test]
fn the_readme_pairing_walkthrough_ends_with_a_clean_doctor_over_dropbear() {
    walkthrough_with(SshServer::Dropbear);
}

fn walkthrough_with(server: SshServer) {
    let steps = walkthrough();
    assert!(
        steps.len() >= 8
            && steps
                .last()
                .unwrap()
                .script
                .starts_with("ns-ha-check doctor"),
        "the walk-through should end with ns-ha-check doctor"
    );
    let lab = Lab::up_with(server);
    let (mut key, mut fingerprint) = (String::new(), String::new());
    for step in &steps {
        let script = for_the_lab(&lab, step.node, &step.script, &key, &fingerprint);
        let out = lab.sh(step.node, &script);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "README step on {} failed ({}):\n$ {script}\n--- stdout\n{stdout}--- stderr\n{}",
            step.node,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // init-primary prints the key, init-backup the fingerprint, first.
        let first = stdout.lines().next().unwrap_or_default().trim().to_string();
        if step.script.starts_with("ns-ha-init init-primary") {
            key = first;
        } else if step.script.starts_with("ns-ha-init init-backup") {
            fingerprint = first;
        }
    }
    assert!(key.starts_with("ssh-ed25519 "), "{key}");
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    // The primary's line is in the file this server reads, and only there.
    let body = key.split_whitespace().nth(1).expect("key body");
    assert!(
        lab.read("fw2", server.authorized_keys()).contains(body),
        "{} lacks the primary's key",
        server.authorized_keys()
    );
    for other in SshServer::ALL.into_iter().filter(|s| *s != server) {
        let p = lab.path("fw2", other.authorized_keys());
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        assert!(!text.contains(body), "{} has the key too", p.display());
    }
    // What the walk-through promises: fw1 holds the VIPs, fw2 does not.
    assert_eq!(lab.holders(net::LAN_VIP), ["fw1"]);
    assert_eq!(lab.holders(net::WAN_VIP), ["fw1"]);
}
