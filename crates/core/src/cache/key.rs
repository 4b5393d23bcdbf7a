//! What a cached answer is filed under: route, scope (one partner, or shared) and bill account,
//! compared in full — never a bare hash, since a collision would show one account's bill to
//! another account's payer.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use quick_cache::Equivalent;

/// Whether partners share a route's cached answers: a per-route setting.
///
/// Default [`Sharing::PerPartner`]: one partner never sees an answer fetched for another unless
/// the operator says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Sharing {
    /// Each partner has its own answers (the default).
    #[default]
    PerPartner,
    /// Every partner may be served an answer fetched for any partner.
    Shared,
}

/// Whose answers an entry belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Only this partner (by id) is served the answer.
    Partner(Arc<str>),
    /// Every partner is served the answer.
    Shared,
}

impl Scope {
    /// The scope a route's [`Sharing`] gives a request from `partner`.
    pub fn for_sharing(sharing: Sharing, partner: &Arc<str>) -> Scope {
        match sharing {
            Sharing::PerPartner => Scope::Partner(Arc::clone(partner)),
            Sharing::Shared => Scope::Shared,
        }
    }

    fn partner(&self) -> Option<&str> {
        match self {
            Scope::Partner(id) => Some(id),
            Scope::Shared => None,
        }
    }
}

/// The owned key of one cached answer: (route, scope, account).
///
/// Equality and hashing cover every field in full. Building one allocates the account (and the
/// route and partner unless the caller already holds them as `Arc<str>`); lookups on the hit path
/// use the borrowed [`KeyRef`] instead, which allocates nothing.
#[derive(Debug, Clone)]
pub struct CacheKey {
    route: Arc<str>,
    scope: Scope,
    account: Box<str>,
}

impl CacheKey {
    /// The key for `account` on `route`, seen from `scope`.
    pub fn new(route: Arc<str>, scope: Scope, account: &str) -> Self {
        CacheKey {
            route,
            scope,
            account: account.into(),
        }
    }

    /// This key borrowed, for lookups.
    pub fn as_key_ref(&self) -> KeyRef<'_> {
        KeyRef {
            route: &self.route,
            partner: self.scope.partner(),
            account: &self.account,
        }
    }

    /// The route's name.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Whose answers this key names.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The bill account.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Heap bytes this key owns on its own (the route and partner are shared `Arc`s).
    pub(super) fn owned_bytes(&self) -> usize {
        self.account.len()
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_key_ref() == other.as_key_ref()
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    // Must hash exactly as `KeyRef` does, so a borrowed lookup finds the owned entry.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_key_ref().hash(state);
    }
}

/// A key borrowed from the request at hand: what [`AnswerCache::get`](super::AnswerCache::get)
/// looks up without allocating. Hashes and compares exactly like the [`CacheKey`] it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRef<'a> {
    route: &'a str,
    /// `None`: the shared scope.
    partner: Option<&'a str>,
    account: &'a str,
}

impl<'a> KeyRef<'a> {
    /// The key for `account` on `route` as `partner` sees it under the route's `sharing`.
    pub fn new(route: &'a str, sharing: Sharing, partner: &'a str, account: &'a str) -> Self {
        KeyRef {
            route,
            partner: match sharing {
                Sharing::PerPartner => Some(partner),
                Sharing::Shared => None,
            },
            account,
        }
    }

    /// The route's name.
    pub fn route(&self) -> &'a str {
        self.route
    }

    /// The partner whose answers this names; `None` for the shared scope.
    pub fn partner(&self) -> Option<&'a str> {
        self.partner
    }

    /// The bill account.
    pub fn account(&self) -> &'a str {
        self.account
    }

    /// An owned copy of this key (allocates the route, partner and account).
    pub fn to_key(&self) -> CacheKey {
        CacheKey {
            route: self.route.into(),
            scope: self
                .partner
                .map_or(Scope::Shared, |p| Scope::Partner(p.into())),
            account: self.account.into(),
        }
    }
}

impl<'a> From<&'a CacheKey> for KeyRef<'a> {
    fn from(key: &'a CacheKey) -> Self {
        key.as_key_ref()
    }
}

impl Equivalent<CacheKey> for KeyRef<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        *self == key.as_key_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn borrowed_and_owned_keys_hash_and_compare_alike() {
        let partner: Arc<str> = "wallet-a".into();
        let owned = CacheKey::new(
            "bill-inquiry".into(),
            Scope::for_sharing(Sharing::PerPartner, &partner),
            "ACC-1",
        );
        let borrowed = KeyRef::new("bill-inquiry", Sharing::PerPartner, "wallet-a", "ACC-1");
        let hasher = std::hash::RandomState::new();
        assert_eq!(hasher.hash_one(&owned), hasher.hash_one(borrowed));
        assert!(borrowed.equivalent(&owned));
        assert_eq!(borrowed.to_key(), owned);
        assert_eq!(KeyRef::from(&owned), borrowed);
    }

    #[test]
    fn every_part_of_the_key_counts() {
        let base = KeyRef::new("r", Sharing::PerPartner, "p", "a").to_key();
        for other in [
            KeyRef::new("r2", Sharing::PerPartner, "p", "a"),
            KeyRef::new("r", Sharing::PerPartner, "p2", "a"),
            KeyRef::new("r", Sharing::PerPartner, "p", "a2"),
            KeyRef::new("r", Sharing::Shared, "p", "a"),
        ] {
            assert!(!other.equivalent(&base), "{other:?}");
        }
        // Shared keys ignore the partner asking.
        let shared = KeyRef::new("r", Sharing::Shared, "p", "a").to_key();
        assert!(KeyRef::new("r", Sharing::Shared, "other", "a").equivalent(&shared));
    }
}
