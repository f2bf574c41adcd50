//! Deterministic hashing: FNV-1a (64-bit) as a [`Hasher`], and hash maps and sets built on it.
//!
//! Why not std's `HashMap` as it comes: its SipHash is seeded from the operating system's
//! randomness, so a plugin's tables hash differently in every native test run and differently
//! again in the sandbox, which has no randomness at all. FNV-1a has no seed: the same keys give
//! the same hashes on every host, in every run, natively and in WebAssembly, so a hash a plugin
//! stores or a choice it makes from one is reproducible. It is also faster than SipHash on the
//! short keys plugins hash (words, n-grams, integers).
//!
//! The price: FNV-1a is not keyed, so keys crafted to collide would slow a table down. Training
//! text is not written to attack a filter's hash table.
//!
//! ```
//! use std::hash::Hasher;
//! use triad_plugin_sdk::hash::{FastHashMap, FnvHasher};
//!
//! let mut counts: FastHashMap<&str, usize> = FastHashMap::default();
//! for word in "to be or not to be".split(' ') {
//!     *counts.entry(word).or_insert(0) += 1;
//! }
//! assert_eq!(counts["be"], 2);
//!
//! let mut hasher = FnvHasher::default();
//! hasher.write(b"a");
//! assert_eq!(hasher.finish(), 0xaf63_dc4c_8601_ec8c);
//! ```

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a's 64-bit offset basis, where the hash of a byte string starts.
const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV's 64-bit prime, 2^40 + 2^8 + 0xb3.
const PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a, 64-bit (Fowler, Noll, Vo): `finish` is the FNV-1a hash of all bytes written, in
/// order, so several writes hash like one write of their concatenation.
///
/// One exception: a hasher whose `write` was never called finishes at 0, not at the offset
/// basis. `default()` is 0, meaning "not started", and the first write starts from the offset
/// basis; the dedup filter's exact hash of a text without words (no writes) has always been 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct FnvHasher(u64);

impl Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 { OFFSET_BASIS } else { self.0 };
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
        }
        self.0 = hash;
    }
}

/// Builds a fresh [`FnvHasher`] for each key: the `S` parameter of std's maps and sets.
pub type FnvBuildHasher = BuildHasherDefault<FnvHasher>;

/// A `HashMap` hashed with [`FnvHasher`]; create it with `FastHashMap::default()`.
pub type FastHashMap<K, V> = HashMap<K, V, FnvBuildHasher>;

/// A `HashSet` hashed with [`FnvHasher`]; create it with `FastHashSet::default()`.
pub type FastHashSet<T> = HashSet<T, FnvBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    fn fnv(chunks: &[&[u8]]) -> u64 {
        let mut hasher = FnvHasher::default();
        for chunk in chunks {
            hasher.write(chunk);
        }
        hasher.finish()
    }

    #[test]
    fn matches_the_reference_test_vectors() {
        // Published FNV-1a 64 test vectors (also computed independently in Python).
        assert_eq!(fnv(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv(&[b"foobar"]), 0x8594_4171_f739_67e8);
        // Split writes hash like one write of their concatenation.
        assert_eq!(fnv(&[b"foo", b"", b"bar"]), fnv(&[b"foobar"]));
        assert_eq!(fnv(&[b""]), OFFSET_BASIS);
        // No write at all: 0, not the offset basis (see the type's doc).
        assert_eq!(fnv(&[]), 0);
    }

    #[test]
    fn maps_and_sets_hash_the_same_in_every_instance() {
        use std::hash::BuildHasher;
        let (a, b) = (FnvBuildHasher::default(), FnvBuildHasher::default());
        assert_eq!(a.hash_one("review"), b.hash_one("review"));
        assert_ne!(a.hash_one("review"), a.hash_one("reviews"));
        let words: FastHashSet<&str> = "a rose is a rose".split(' ').collect();
        assert_eq!(words.len(), 3);
    }
}
