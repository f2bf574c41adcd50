//! Leaf utilities that every floor may use and that use no other part of triad: atomic file
//! writes, fetching packaged data into the cache, what the machine has, did-you-mean for names,
//! progress bars.

pub mod atomic;
pub mod machine;
pub mod names;
pub mod packages;
pub mod progress;

/// sha256 of a file's bytes, lowercase hex, read in pieces (model weights run to gigabytes).
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// sha256 of some bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
