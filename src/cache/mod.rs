//! The account-aware answer cache and request coalescing: repeated inquiries about a bill
//! account are answered from memory, and identical inquiries in flight together share one
//! biller call, so the biller's load follows the number of distinct accounts asked about, not
//! how often partners ask.
//!
//! How the proxy uses it, for an inquiry on a route with `cache_for`:
//!
//! 1. [`AnswerCache::get`] with a [`KeyRef`] (route, the route's [`Sharing`], partner, account).
//!    A hit is served with [`CachedAnswer::headers_for`] (`Age`, `x-billgate-cache: hit`), or a
//!    304 when [`CachedAnswer::is_not_modified`] says the partner's `If-None-Match` matches.
//! 2. On a miss, [`Coalescer::join`]: a [`Joined::Follower`] awaits [`Waiter::wait`] and answers
//!    `x-billgate-cache: coalesced`; the [`Joined::Leader`] spawns a task owning the [`Flight`]
//!    that reads [`AnswerCache::now`], calls the biller, [`AnswerCache::store`]s the answer and
//!    [`Flight::complete`]s with it (or with the failure).
//! 3. A payment's answer calls [`AnswerCache::invalidate_account`]. Payments are never looked up,
//!    stored or coalesced.
//!
//! Nothing here does I/O or blocks a thread; time comes from the injected
//! [`Clock`](crate::clock::Clock).

mod answer;
mod coalesce;
mod date;
mod invalidate;
mod key;
mod policy;
mod store;

pub use answer::{CacheStatus, CachedAnswer, CACHE_STATUS_HEADER};
pub use coalesce::{Coalescer, Flight, Joined, LeaderGone, Waiter};
pub use key::{CacheKey, KeyRef, Scope, Sharing};
pub use policy::{freshness, initial_age, NotStored};
pub use store::{AnswerCache, CacheSettings, CacheStats};

#[cfg(test)]
mod tests;
