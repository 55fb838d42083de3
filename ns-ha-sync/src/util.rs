//! Small helpers shared by the sync modules: hex digests, the clock, a hashing
//! writer and a byte-counting stream.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::time::Instant;

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Most bytes read or written at once when file data is copied: a large
/// file costs few system calls.
pub const COPY_BUFFER: usize = 1 << 20;

/// A zeroed buffer to copy `size` bytes of file data through: no larger
/// than the data needs (a 1 MiB buffer allocated and zeroed for each file
/// of a few hundred bytes cost more than the file), at least 8 KiB, at most
/// [`COPY_BUFFER`].
pub fn copy_buffer(size: u64) -> Vec<u8> {
    vec![
        0u8;
        usize::try_from(size)
            .unwrap_or(COPY_BUFFER)
            .clamp(8 << 10, COPY_BUFFER)
    ]
}

/// From this size on, [`send_file_data`] reads on a thread of its own.
const READ_AHEAD_MIN: u64 = 8 << 20;
/// Chunks read ahead and not yet written (each [`COPY_BUFFER`] bytes).
const READ_AHEAD_DEPTH: usize = 4;

/// [`copy_file_data`] for a file sent to the backup: data of
/// [`READ_AHEAD_MIN`] or more is read ahead on a thread of its own, so the
/// kernel's copy out of the page cache runs on another core than the SSH
/// cipher, which bounds a large file's push (measured on a 500 MB file:
/// 1.7 s instead of 1.9 s). Not for hashing: sha256 over chunks read on
/// another core was slower than reading and hashing on one (0.41-0.49 s
/// instead of 0.35-0.38 s for the same file).
pub fn send_file_data<R: Read + Send, W: Write>(
    r: &mut R,
    w: &mut W,
    size: u64,
) -> std::io::Result<u64> {
    if size >= READ_AHEAD_MIN {
        copy_read_ahead(r, w)
    } else {
        copy_file_data(r, w, size)
    }
}

/// Copy `r` (about `size` bytes) to `w` through a [`copy_buffer`]; the
/// bytes copied.
pub fn copy_file_data<R: Read, W: Write>(r: &mut R, w: &mut W, size: u64) -> std::io::Result<u64> {
    let mut buf = copy_buffer(size);
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// [`send_file_data`] with a reader thread: chunks go to the writer through
/// a bounded queue and come back empty for the next read. A failed write
/// drops the queue, which stops the reader.
fn copy_read_ahead<R: Read + Send, W: Write>(r: &mut R, w: &mut W) -> std::io::Result<u64> {
    use std::sync::mpsc::{channel, sync_channel};
    let (full_tx, full_rx) = sync_channel::<std::io::Result<Vec<u8>>>(READ_AHEAD_DEPTH);
    let (empty_tx, empty_rx) = channel::<Vec<u8>>();
    std::thread::scope(|s| {
        s.spawn(move || loop {
            let mut buf = empty_rx
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(COPY_BUFFER));
            buf.clear();
            let chunk = Read::by_ref(r)
                .take(COPY_BUFFER as u64)
                .read_to_end(&mut buf)
                .map(|_| buf);
            let last = !matches!(&chunk, Ok(b) if b.len() == COPY_BUFFER);
            if full_tx.send(chunk).is_err() || last {
                return;
            }
        });
        let mut total = 0u64;
        for chunk in full_rx {
            let chunk = chunk?;
            w.write_all(&chunk)?;
            total += chunk.len() as u64;
            let _ = empty_tx.send(chunk);
        }
        Ok(total)
    })
}

/// Lowercase hex SHA-256 of a byte string (the manifest's content hash).
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Seconds since the epoch (the one wall clock, in `common::clock`).
pub use ns_ha_common::clock::now_secs;

