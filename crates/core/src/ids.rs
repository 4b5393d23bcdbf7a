//! Typed positions: a partner or a route is named by its place in the running configuration,
//! and that place is a [`PartnerId`] or a [`RouteId`], never a bare `usize`. Everything kept per
//! partner or per route lives in a [`PerPartner`] or [`PerRoute`], indexed by the matching id.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, Index};

/// A partner's place in the configuration's `[[partner]]` list (and in every [`PerPartner`]
/// built from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartnerId(u32);

/// A route's place in the configuration's `[[route]]` list (and in every [`PerRoute`] built
/// from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(u32);

macro_rules! id {
    ($id:ident) => {
        impl $id {
            /// The id at position `index`. Positions past `u32::MAX` cannot be configured (the
            /// loader caps partners and routes far below), so they saturate rather than wrap.
            pub fn new(index: usize) -> Self {
                $id(u32::try_from(index).unwrap_or(u32::MAX))
            }

            /// The position, for tables that are not typed.
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id!(PartnerId);
id!(RouteId);

/// One `T` per id, in configuration order. Reads as a slice (iteration, `len`); indexing by the
/// id is the typed way in.
pub struct Table<I, T> {
    items: Vec<T>,
    id: PhantomData<fn() -> I>,
}

/// One entry per partner.
pub type PerPartner<T> = Table<PartnerId, T>;
/// One entry per route.
pub type PerRoute<T> = Table<RouteId, T>;

impl<I, T> Table<I, T> {
    /// The entry for `id`, if there is one.
    pub fn get(&self, id: I) -> Option<&T>
    where
        I: Into<usize>,
    {
        self.items.get(id.into())
    }
}

impl<I: From<usize>, T> Table<I, T> {
    /// Every entry with its id.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (I, &T)> + '_ {
        self.items.iter().enumerate().map(|(n, t)| (I::from(n), t))
    }
}

impl From<PartnerId> for usize {
    fn from(id: PartnerId) -> usize {
        id.index()
    }
}

impl From<RouteId> for usize {
    fn from(id: RouteId) -> usize {
        id.index()
    }
}

impl From<usize> for PartnerId {
    fn from(index: usize) -> Self {
        PartnerId::new(index)
    }
}

impl From<usize> for RouteId {
    fn from(index: usize) -> Self {
        RouteId::new(index)
    }
}

impl<I, T> From<Vec<T>> for Table<I, T> {
    fn from(items: Vec<T>) -> Self {
        Table {
            items,
            id: PhantomData,
        }
    }
}

impl<I, T> FromIterator<T> for Table<I, T> {
    fn from_iter<It: IntoIterator<Item = T>>(iter: It) -> Self {
        Table::from(iter.into_iter().collect::<Vec<T>>())
    }
}

impl<I, T> Default for Table<I, T> {
    fn default() -> Self {
        Table::from(Vec::new())
    }
}

impl<I, T: Clone> Clone for Table<I, T> {
    fn clone(&self) -> Self {
        Table::from(self.items.clone())
    }
}

impl<I, T: fmt::Debug> fmt::Debug for Table<I, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.items.fmt(f)
    }
}

impl<I, T: PartialEq> PartialEq for Table<I, T> {
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
    }
}

impl<I, T> Deref for Table<I, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items
    }
}

impl<T> Index<PartnerId> for Table<PartnerId, T> {
    type Output = T;

    fn index(&self, id: PartnerId) -> &T {
        &self.items[id.index()]
    }
}

impl<T> Index<RouteId> for Table<RouteId, T> {
    type Output = T;

    fn index(&self, id: RouteId) -> &T {
        &self.items[id.index()]
    }
}

impl<'a, I, T> IntoIterator for &'a Table<I, T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_indexed_by_its_own_id_and_reads_as_a_slice() {
        let routes: PerRoute<&str> = vec!["bill-inquiry", "bill-payment"].into();
        assert_eq!(routes[RouteId::new(1)], "bill-payment");
        assert_eq!(routes.get(RouteId::new(2)), None);
        assert_eq!(routes.len(), 2);
        let ids: Vec<_> = routes.entries().map(|(id, _)| id.index()).collect();
        assert_eq!(ids, [0, 1]);
        assert_eq!(RouteId::new(7).to_string(), "7");
    }
}
