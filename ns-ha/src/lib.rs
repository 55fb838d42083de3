//! `ns-ha`: the five tools in one binary, for the packages.
//!
//! Each tool links the same libraries (common, ssh2, clap, serde, ...), so
//! five binaries carry five copies of them; on a router's flash that is most
//! of the package. The packages install this one binary as `/usr/sbin/ns-ha`
//! and the tools as links to it (`ns-ha-init -> ns-ha`, ...): it runs the
//! tool its name says. The tools stay separate commands with their own
//! `--help`, exit codes and JSON; this crate holds no logic, only the
//! dispatch, which is why it alone may depend on the tool crates. Developers
//! and the lab keep using the separate binaries.

use std::ffi::OsString;
use std::process::ExitCode;

use ns_ha_common::exit::Code;

/// The tools this binary runs, by the name it is called as.
pub const TOOLS: [&str; 5] = [
    "ns-ha-init",
    "ns-ha-sync",
    "ns-ha-role",
    "ns-ha-check",
    "ns-ha-vip",
];

/// Which tool a command line asks for: the name it was called as (a link),
/// or, called as `ns-ha`, its first argument (`ns-ha ns-ha-sync status`).
/// Returns the tool and its argument vector (with the tool's name first).
pub fn tool_of(args: Vec<OsString>) -> Result<(&'static str, Vec<OsString>), String> {
    let name = |a: &OsString| {
        std::path::Path::new(a)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let called = args.first().map(name).unwrap_or_default();
    if let Some(t) = TOOLS.iter().find(|t| **t == called) {
        return Ok((t, args));
    }
    let wanted = args.get(1).map(name).unwrap_or_default();
    match TOOLS.iter().find(|t| **t == wanted) {
        Some(t) => Ok((t, args.into_iter().skip(1).collect())),
        None => Err(format!(
            "ns-ha: run as one of {} (a link to this binary) or as `ns-ha TOOL ARGS...`",
            TOOLS.join(", ")
        )),
    }
}

/// The whole program.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    match tool_of(args.into_iter().collect()) {
        Ok(("ns-ha-init", a)) => ns_ha_init::main_with_args(a),
        Ok(("ns-ha-sync", a)) => ns_ha_sync::main_with_args(a),
        Ok(("ns-ha-role", a)) => ns_ha_role::main_with_args(a),
        Ok(("ns-ha-check", a)) => ns_ha_check::main_with_args(a),
        Ok((_, a)) => ns_ha_vip::main_with_args(a),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(Code::Usage.as_u8())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_link_name_or_the_first_argument_picks_the_tool() {
        let (t, a) = tool_of(args(&["/usr/sbin/ns-ha-role", "notify", "x"])).unwrap();
        assert_eq!(t, "ns-ha-role");
        assert_eq!(a, args(&["/usr/sbin/ns-ha-role", "notify", "x"]));
        let (t, a) = tool_of(args(&["/usr/sbin/ns-ha", "ns-ha-sync", "status"])).unwrap();
        assert_eq!(t, "ns-ha-sync");
        assert_eq!(a, args(&["ns-ha-sync", "status"]));
        for bad in [&["ns-ha"][..], &["ns-ha", "ls"], &["ns-ha-bogus", "x"]] {
            let e = tool_of(args(bad)).unwrap_err();
            assert!(e.contains("ns-ha-init, ns-ha-sync"), "{e}");
        }
    }
}
