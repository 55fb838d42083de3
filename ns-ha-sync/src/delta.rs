//! Delta transfer of large files changed in part (threat-shield lists of tens
//! of MB that change a few lines at a time).
//!
//! The rsync algorithm, from the `fast_rsync` crate (Dropbox's librsync in
//! Rust, SIMD rolling checksums) rather than a hand-written one: the backup
//! sends the block signature of its copy, the primary answers with a delta
//! (copy this block, insert these bytes), the backup rebuilds the file from
//! its copy. The signature's checksums (MD4) are not trusted: the backup
//! checks its base against the hash the primary expects before it signs, and
//! the rebuilt file against the announced sha256 before it stages it; when
//! either differs the file travels whole (see `receiver::staging`).

use anyhow::Result;
use fast_rsync::{apply_limited, diff, Signature, SignatureOptions};

use ns_ha_common::exit::{fail, Code};

/// Files below this size travel whole: a full copy of 64 KiB costs less on
/// the HA link than the two round trips and the backup's read a delta needs.
pub const DELTA_MIN: u64 = 64 << 10;
/// Files above this size travel whole: a delta holds the file (and the
/// backup its copy) in memory, which bounds the receiver's memory
/// (README "Limits").
pub const DELTA_MAX: u64 = 128 << 20;
/// Bytes of the MD4 block hash kept in a signature: 8 is librsync's
/// default; a rare false match only costs a full copy (the sha256 decides).
const HASH_BYTES: u32 = 8;

/// Whether a file of `size` bytes, which the backup holds in another
/// version, goes as a delta.
pub fn worth_it(size: u64) -> bool {
    (DELTA_MIN..=DELTA_MAX).contains(&size)
}

/// Block size for a base of `len` bytes: about its square root (rsync's
/// rule), between 2 KiB and 64 KiB, so the signature stays near 12 bytes ×
/// sqrt(len) and a changed line costs one block.
pub fn block_size(len: usize) -> u32 {
    let root = (len as f64).sqrt() as u32;
    root.clamp(2 << 10, 64 << 10).next_multiple_of(1024)
}

/// The signature of the backup's copy.
pub fn signature(base: &[u8]) -> Vec<u8> {
    Signature::calculate(
        base,
        SignatureOptions {
            block_size: block_size(base.len()),
            crypto_hash_size: HASH_BYTES,
        },
    )
    .into_serialized()
}

/// The delta that turns the copy behind `signature` into `data`.
pub fn make(signature: Vec<u8>, data: &[u8]) -> Result<Vec<u8>> {
    let sig = Signature::deserialize(signature)
        .map_err(|_| fail(Code::Peer, "the backup sent a malformed block signature"))?;
    let mut out = Vec::new();
    diff(&sig.index(), data, &mut out)
        .map_err(|e| fail(Code::Peer, format!("cannot compute a delta: {e}")))?;
    Ok(out)
}

/// Rebuild a file of `size` bytes from `base` and `delta`; a delta that
/// would write more is refused (a broken or hostile one cannot grow the
/// result beyond what was announced).
pub fn apply(base: &[u8], delta: &[u8], size: u64) -> Result<Vec<u8>> {
    let size = usize::try_from(size).map_err(|_| fail(Code::Security, "file too large"))?;
    let mut out = Vec::with_capacity(size);
    apply_limited(base, delta, &mut out, size)
        .map_err(|e| fail(Code::Peer, format!("the delta does not apply: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: usize) -> Vec<u8> {
        (0..n as u32)
            .flat_map(|i| {
                format!("10.{}.{}.{}\n", (i >> 16) % 256, (i >> 8) % 256, i % 256).into_bytes()
            })
            .collect()
    }

    #[test]
    fn a_small_edit_of_a_large_file_costs_a_block_not_the_file() {
        let old = list(700_000);
        let mut new = old.clone();
        let at = old.len() / 2;
        new[at..at + 4].copy_from_slice(b"9999");
        new.extend_from_slice(b"10.1.2.3\n");
        let sig = signature(&old);
        assert!(sig.len() < 64 << 10, "signature of {} bytes", sig.len());
        let d = make(sig, &new).unwrap();
        assert!(
            d.len() < 3 * block_size(old.len()) as usize,
            "delta of {} bytes",
            d.len()
        );
        assert_eq!(apply(&old, &d, new.len() as u64).unwrap(), new);
    }

    #[test]
    fn a_delta_against_another_base_does_not_rebuild_the_file() {
        let old = list(100_000);
        let mut new = old.clone();
        new[10..14].copy_from_slice(b"abcd");
        let d = make(signature(&old), &new).unwrap();
        let mut other = old.clone();
        other[50_000..50_004].copy_from_slice(b"zzzz");
        // Applies (copies blocks by offset) but yields other bytes: the
        // receiver's sha256 check is what catches it.
        let rebuilt = apply(&other, &d, new.len() as u64).unwrap();
        assert_ne!(rebuilt, new);
        // A delta that writes more than announced is refused.
        assert!(apply(&old, &d, new.len() as u64 - 1).is_err());
        assert!(make(b"not a signature".to_vec(), &new).is_err());
    }

    #[test]
    fn block_size_follows_the_square_root_within_bounds() {
        assert_eq!(block_size(1000), 2048);
        assert_eq!(block_size(10 << 20), 4096);
        assert_eq!(block_size(1 << 40), 64 << 10);
        assert!(worth_it(DELTA_MIN) && worth_it(DELTA_MAX));
        assert!(!worth_it(DELTA_MIN - 1) && !worth_it(DELTA_MAX + 1));
    }
}
