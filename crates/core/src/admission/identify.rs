//! Identification: the partner an API key belongs to, found by the key's SHA-256.
//!
//! Hashing every presented key with SHA-256 costs more than the rest of the decision, so keys
//! already proven are remembered in a fixed-size table: presented key bytes → partner. Only a
//! key whose digest matched is ever put in it, so it holds at most one entry per configured
//! key (unknown keys cannot fill it), and it belongs to one snapshot: a reload starts afresh,
//! so a removed key is forgotten at once. Entries are write-once atomics (no lock, no
//! allocation); keys are compared in full, in constant time. Keys longer than
//! [`CACHED_KEY_BYTES`] are always hashed.
//!
//! Beside each entry (128 bytes, so with thousands of partners rarely in cache) is a hint of
//! eight bytes: a fingerprint of the key's hash, the partner and the partner's [`Card`] — a
//! number the caller gave for the partner (the gate puts there where the partner's cell is).
//! Hints are packed eight to a line, so the table of hints is small (256 KiB for 10 000 keys)
//! and, unlike the entries, tends to stay in cache. A lookup starts by asking for its home
//! slot's hint and entry together ([`KeyIndex::ask`]), so the caller can do other work while
//! they come. It then probes the hints, hands the likely partner's card to its caller — who
//! asks for that partner's state at once — and only then compares the key with the entry: the
//! misses overlap instead of following one another. Nothing is decided on a hint: a partner is
//! returned only once its key compared equal.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use crate::ids::PartnerId;

/// The longest key the cache remembers, in bytes.
pub const CACHED_KEY_BYTES: usize = 8 * WORDS;
const WORDS: usize = 15;

/// `head` of a cache entry: 0 empty; [`CLAIMED`] while being written; else
/// `READY | len << 32 | partner`.
const CLAIMED: u64 = 1 << 63;
const READY: u64 = 1 << 62;

/// A partner's card: see the module docs. Below [`CARD_LIMIT`] for the partner's keys to be
/// remembered.
pub type Card = u32;
/// Cards, and partner indexes, fit a hint's 20 bits each: a partner beyond them has its keys
/// hashed every time.
pub const CARD_LIMIT: u32 = 1 << FIELD;
const FIELD: u32 = 20;
/// The bits of a hint that hold the key's fingerprint: those above the partner and the card.
const FINGERPRINT: u64 = !((1 << (2 * FIELD)) - 1);

/// One remembered key's hint: 0 while empty or being written, else the top 24 bits of the
/// key's hash (the lowest of them set), the partner index and the partner's card, 20 bits
/// each. Eight to a cache line.
type Hint = AtomicU64;

/// One remembered key: its head, then its bytes as little-endian words, zero-padded.
#[repr(align(128))]
#[derive(Default)]
struct Entry {
    head: AtomicU64,
    words: [AtomicU64; WORDS],
}

/// A look-up [`KeyIndex::ask`] has started: the key, and its hash when the cache may hold it.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'k> {
    key: &'k [u8],
    hash: Option<u64>,
}

/// Key digests → partner index, with a cache of presented keys. Keys are configured only as
/// their SHA-256.
pub struct KeyIndex {
    by_digest: HashMap<[u8; 32], usize>,
    seed: foldhash::quality::RandomState,
    entries: Box<[Entry]>,
    /// `hints[i]` for `entries[i]`.
    hints: Box<[Hint]>,
    /// Each partner's card, by partner index.
    cards: Box<[Card]>,
    /// Entries written so far: kept at most half the table, so probes always end.
    filled: AtomicUsize,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex::new(std::iter::empty::<&[[u8; 32]]>())
    }
}

/// Word `i` of `key`: eight bytes little-endian, zero-padded past the key's end.
#[inline]
fn word(key: &[u8], i: usize) -> u64 {
    let start = i * 8;
    if let Some(chunk) = key.get(start..start + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        return u64::from_le_bytes(bytes);
    }
    let mut bytes = [0u8; 8];
    for (byte, from) in bytes.iter_mut().zip(key.get(start..).unwrap_or_default()) {
        *byte = *from;
    }
    u64::from_le_bytes(bytes)
}

