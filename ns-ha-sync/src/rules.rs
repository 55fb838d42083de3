//! The sync set: which node paths are synced, and which rule decided it.
//!
//! Both nodes resolve the same rules from their own `cluster.json`: the
//! primary to know what to send, the backup to know what it may accept. The
//! receiver never takes the sender's word for what is in the set: a path is
//! written only if the backup's own rules say it is synced.
//!
//! A rule is an absolute path pattern (`*` and `?` match inside one
//! component) that covers the path and everything below it. The most specific
//! rule (most components) wins; on a tie an exclude beats an include. The
//! hard-coded never-sync list beats everything.

use anyhow::Result;
use ns_ha_common::config::ClusterConfig;
use ns_ha_common::exit::{fail, Code};
use ns_ha_common::sync_config::{
    glob_match, never_synced, profile_defaults, RuleData, SyncProfile, SyncSettings,
};
use ns_ha_common::NodeRoot;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::util::hex;

/// Whether a rule adds paths to the set or removes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Include,
    Exclude,
}

/// Where a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Built in and not overridable.
    Never,
    /// The profile's default list.
    Default,
    /// `sync.include` / `sync.exclude` in cluster.json.
    Custom,
}

/// One rule of the sync set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub pattern: String,
    pub action: Action,
    pub origin: Origin,
    pub reason: String,
    #[serde(skip)]
    components: Vec<String>,
}

impl Rule {
    fn new(pattern: &str, action: Action, origin: Origin, reason: &str) -> Result<Rule> {
        check_pattern(pattern)?;
        Ok(Rule {
            pattern: pattern.to_string(),
            action,
            origin,
            reason: reason.to_string(),
            components: components(pattern).map(str::to_string).collect(),
        })
    }

    /// Whether the rule covers `path` (the path itself or one of its ancestors matches).
    fn covers(&self, path: &[&str]) -> bool {
        path.len() >= self.components.len()
            && self
                .components
                .iter()
                .zip(path)
                .all(|(p, c)| glob_match(p, c))
    }

    /// The leading components without wildcards: where a walk for this rule starts.
    fn literal_prefix(&self) -> String {
        let lit: Vec<&str> = self
            .components
            .iter()
            .take_while(|c| !c.contains(['*', '?']))
            .map(String::as_str)
            .collect();
        format!("/{}", lit.join("/"))
    }

    /// One-line description for `list`.
    pub fn describe(&self) -> String {
        let origin = match self.origin {
            Origin::Never => "never-sync",
            Origin::Default => "default",
            Origin::Custom => "custom",
        };
        let action = match self.action {
            Action::Include => "include",
            Action::Exclude => "exclude",
        };
        format!("{origin} {action} {} ({})", self.pattern, self.reason)
    }
}

/// The verdict on one path.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    pub synced: bool,
    /// The rule that decided; `None` when no rule covers the path.
    pub rule: Option<&'a Rule>,
}

/// The resolved rules of one node.
#[derive(Debug, Clone)]
pub struct SyncSet {
    pub profile: SyncProfile,
    pub rules: Vec<Rule>,
    /// Files the role engine annotates on the backup (the crontab): compared
    /// and sent without its markers, see `role_config::strip_cron_markers`.
    pub role_managed: Vec<String>,
}

fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// A path or pattern as the sync channel accepts it: absolute, normalized, no
/// `.`/`..`, no empty components, no NUL, sane lengths.
pub fn check_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(fail(
            Code::Security,
            format!("path {path:?} refused: {why}"),
        ))
    };
    if !path.starts_with('/') {
        return bad("not absolute");
    }
    if path == "/" {
        return bad("the root itself");
    }
    if path.len() > 4096 || path.contains('\0') {
        return bad("too long or contains NUL");
    }
    if path.ends_with('/') || path.contains("//") {
        return bad("not normalized");
    }
    for c in path[1..].split('/') {
        if c == "." || c == ".." {
            return bad("contains . or ..");
        }
        if c.len() > 255 {
            return bad("component too long");
        }
    }
    Ok(())
}

fn check_pattern(pattern: &str) -> Result<()> {
    check_path(pattern).map_err(|e| {
        fail(
            Code::Config,
            format!("sync rule {pattern:?} is invalid ({e}): use an absolute path such as /etc/config/firewall"),
        )
    })
}

