//! A one-shot `push` (cron, the role engine, by hand) handed to the running
//! `watch`, which pushes over the SSH session it keeps open.
//!
//! A new SSH connection costs about 0.3 s, most of a small push. `watch`
//! listens on a local socket (`PUSH_SOCKET`, mode 0600 in the root-only
//! `/run/ns-ha`, peers checked by their credentials: root or the watcher's
//! own user); `push` tries it first and, when a watcher answers, prints the
//! watcher's report of the push as its own, exit code included. With no
//! watcher (no socket, or a stale one) `push` connects itself, as before.
//! The push is the same function either way, under the same sync lock.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use ns_ha_common::cli::Report;
use ns_ha_common::exit::{fail, Code};
use ns_ha_common::NodeRoot;

use crate::sender::PushOptions;

/// The watcher's socket, under the node root.
pub const PUSH_SOCKET: &str = "/run/ns-ha/sync-push.sock";

/// How long either side waits for the other's request line (the push
/// itself may take as long as it takes).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a one-shot `push` asks the watcher to do (one JSON line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    pub force: bool,
    pub recheck: bool,
    pub even_if_backup_is_master: bool,
}

impl PushRequest {
    pub fn of(opts: PushOptions) -> PushRequest {
        PushRequest {
            force: opts.force,
            recheck: opts.recheck,
            even_if_backup_is_master: opts.even_if_backup_is_master,
        }
    }

    pub fn options(self) -> PushOptions {
        PushOptions {
            force: self.force,
            recheck: self.recheck,
            even_if_backup_is_master: self.even_if_backup_is_master,
            dry_run: false,
        }
    }
}

/// The watcher's answer: the push's report as `push` would print it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PushAnswer {
    human: String,
    json: serde_json::Value,
    code: u8,
    error: Option<String>,
}

fn code_from(n: u8) -> Code {
    Code::TABLE
        .iter()
        .map(|(c, _)| *c)
        .find(|c| c.as_u8() == n)
        .unwrap_or(Code::Failure)
}

impl PushAnswer {
    fn of(result: Result<Report>) -> PushAnswer {
        match result {
            Ok(r) => PushAnswer {
                human: r.human,
                json: r.json,
                code: r.code.as_u8(),
                error: r.error,
            },
            Err(e) => PushAnswer {
                human: String::new(),
                json: serde_json::Value::Null,
                code: ns_ha_common::exit::code_of(&e).as_u8(),
                error: Some(format!("{e:#}")),
            },
        }
    }

    fn into_result(self) -> Result<Report> {
        let code = code_from(self.code);
        match self.error {
            Some(e) if self.json.is_null() => Err(fail(code, e)),
            error => Ok(Report {
                human: self.human,
                json: self.json,
                code,
                error,
            }),
        }
    }
}

/// The socket path of a node.
pub fn socket_path(root: &NodeRoot) -> PathBuf {
    root.path(PUSH_SOCKET)
}

/// Hand the push to a running watcher: `None` when none listens (push
/// yourself), else the watcher's report of the push.
pub fn try_push(path: &Path, req: PushRequest) -> Option<Result<Report>> {
    let stream = UnixStream::connect(path).ok()?;
    log::debug!("a running watch takes the push");
    Some(ask(stream, req))
}

fn ask(mut stream: UnixStream, req: PushRequest) -> Result<Report> {
    let gone = |e: std::io::Error| {
        fail(
            Code::Peer,
            format!("the running ns-ha-sync watch did not answer the push ({e}): retry, or stop the watcher and push"),
        )
    };
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(gone)?;
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(gone)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(gone)?;
    let answer: PushAnswer = serde_json::from_str(&answer).map_err(|e| {
        fail(
            Code::Peer,
            format!("the running ns-ha-sync watch ended during the push ({e}): see its log, then push again"),
        )
    })?;
    answer.into_result()
}

/// The watcher's end: a listening socket, removed when dropped.
pub struct PushServer {
    listener: UnixListener,
    path: PathBuf,
}

impl PushServer {
    /// Listen on `path` (mode 0600, in a dir only root can write). A socket
    /// left by a watcher that died is replaced; one a live watcher answers
    /// on is refused (one watcher per node).
    pub fn bind(path: &Path) -> Result<PushServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if UnixStream::connect(path).is_ok() {
            return Err(fail(
                Code::Conflict,
                format!(
                    "another ns-ha-sync watch answers on {}: stop it first (one watcher per node)",
                    path.display()
                ),
            ));
        }
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(PushServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// What poll watches to learn that a push was handed over.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.listener.as_fd()
    }

    /// Serve the pushes handed over so far, each with `push`.
    pub fn serve_pending(&self, push: &mut dyn FnMut(PushRequest) -> Result<Report>) {
        while let Ok((stream, _)) = self.listener.accept() {
            if let Err(e) = serve_one(stream, push) {
                log::warn!("a push handed over by ns-ha-sync push failed: {e:#}");
            }
        }
    }
}

impl Drop for PushServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_one(
    stream: UnixStream,
    push: &mut dyn FnMut(PushRequest) -> Result<Report>,
) -> Result<()> {
    stream.set_nonblocking(false)?;
    let cred = getsockopt(&stream, PeerCredentials).context("reading the peer's credentials")?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() != 0 && cred.uid() != me {
        return Err(fail(
            Code::Security,
            format!(
                "a push handed over by uid {} refused: root only",
                cred.uid()
            ),
        ));
    }
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let req: PushRequest = serde_json::from_str(&line)
        .map_err(|e| fail(Code::Usage, format!("malformed push request: {e}")))?;
    let answer = PushAnswer::of(push(req));
    let mut out = serde_json::to_vec(&answer)?;
    out.push(b'\n');
    (&stream).write_all(&out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_is_handed_to_the_server_and_its_report_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/ns-ha/sync-push.sock");
        assert!(try_push(&path, PushRequest::default()).is_none());
        let server = PushServer::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // One watcher per node.
        assert!(PushServer::bind(&path).is_err());
        let client = {
            let path = path.clone();
            std::thread::spawn(move || {
                let req = PushRequest {
                    force: true,
                    ..Default::default()
                };
                (
                    try_push(&path, req).unwrap(),
                    try_push(&path, PushRequest::default()).unwrap(),
                )
            })
        };
        let mut seen = Vec::new();
        while seen.len() < 2 {
            server.serve_pending(&mut |req| {
                seen.push(req);
                if req.force {
                    Ok(
                        Report::new("pushed\n", serde_json::json!({"generation": 7}))
                            .failed_if(Err(fail(Code::Conflict, "1 path kept"))),
                    )
                } else {
                    Err(fail(Code::Peer, "backup unreachable"))
                }
            });
            std::thread::sleep(Duration::from_millis(5));
        }
        let (kept, failed) = client.join().unwrap();
        let kept = kept.unwrap();
        assert_eq!(kept.human, "pushed\n");
        assert_eq!(kept.json["generation"], 7);
        assert_eq!(kept.code, Code::Conflict);
        assert_eq!(kept.error.as_deref(), Some("1 path kept"));
        let failed = failed.unwrap_err();
        assert_eq!(ns_ha_common::exit::code_of(&failed), Code::Peer);
        assert!(failed.to_string().contains("backup unreachable"));
        assert!(seen[0].force && !seen[1].force);
        drop(server);
        assert!(!path.exists(), "the socket outlived its watcher");
        // A stale socket (its watcher gone) is replaced.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(try_push(&path, PushRequest::default()).is_none());
        PushServer::bind(&path).unwrap();
    }
}