/// The key's last, partial word (`key.len() % 8` bytes, zero-padded), as [`word`] reads it. A
/// key of at least eight bytes has it read as its last eight bytes shifted down: one load, not
/// a byte loop (which compiles to a call to `memcpy`).
#[inline]
fn tail_word(key: &[u8]) -> u64 {
    let partial = key.len() % 8;
    match key.len().checked_sub(8).and_then(|start| key.get(start..)) {
        Some(last) if partial != 0 => {
            let last = <[u8; 8]>::try_from(last).map_or(0, u64::from_le_bytes);
            last >> (8 * (8 - partial))
        }
        _ => word(key, key.len() / 8),
    }
}

/// The top 24 bits of a key's hash, the lowest of them set so a hint is never 0.
#[inline]
fn fingerprint(hash: u64) -> u64 {
    (hash | 1 << (2 * FIELD)) & FINGERPRINT
}

/// A hint's partner and card.
#[inline]
fn hinted(hint: u64) -> (usize, Card) {
    let mask = u64::from(CARD_LIMIT - 1);
    ((hint >> FIELD & mask) as usize, (hint & mask) as Card)
}

impl Entry {
    /// Whether this entry holds exactly `key` (its length already matched); checks every word
    /// whatever the first difference, so the time taken tells nothing of the key.
    #[inline]
    fn holds(&self, key: &[u8]) -> bool {
        let mut diff = 0;
        let mut chunks = key.chunks_exact(8);
        for (stored, chunk) in self.words.iter().zip(&mut chunks) {
            let word = <[u8; 8]>::try_from(chunk).map_or(0, u64::from_le_bytes);
            diff |= stored.load(Ordering::Relaxed) ^ word;
        }
        if !key.len().is_multiple_of(8) {
            let stored = self.words.get(key.len() / 8);
            diff |= stored.map_or(0, |w| w.load(Ordering::Relaxed)) ^ tail_word(key);
        }
        diff == 0
    }
}

