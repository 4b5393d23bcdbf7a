//! Identification: the partner an API key belongs to, found by the key's SHA-256.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// Key digests → partner index. Keys are never stored, only their SHA-256.
#[derive(Default)]
pub struct KeyIndex {
    by_digest: HashMap<[u8; 32], usize>,
}

impl KeyIndex {
    /// Indexes every digest of every partner (`digests[i]` belongs to partner `i`).
    pub fn new<'a>(digests: impl IntoIterator<Item = &'a [[u8; 32]]>) -> Self {
        let mut by_digest = HashMap::new();
        for (partner, keys) in digests.into_iter().enumerate() {
            for digest in keys {
                by_digest.insert(*digest, partner);
            }
        }
        KeyIndex { by_digest }
    }

    /// The partner whose key this is, if any.
    #[inline]
    pub fn find(&self, key: &[u8]) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        self.by_digest.get(&digest).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(key: &str) -> [u8; 32] {
        Sha256::digest(key.as_bytes()).into()
    }

    #[test]
    fn finds_each_partners_keys() {
        let a = [digest("a-old"), digest("a-new")];
        let b = [digest("b")];
        let index = KeyIndex::new([&a[..], &b[..]]);
        assert_eq!(index.find(b"a-old"), Some(0));
        assert_eq!(index.find(b"a-new"), Some(0));
        assert_eq!(index.find(b"b"), Some(1));
        assert_eq!(index.find(b"c"), None);
        assert_eq!(index.find(b""), None);
    }
}