/// A writer that hashes what goes through it on the way to `inner`.
pub struct HashingWriter<W> {
    pub inner: W,
    pub hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
        }
    }

    pub fn digest(self) -> (W, String) {
        (self.inner, hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A writer whose `flush` does nothing: frames written through it (each
/// `write_msg` flushes) go out together when the caller flushes the inner
/// writer once. Two small frames written one after the other would
/// otherwise leave as two TCP segments, the second held by Nagle's
/// algorithm (in the peer's sshd) until the first is acknowledged: up to
/// 40 ms of delayed ACK per exchange.
pub struct NoFlush<W>(pub W);

impl<W: Write> Write for NoFlush<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A stream that counts the bytes read from and written to it.
pub struct Counted<S> {
    pub inner: S,
    pub sent: u64,
    pub received: u64,
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> Self {
        Counted {
            inner,
            sent: 0,
            received: 0,
        }
    }
}

impl<S: Read> Read for Counted<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.received += n as u64;
        Ok(n)
    }
}

impl<S: Write> Write for Counted<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Append `bytes` to the file at `path` (created 0600), not fsynced: the
/// logs of records whose loss costs work only (the hash cache's, the
/// primary's pushes), whose readers skip a line a power cut damaged.
pub fn append_unsynced(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .with_context(|| format!("appending to {}", path.display()))
}

/// Where a run's time goes: each step's duration, logged at debug level
/// (`-vv`) as it ends, so a slow push can be traced step by step on both
/// nodes (the backup's steps come back in the commit reply).
#[derive(Debug)]
pub struct Spans {
    last: Instant,
    /// (step, microseconds), in order.
    pub steps: Vec<(String, u64)>,
}

impl Default for Spans {
    fn default() -> Self {
        Spans {
            last: Instant::now(),
            steps: Vec::new(),
        }
    }
}

impl Spans {
    /// The step that ends now: its time since the previous mark.
    pub fn mark(&mut self, step: &str) {
        let now = Instant::now();
        let us = now.duration_since(self.last).as_micros() as u64;
        log::debug!("timing: {step}: {:.1} ms", us as f64 / 1000.0);
        self.steps.push((step.to_string(), us));
        self.last = now;
    }

    /// Start counting from now (time before it belongs to no step).
    pub fn restart(&mut self) {
        self.last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_writer_matches_sha256() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        let (buf, d) = w.digest();
        assert_eq!(buf, b"abc");
        assert_eq!(
            d,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
    }

    #[test]
    fn copy_buffers_fit_the_data_and_copies_take_it_all() {
        assert_eq!(copy_buffer(200).len(), 8 << 10);
        assert_eq!(copy_buffer(300 << 10).len(), 300 << 10);
        assert_eq!(copy_buffer(500 << 20).len(), COPY_BUFFER);
        // A source longer than announced (a file that grew) is copied whole.
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        assert_eq!(
            copy_file_data(&mut &data[..], &mut out, 10).unwrap(),
            100_000
        );
        assert_eq!(out, data);
    }

    /// Large data goes through the reader thread: all of it, in order, a
    /// last short chunk included; a writer that fails stops the copy with
    /// its error instead of leaving the reader blocked.
    #[test]
    fn large_copies_read_ahead_whole_and_stop_at_a_failed_write() {
        let len = 3 * COPY_BUFFER + 12_345 + READ_AHEAD_MIN as usize;
        let data: Vec<u8> = (0..len as u32).map(|i| (i % 253) as u8).collect();
        let mut out = Vec::new();
        assert_eq!(
            send_file_data(&mut &data[..], &mut out, len as u64).unwrap(),
            len as u64
        );
        assert!(out == data, "the copy differs from the source");
        struct FailsAfter(usize);
        impl Write for FailsAfter {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if self.0 < b.len() {
                    return Err(std::io::Error::other("link cut"));
                }
                self.0 -= b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let err =
            send_file_data(&mut &data[..], &mut FailsAfter(COPY_BUFFER), len as u64).unwrap_err();
        assert_eq!(err.to_string(), "link cut");
    }
}