/// Resolve `auto` by looking at the node.
pub fn resolve_profile(root: &NodeRoot, profile: SyncProfile) -> SyncProfile {
    match profile {
        SyncProfile::Auto if ns_ha_common::platform::is_openwrt(root) => SyncProfile::Openwrt,
        SyncProfile::Auto => SyncProfile::Debian,
        p => p,
    }
}

impl SyncSet {
    /// The rules of this node from its settings.
    pub fn load(root: &NodeRoot, settings: &SyncSettings) -> Result<SyncSet> {
        let profile = resolve_profile(root, settings.profile);
        SyncSet::from_parts(profile, profile_defaults(profile), settings)
    }

    /// The rules of a node from its cluster config (defaults without one),
    /// with the role engine's crontab marked as role-managed.
    pub fn for_cluster(root: &NodeRoot, cluster: Option<&ClusterConfig>) -> Result<SyncSet> {
        let settings = cluster.map(|c| c.sync.clone()).unwrap_or_default();
        let mut set = SyncSet::load(root, &settings)?;
        let roles = cluster.map(|c| c.roles.clone()).unwrap_or_default();
        set.role_managed = vec![roles.crontab];
        Ok(set)
    }

    /// Whether `path` is compared and sent without the role engine's markers.
    pub fn is_role_managed(&self, path: &str) -> bool {
        self.role_managed.iter().any(|p| p == path)
    }

    /// Build from explicit parts (tests use their own default lists).
    pub fn from_parts(
        profile: SyncProfile,
        defaults: &[RuleData],
        settings: &SyncSettings,
    ) -> Result<SyncSet> {
        let mut rules = Vec::new();
        // The identity floor and the per-node configs (compiled in), and this
        // node's own sync state wherever sync.state_dir puts it.
        for (p, why) in never_synced() {
            rules.push(Rule::new(p, Action::Exclude, Origin::Never, why)?);
        }
        rules.push(Rule::new(
            &settings.state_dir,
            Action::Exclude,
            Origin::Never,
            "this node's sync state (sync.state_dir)",
        )?);
        for (p, why) in defaults {
            rules.push(Rule::new(p, Action::Include, Origin::Default, why)?);
        }
        for p in &settings.include {
            rules.push(Rule::new(
                p,
                Action::Include,
                Origin::Custom,
                "sync.include",
            )?);
        }
        for p in &settings.exclude {
            rules.push(Rule::new(
                p,
                Action::Exclude,
                Origin::Custom,
                "sync.exclude",
            )?);
        }
        Ok(SyncSet {
            profile,
            rules,
            role_managed: Vec::new(),
        })
    }

    /// Decide whether `path` (a checked node path) is synced.
    pub fn decide(&self, path: &str) -> Decision<'_> {
        let comps: Vec<&str> = components(path).collect();
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| r.origin == Origin::Never && r.covers(&comps))
        {
            return Decision {
                synced: false,
                rule: Some(r),
            };
        }
        let best = self
            .rules
            .iter()
            .filter(|r| r.covers(&comps))
            .max_by_key(|r| (r.components.len(), r.action == Action::Exclude));
        Decision {
            synced: best.is_some_and(|r| r.action == Action::Include),
            rule: best,
        }
    }

    pub fn is_synced(&self, path: &str) -> bool {
        self.decide(path).synced
    }

    /// Whether `path` lies at or below an include rule (inside the area the
    /// sync manages, whatever excludes say). Directories there must be real
    /// directories on the backup, never symlinks.
    pub fn in_area(&self, path: &str) -> bool {
        let comps: Vec<&str> = components(path).collect();
        self.rules
            .iter()
            .any(|r| r.action == Action::Include && r.covers(&comps))
    }

    /// Whether an include rule starts strictly below `dir` (so an excluded
    /// directory must still be walked).
    pub fn has_include_below(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.rules
            .iter()
            .any(|r| r.action == Action::Include && r.pattern.starts_with(&prefix))
    }

    /// Where to start walking: the literal prefix of each include, without
    /// those lying below another.
    pub fn walk_roots(&self) -> Vec<String> {
        let mut roots: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.action == Action::Include)
            .map(Rule::literal_prefix)
            .collect();
        roots.sort();
        roots.dedup();
        let all = roots.clone();
        roots.retain(|r| {
            !all.iter()
                .any(|o| o != r && (o == "/" || r.starts_with(&format!("{o}/"))))
        });
        roots
    }

    /// A digest of the rules, so the nodes can tell whether they agree.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for r in &self.rules {
            h.update(format!("{:?} {}\n", r.action, r.pattern));
        }
        hex(&h.finalize())
    }
}

