//! The account-aware answer cache: repeated inquiries about a bill account are answered from
//! memory, so the biller's load follows the number of distinct accounts asked about, not how
//! often partners ask. Identical inquiries in flight together share one biller call through the
//! gateway's `coalesce` module, which counts into this cache's statistics.
//!
//! How the proxy uses it, for an inquiry (GET) on a route with `cache_for`:
//!
//! 1. [`AnswerCache::get`] with a [`KeyRef`] (route, the route's [`Sharing`], partner, account).
//!    A hit is served with [`CachedAnswer::headers_for`] (`Age`, `x-billgate-cache: hit`), or as
//!    a 304 with [`CachedAnswer::not_modified_headers`] when [`CachedAnswer::is_not_modified`]
//!    says the partner's `If-None-Match` matches.
//! 2. On a miss, the gateway's `Coalescer::join`. A follower awaits the flight and answers
//!    `x-billgate-cache: coalesced`. The leader spawns a task owning the flight:
//!    it [`AnswerCache::peek`]s once more, reads [`AnswerCache::now`], calls the biller,
//!    [`AnswerCache::store`]s the answer (or builds a shareable one with
//!    [`CachedAnswer::build`] when it is not stored) and completes the flight with it or with
//!    the failure. The partner's own request only awaits that task.
//! 3. A payment's answer — or its failure — calls [`AnswerCache::invalidate_account`].
//!    Payments are never looked up, stored or coalesced.
//!
//! The key names route, scope and account only, so the cache must be consulted only for
//! requests whose answer depends on nothing else: no query parameter but the account's, and the
//! leader's biller request stripped of conditional headers (`If-None-Match`,
//! `If-Modified-Since`) — the gateway answers 304 itself, and a 304 from the biller could not
//! be shared with followers or stored.
//!
//! Nothing here does I/O or blocks a thread; time comes from the injected
//! [`Clock`](crate::clock::Clock).

mod answer;
mod invalidate;
mod key;
mod policy;
mod store;

pub use answer::{CacheStatus, CachedAnswer, CACHE_STATUS_HEADER};
pub use key::{CacheKey, KeyRef, Scope, Sharing};
pub use policy::{freshness, initial_age, NotStored};
pub use store::{AnswerCache, CacheSettings, CacheStats, CoalescedCounter};