impl KeyIndex {
    /// Indexes every digest of every partner (`digests[i]` belongs to partner `i`); every
    /// card is zeros.
    pub fn new<'a>(digests: impl IntoIterator<Item = &'a [[u8; 32]]>) -> Self {
        KeyIndex::with_cards(digests.into_iter().map(|keys| (keys, Card::default())))
    }

    /// Indexes every digest of every partner, each partner with its card.
    pub fn with_cards<'a>(partners: impl IntoIterator<Item = (&'a [[u8; 32]], Card)>) -> Self {
        let mut by_digest = HashMap::new();
        let mut cards = Vec::new();
        for (partner, (keys, card)) in partners.into_iter().enumerate() {
            for digest in keys {
                by_digest.insert(*digest, partner);
            }
            cards.push(card);
        }
        // Room for every configured key at most half full.
        let slots = (2 * by_digest.len()).next_power_of_two().max(8);
        KeyIndex {
            by_digest,
            seed: foldhash::quality::RandomState::default(),
            entries: (0..slots).map(|_| Entry::default()).collect(),
            hints: (0..slots).map(|_| Hint::new(0)).collect(),
            cards: cards.into(),
            filled: AtomicUsize::new(0),
        }
    }

    /// The partner whose key this is, if any.
    #[inline]
    pub fn find(&self, key: &[u8]) -> Option<PartnerId> {
        self.find_with(key, |_, _| {})
    }

    /// [`KeyIndex::find`], telling `likely` of the partner (and its card) a remembered key
    /// probably belongs to before its entry is read and compared (at most once per entry
    /// probed). For prefetching: the answer is still only the partner whose key compared equal,
    /// and a key found by its digest is told of no one ([`KeyIndex::card`] has its card).
    #[inline]
    pub fn find_with(&self, key: &[u8], likely: impl FnMut(PartnerId, Card)) -> Option<PartnerId> {
        self.find_asked(self.ask(key), likely)
    }

    /// Starts a look-up of `key`: hashes it and asks for the lines it will read first, the
    /// hint and the entry of its home slot, so that their misses run while the caller does
    /// other work. Finish it with [`KeyIndex::find_asked`].
    #[inline]
    pub fn ask<'k>(&self, key: &'k [u8]) -> Asked<'k> {
        if key.len() > CACHED_KEY_BYTES {
            return Asked { key, hash: None };
        }
        let hash = self.seed.hash_one(key);
        let home = hash as usize & (self.entries.len() - 1);
        if let (Some(hint), Some(entry)) = (self.hints.get(home), self.entries.get(home)) {
            crate::memory::prefetch(hint);
            crate::memory::prefetch(entry);
        }
        Asked {
            key,
            hash: Some(hash),
        }
    }

    /// [`KeyIndex::find_with`] for a key [`KeyIndex::ask`] has started.
    #[inline]
    pub fn find_asked(
        &self,
        asked: Asked<'_>,
        mut likely: impl FnMut(PartnerId, Card),
    ) -> Option<PartnerId> {
        let Asked { key, hash } = asked;
        let Some(hash) = hash else {
            return self.by_digest(key).map(PartnerId::new);
        };
        let want = READY | (key.len() as u64) << 32;
        let fingerprint = fingerprint(hash);
        let mask = self.entries.len() - 1;
        let mut i = hash as usize & mask;
        for _ in 0..self.entries.len() {
            let head = self.hints.get(i)?.load(Ordering::Acquire);
            if head == 0 {
                // Empty, or being written: either way the key is not known here yet.
                break;
            }
            if head & FINGERPRINT == fingerprint {
                let (partner, card) = hinted(head);
                likely(PartnerId::new(partner), card);
                let entry = self.entries.get(i)?;
                let head = entry.head.load(Ordering::Acquire);
                if head == want | partner as u64 && entry.holds(key) {
                    return Some(PartnerId::new(partner));
                }
            }
            i = (i + 1) & mask;
        }
        let partner = self.by_digest(key)?;
        self.remember(key, partner);
        Some(PartnerId::new(partner))
    }

    /// The card given for `partner` (zeros for an id out of range).
    pub fn card(&self, partner: PartnerId) -> Card {
        self.cards.get(partner.index()).copied().unwrap_or_default()
    }

    fn by_digest(&self, key: &[u8]) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        self.by_digest.get(&digest).copied()
    }

    /// Puts a proven key in the cache, unless it is (or is being) put there by another thread
    /// or the table has had its share of entries.
    #[cold]
    fn remember(&self, key: &[u8], partner: usize) {
        let Ok(partner) = u32::try_from(partner) else {
            return;
        };
        let card = self.card(PartnerId::new(partner as usize));
        if partner >= CARD_LIMIT || card >= CARD_LIMIT {
            return;
        }
        let room = self.entries.len() / 2;
        if self
            .filled
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < room).then_some(n + 1)
            })
            .is_err()
        {
            return;
        }
        let mask = self.entries.len() - 1;
        let hash = self.seed.hash_one(key);
        let mut i = hash as usize & mask;
        for _ in 0..self.entries.len() {
            let (Some(entry), Some(hint)) = (self.entries.get(i), self.hints.get(i)) else {
                return;
            };
            if entry
                .head
                .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                for (i, stored) in entry.words.iter().enumerate() {
                    stored.store(word(key, i), Ordering::Relaxed);
                }
                let head = READY | (key.len() as u64) << 32 | u64::from(partner);
                entry.head.store(head, Ordering::Release);
                let hinted = u64::from(partner) << FIELD | u64::from(card);
                hint.store(fingerprint(hash) | hinted, Ordering::Release);
                return;
            }
            i = (i + 1) & mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> PartnerId {
        PartnerId::new(n)
    }

    fn digest(key: &str) -> [u8; 32] {
        Sha256::digest(key.as_bytes()).into()
    }

    #[test]
    fn a_keys_tail_reads_as_its_zero_padded_last_word() {
        let key: Vec<u8> = (1..=40).collect();
        for len in 0..=key.len() {
            let key = &key[..len];
            assert_eq!(tail_word(key), word(key, len / 8), "{len}");
        }
        assert_eq!(
            tail_word(b"0123456789"),
            u64::from_le_bytes(*b"89\0\0\0\0\0\0")
        );
    }

    #[test]
    fn finds_each_partners_keys() {
        let a = [digest("a-old"), digest("a-new")];
        let b = [digest("b")];
        let index = KeyIndex::new([&a[..], &b[..]]);
        // Twice each: first by digest, then from the cache.
        for _ in 0..2 {
            assert_eq!(index.find(b"a-old"), Some(id(0)));
            assert_eq!(index.find(b"a-new"), Some(id(0)));
            assert_eq!(index.find(b"b"), Some(id(1)));
            assert_eq!(index.find(b"c"), None);
            assert_eq!(index.find(b""), None);
        }
    }

    #[test]
    fn a_card_too_large_for_a_hint_is_answered_by_digest_every_time() {
        let (a, b) = ([digest("a")], [digest("b")]);
        let index = KeyIndex::with_cards([(&a[..], CARD_LIMIT), (&b[..], CARD_LIMIT - 1)]);
        let mut told = Vec::new();
        for _ in 0..3 {
            assert_eq!(
                index.find_with(b"a", |p, c| told.push((p.index(), c))),
                Some(id(0))
            );
        }
        // Never remembered, so never hinted: each look-up hashed the key.
        assert!(told.is_empty());
        assert_eq!(index.filled.load(Ordering::Relaxed), 0);
        for _ in 0..2 {
            assert_eq!(
                index.find_with(b"b", |p, c| told.push((p.index(), c))),
                Some(id(1))
            );
        }
        assert_eq!(told, [(1, CARD_LIMIT - 1)]);
        assert_eq!(index.filled.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn names_the_likely_partner_early_but_answers_only_on_the_key() {
        let a = [digest("a")];
        let b = [digest("b")];
        let (card_a, card_b) = (1, CARD_LIMIT - 1);
        let index = KeyIndex::with_cards([(&a[..], card_a), (&b[..], card_b)]);
        let mut told: Vec<(usize, Card)> = Vec::new();
        // Not remembered yet: proven by digest, nothing to tell early.
        assert_eq!(
            index.find_with(b"b", |p, c| told.push((p.index(), c))),
            Some(id(1))
        );
        assert!(told.is_empty());
        assert_eq!(index.card(id(1)), card_b);
        assert_eq!(
            index.find_with(b"b", |p, c| told.push((p.index(), c))),
            Some(id(1))
        );
        assert_eq!(told, [(1, card_b)]);
        // A hint that names the wrong partner is only a hint: the entry's partner and key
        // decide, and the key is proven again by its digest.
        let slot = (0..index.hints.len())
            .find(|&i| index.hints[i].load(Ordering::Relaxed) != 0)
            .unwrap();
        let head = index.hints[slot].load(Ordering::Relaxed);
        index.hints[slot].store(head & FINGERPRINT, Ordering::Relaxed);
        told.clear();
        assert_eq!(
            index.find_with(b"b", |p, c| told.push((p.index(), c))),
            Some(id(1))
        );
        assert_eq!(told[0].0, 0);
        assert_eq!(index.find(b"c"), None);
        assert_eq!(index.find(b"a"), Some(id(0)));
    }

    #[test]
    fn remembers_only_proven_keys_and_never_confuses_near_ones() {
        let long = "k".repeat(CACHED_KEY_BYTES + 1);
        let keys = ["x", "x\0", "0123456789abcdef", "0123456789abcdeF", &long];
        let digests: Vec<[u8; 32]> = keys.iter().map(|k| digest(k)).collect();
        let index = KeyIndex::new(digests.iter().map(std::slice::from_ref));
        for _ in 0..3 {
            for (partner, key) in keys.iter().enumerate() {
                assert_eq!(index.find(key.as_bytes()), Some(id(partner)), "{key:?}");
            }
            for stranger in [
                "",
                "x\0\0",
                "0123456789abcde",
                "0123456789abcdef0",
                &long[1..],
            ] {
                assert_eq!(index.find(stranger.as_bytes()), None, "{stranger:?}");
            }
        }
        // Four short keys were proven and remembered; the long one and strangers were not.
        assert_eq!(index.filled.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn the_cache_cannot_grow_past_its_table() {
        let digests: Vec<[u8; 32]> = (0..100).map(|n| digest(&format!("key-{n}"))).collect();
        let index = KeyIndex::new([&digests[..]]);
        let slots = index.entries.len();
        assert_eq!(slots, 256);
        for round in 0..3 {
            for n in 0..100 {
                assert_eq!(
                    index.find(format!("key-{n}").as_bytes()),
                    Some(id(0)),
                    "{round}"
                );
            }
            for n in 0..1_000 {
                assert_eq!(index.find(format!("nokey-{n}").as_bytes()), None);
            }
        }
        assert_eq!(index.filled.load(Ordering::Relaxed), 100);
    }
}