/// What a node path is, as far as resolving a symlink needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    Link(String),
    /// A file or anything else that is not a directory.
    Other,
    Absent,
    /// Cannot be inspected (or a link whose target is not UTF-8).
    Unreadable,
}

/// Most links followed while resolving one target (the kernel's MAXSYMLINKS).
pub const MAX_LINK_HOPS: usize = 40;

/// What `path` is on the node's disk (never following a link).
pub fn disk_node(root: &NodeRoot, path: &str) -> Node {
    let live = root.path(path);
    match std::fs::symlink_metadata(&live) {
        Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&live) {
            Ok(t) => t
                .to_str()
                .map(|t| Node::Link(t.to_string()))
                .unwrap_or(Node::Unreadable),
            Err(_) => Node::Unreadable,
        },
        Ok(m) if m.is_dir() => Node::Dir,
        Ok(_) => Node::Other,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Node::Absent,
        Err(_) => Node::Unreadable,
    }
}

impl SyncSet {
    /// Whether `path` is a strict ancestor of what an include rule covers (a
    /// directory such as `/etc` that a path into the set passes through).
    pub fn leads_to_area(&self, path: &str) -> bool {
        let comps: Vec<&str> = components(path).collect();
        self.rules.iter().any(|r| {
            r.action == Action::Include
                && r.components.len() > comps.len()
                && r.components
                    .iter()
                    .zip(&comps)
                    .all(|(p, c)| glob_match(p, c))
        })
    }

