//! Shared library of the ns-ha tools.
//!
//! Every tool needs the same foundations: the node root (so two lab nodes can
//! share a machine), the cluster config model, atomic writes and a lock,
//! running programs without a shell, service backends, the SSH channel and
//! its wire protocol, config rendering, and one exit-code table. They live
//! here once so the tools stay small and agree with each other.

pub mod activate;
pub mod addresses;
pub mod authorized_keys;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod conntrackd;
pub mod control;
pub mod exit;
#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
pub mod fsutil;
pub mod health_config;
pub mod keepalived;
pub mod logging;
pub mod net;
pub mod peer;
pub mod platform;
pub mod proto;
pub mod role_config;
pub mod root;
pub mod service;
pub mod ssh;
pub mod sync_config;
pub mod upgrade;
pub mod vips;
pub mod vpn;
pub mod vrrp;
pub mod wireguard;

pub use exit::{code_of, fail, Code};
pub use root::NodeRoot;
