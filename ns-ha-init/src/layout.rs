//! The node's platform as `init-primary`/`init-backup` record it.
//!
//! The platform comes from `--platform` or is detected under the node root
//! (`common::platform::detect`); the service backend follows the platform
//! unless `--service-backend` overrides it, so an OpenWrt-style node with
//! systemd (or the reverse) can still be described.

use anyhow::Result;

use ns_ha_common::platform::{self, InterfaceManager, Layout, Platform, SshServer};
use ns_ha_common::service::ServiceBackend;
use ns_ha_common::NodeRoot;

/// The platform facts `init-*` stores in `node.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlatform {
    pub platform: Platform,
    pub ssh_server: SshServer,
    pub service_backend: ServiceBackend,
    /// `--interface-manager` when given (else the platform's, not stored).
    pub interface_manager: Option<InterfaceManager>,
    /// Why this platform (given, or the file that told).
    pub platform_from: String,
}

impl NodePlatform {
    /// `--platform` if given, else detected; `--service-backend` if given,
    /// else the platform's.
    pub fn resolve(
        root: &NodeRoot,
        platform: Option<Platform>,
        backend: Option<ServiceBackend>,
    ) -> Result<NodePlatform> {
        let found = platform::detect(root)?;
        let (platform, platform_from) = match platform {
            Some(p) => (p, "--platform".to_string()),
            None => (found.platform, found.platform_from),
        };
        let layout = Layout::new(platform, found.ssh_server);
        Ok(NodePlatform {
            platform,
            ssh_server: found.ssh_server,
            service_backend: backend.unwrap_or(layout.service_backend),
            interface_manager: None,
            platform_from,
        })
    }

    pub fn layout(&self) -> Layout {
        Layout::new(self.platform, self.ssh_server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_is_given_or_detected_and_the_backend_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path()).unwrap();
        // Nothing under the root: OpenWrt-style with init.d (the lab).
        let p = NodePlatform::resolve(&root, None, None).unwrap();
        assert_eq!(p.platform, Platform::Openwrt);
        assert_eq!(p.service_backend, ServiceBackend::Initd);
        // Debian detected from os-release: systemd.
        std::fs::create_dir_all(root.path("/etc/ssh")).unwrap();
        std::fs::write(root.path("/etc/os-release"), "ID=debian\n").unwrap();
        std::fs::write(root.path("/etc/ssh/sshd_config"), "").unwrap();
        let p = NodePlatform::resolve(&root, None, None).unwrap();
        assert_eq!(p.platform, Platform::Debian);
        assert_eq!(p.ssh_server, SshServer::Openssh);
        assert_eq!(p.service_backend, ServiceBackend::Systemd);
        // Given: wins over the files; an explicit backend wins over the platform's.
        let p = NodePlatform::resolve(
            &root,
            Some(Platform::Openwrt),
            Some(ServiceBackend::Systemd),
        )
        .unwrap();
        assert_eq!(p.platform, Platform::Openwrt);
        assert_eq!(p.platform_from, "--platform");
        assert_eq!(p.service_backend, ServiceBackend::Systemd);
    }
}