    /// Where the symlink `link -> target` leads, resolved the way the kernel
    /// resolves it: component by component, following every link met (as
    /// `lookup` says the node holds them), at most [`MAX_LINK_HOPS`] links.
    /// `Err` (the reason) unless the end is synced and every path met on the
    /// way is synced or a directory leading to the set (`/etc`): a path
    /// outside the set can change under the sync, so a target through it
    /// cannot be shown to stay inside.
    pub fn contain_link(
        &self,
        link: &str,
        target: &str,
        lookup: &mut dyn FnMut(&str) -> Node,
    ) -> std::result::Result<String, String> {
        // The link's own directory: a real directory inside the area (the
        // receiver checks its ancestors), the system's layout above it.
        let mut stack: Vec<String> = if target.starts_with('/') {
            Vec::new()
        } else {
            let mut s: Vec<String> = components(link).map(str::to_string).collect();
            s.pop();
            s
        };
        let mut queue: std::collections::VecDeque<String> =
            components(target).map(str::to_string).collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            match c.as_str() {
                "." => {}
                ".." => {
                    stack.pop();
                }
                _ => {
                    stack.push(c);
                    let here = format!("/{}", stack.join("/"));
                    if !self.is_synced(&here) && !self.leads_to_area(&here) {
                        return Err(format!("it passes through {here}, outside the sync set"));
                    }
                    match lookup(&here) {
                        Node::Link(t) => {
                            hops += 1;
                            if hops > MAX_LINK_HOPS {
                                return Err(format!(
                                    "more than {MAX_LINK_HOPS} links to follow (a loop)"
                                ));
                            }
                            stack.pop();
                            if t.starts_with('/') {
                                stack.clear();
                            }
                            for c in components(&t).collect::<Vec<_>>().into_iter().rev() {
                                queue.push_front(c.to_string());
                            }
                        }
                        Node::Other if !queue.is_empty() => {
                            return Err(format!("it passes through {here}, not a directory"))
                        }
                        Node::Unreadable => return Err(format!("{here} cannot be inspected")),
                        Node::Dir | Node::Other | Node::Absent => {}
                    }
                }
            }
        }
        let end = format!("/{}", stack.join("/"));
        if self.is_synced(&end) {
            Ok(end)
        } else {
            Err(format!("it resolves to {end}, outside the sync set"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(include: &[&str], exclude: &[&str]) -> SyncSet {
        let settings = SyncSettings {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        SyncSet::from_parts(
            SyncProfile::Openwrt,
            ns_ha_common::sync_config::OPENWRT_DEFAULTS,
            &settings,
        )
        .unwrap()
    }

    /// Issue 9: an IPsec tunnel configured on the primary starts on the
    /// backup after a failover only if strongSwan's files travel, in both
    /// profiles' defaults: swanctl's tree, the legacy starter's files and
    /// the daemon's settings. Look-alikes next to them stay out.
    #[test]
    fn strongswan_files_are_synced_in_both_profiles() {
        for (profile, defaults) in [
            (
                SyncProfile::Openwrt,
                ns_ha_common::sync_config::OPENWRT_DEFAULTS,
            ),
            (
                SyncProfile::Debian,
                ns_ha_common::sync_config::DEBIAN_DEFAULTS,
            ),
        ] {
            let s = SyncSet::from_parts(profile, defaults, &SyncSettings::default()).unwrap();
            for path in [
                "/etc/swanctl/swanctl.conf",
                "/etc/swanctl/conf.d/rw.conf",
                "/etc/swanctl/private/gw.pem",
                "/etc/swanctl/x509ca/ca.pem",
                "/etc/ipsec.conf",
                "/etc/ipsec.secrets",
                "/etc/ipsec.d/cacerts/ca.pem",
                "/etc/ipsec.user",
                "/etc/strongswan.conf",
                "/etc/strongswan.d/charon/kernel-libipsec.conf",
            ] {
                assert!(s.is_synced(path), "{profile:?}: {path} is not synced");
            }
            for path in ["/etc/ipsec", "/etc/strongswan", "/etc/swanctl.bak"] {
                assert!(!s.is_synced(path), "{profile:?}: {path} is synced");
            }
            // Named one by one, so the walk does not take all of /etc.
            assert!(
                !s.walk_roots().contains(&"/etc".to_string()),
                "{profile:?}: {:?}",
                s.walk_roots()
            );
        }
    }

    /// Issue 8 item 3: the rules the receiver checks every path against carry
    /// the identity floor and this node's own state_dir, even for settings
    /// that never went through validation (a hand-edited or older
    /// cluster.json). Before, an include of /root synced /root/.ssh/id_*,
    /// and a state_dir under an include was synced.
    #[test]
    fn the_identity_floor_and_own_state_dir_beat_any_include() {
        let settings = SyncSettings {
            include: vec!["/root".into(), "/srv".into(), "/etc/ssh".into()],
            state_dir: "/srv/ns-ha-state".into(),
            ..Default::default()
        };
        let s = SyncSet::from_parts(SyncProfile::None, &[], &settings).unwrap();
        for floor in [
            "/root/.ssh",
            "/root/.ssh/id_ed25519",
            "/root/.ssh/authorized_keys",
            "/root/.ssh/rc",
            "/etc/ssh/ssh_host_ed25519_key",
            "/srv/ns-ha-state",
            "/srv/ns-ha-state/applied.json",
        ] {
            let d = s.decide(floor);
            assert!(!d.synced, "{floor} is synced");
            assert_eq!(d.rule.map(|r| r.origin), Some(Origin::Never), "{floor}");
        }
        for synced in ["/root/notes", "/srv/www/index.html", "/etc/ssh/sshd_config"] {
            assert!(s.is_synced(synced), "{synced}");
        }
    }

    #[test]
    fn most_specific_rule_wins_and_never_list_beats_includes() {
        let s = set(
            &["/etc/config/network", "/etc/extra"],
            &["/etc/config/secret*"],
        );
        assert!(s.is_synced("/etc/config/firewall"));
        assert!(s.is_synced("/etc/config"));
        let d = s.decide("/etc/config/network");
        assert!(!d.synced);
        assert_eq!(d.rule.unwrap().origin, Origin::Never);
        assert!(!s.is_synced("/etc/config/secrets"));
        assert!(s.is_synced("/etc/extra/a/b"));
        assert!(!s.is_synced("/etc/ns-ha/cluster.json"));
        assert!(!s.is_synced("/etc/ns-ha/id_ed25519"));
        assert!(!s.is_synced("/root/.ssh/authorized_keys"));
        assert!(!s.is_synced("/etc/ssh/ssh_host_ed25519_key"));
        assert!(!s.is_synced("/etc/keepalived/keepalived.conf"));
        assert!(!s.is_synced("/etc/conntrackd/conntrackd.conf"));
        assert!(!s.is_synced("/etc/passwdx"));
        assert!(s.decide("/usr/bin/x").rule.is_none());
    }

    #[test]
    fn include_below_exclude_is_walked() {
        let s = set(&["/etc/nginx/keep"], &["/etc/nginx"]);
        assert!(!s.is_synced("/etc/nginx/a"));
        assert!(s.is_synced("/etc/nginx/keep/x"));
        assert!(s.has_include_below("/etc/nginx"));
        assert!(s.walk_roots().contains(&"/etc/nginx".to_string()));
        assert!(!s.walk_roots().contains(&"/etc/nginx/keep".to_string()));
    }

    #[test]
    fn paths_are_checked() {
        for bad in [
            "etc/x",
            "/",
            "/etc/../x",
            "/etc/./x",
            "/etc//x",
            "/etc/x/",
            "/etc/\0",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        check_path("/etc/config/firewall").unwrap();
        assert!(SyncSet::from_parts(
            SyncProfile::None,
            &[],
            &SyncSettings {
                include: vec!["relative".into()],
                ..Default::default()
            }
        )
        .is_err());
    }

    /// Issue 8 item 7: containment follows links the way the kernel does.
    #[test]
    fn symlinks_are_resolved_through_links_before_they_are_trusted() {
        let s = set(&["/etc/extra"], &[]);
        let links: std::collections::HashMap<&str, &str> = [
            ("/etc/config/d", "."),
            ("/etc/config/e", "d/d/../../root/.ssh/authorized_keys"),
            ("/etc/config/loop1", "loop2"),
            ("/etc/config/loop2", "loop1"),
            ("/etc/config/self", "self/x"),
            ("/etc/config/a", "b"),
            ("/etc/config/b", "../extra/c"),
            ("/etc/config/up", ".."),
            ("/etc/config/out", "/tmp"),
        ]
        .into();
        let dirs = ["/etc", "/etc/config", "/etc/extra", "/tmp", "/root"];
        let mut lookup = |p: &str| match links.get(p) {
            Some(t) => Node::Link(t.to_string()),
            None if dirs.contains(&p) => Node::Dir,
            None if p == "/etc/config/firewall" => Node::Other,
            None => Node::Absent,
        };
        let mut ok = |link: &str, t: &str| s.contain_link(link, t, &mut lookup);
        // The case: textually /etc/config/root/..., really /root/....
        let e = ok("/etc/config/e", "d/d/../../root/.ssh/authorized_keys").unwrap_err();
        assert!(e.contains("/root"), "{e}");
        // Plain targets inside the set, relative and absolute, dangling too.
        assert_eq!(
            ok("/etc/config/l", "firewall").as_deref(),
            Ok("/etc/config/firewall")
        );
        assert_eq!(
            ok("/etc/config/l", "/etc/extra/x").as_deref(),
            Ok("/etc/extra/x")
        );
        assert_eq!(
            ok("/etc/config/l", "../extra/new").as_deref(),
            Ok("/etc/extra/new")
        );
        // A chain that stays inside, and one through a link leading out.
        assert_eq!(ok("/etc/config/l", "a").as_deref(), Ok("/etc/extra/c"));
        assert!(ok("/etc/config/l", "out/x").unwrap_err().contains("/tmp"));
        assert!(ok("/etc/config/l", "up/issue").is_err());
        assert!(
            ok("/etc/config/l", "up/shadow").is_ok(),
            "/etc/shadow is synced"
        );
        assert!(ok("/etc/config/l", "d/d/firewall").is_ok());
        // Loops end at the hop bound.
        assert!(ok("/etc/config/l", "loop1").unwrap_err().contains("loop"));
        assert!(ok("/etc/config/self", "self/x")
            .unwrap_err()
            .contains("loop"));
        // Absolute targets and climbs outside, through a file, to the root.
        assert!(ok("/etc/config/l", "/etc/issue").is_err());
        assert!(ok("/etc/config/l", "/root/../etc/config/firewall").is_err());
        // /tmp leads to /tmp/dhcp.leases: passing through it is the system's layout.
        assert!(ok("/etc/config/l", "/tmp/../etc/config/firewall").is_ok());
        assert!(ok("/etc/config/l", "../../../../etc/config/x").is_ok());
        assert!(ok("/etc/config/l", "../../..").is_err());
        assert!(ok("/etc/config/l", "firewall/x")
            .unwrap_err()
            .contains("not a directory"));
        assert!(ok("/etc/config/l", "../network").is_err(), "never-sync");
    }

    #[test]
    fn globs() {
        assert!(glob_match("ssh_host_*", "ssh_host_ed25519_key"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
    }
}
