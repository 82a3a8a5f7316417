//! Label set resolution: a bounded per-thread map in front of a shared map that owns the
//! cardinality bound.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::labels::ThreadKey;
use super::shards::HttpShard;
use super::TcpHandles;

/// Entries a thread's map holds per kind before it is cleared.
pub(super) const THREAD_CACHE_MAX: usize = 4096;

/// The label sets of one kind (HTTP or TCP) an instance has created, up to its bound.
pub(super) struct LabelSets<H> {
    max: usize,
    sets: Mutex<HashMap<Box<[u8]>, Arc<H>>>,
}

impl<H> LabelSets<H> {
    pub(super) fn new(max: usize) -> Self {
        Self {
            max,
            sets: Mutex::new(HashMap::new()),
        }
    }

    /// Label sets created so far.
    pub(super) fn len(&self) -> usize {
        self.sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Every label set created so far.
    pub(super) fn all(&self) -> Vec<Arc<H>> {
        self.sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The handles for `key`, created with `make` if there is room; None when the bound is
    /// reached (or `make` fails).
    pub(super) fn resolve(&self, key: &[u8], make: impl FnOnce() -> Option<H>) -> Option<Arc<H>> {
        let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(handles) = sets.get(key) {
            return Some(Arc::clone(handles));
        }
        if sets.len() >= self.max {
            return None;
        }
        let handles = Arc::new(make()?);
        sets.insert(key.into(), Arc::clone(&handles));
        Some(handles)
    }
}

/// Thread keys → what this thread records into, or None for a dropped label set. Hashed with
/// foldhash (randomly seeded): the keys are short, and a thread's map is bounded and cleared.
pub(super) type Slots<V> = HashMap<Box<[u8]>, Option<V>, foldhash::fast::RandomState>;

/// The label set a thread resolved last, checked before its map: a connection's requests
/// mostly repeat their labels, and comparing them costs less than writing and hashing a key.
pub(super) struct Last<V> {
    /// Its key's bytes; empty before the first lookup (no key is empty).
    key: Vec<u8>,
    entry: Option<V>,
}

impl<V> Default for Last<V> {
    fn default() -> Self {
        Self {
            key: Vec::new(),
            entry: None,
        }
    }
}

/// One thread's maps, and the buffers keys are encoded into.
#[derive(Default)]
pub(super) struct Local {
    key: Vec<u8>,
    content: Vec<u8>,
    http: Slots<Arc<HttpShard>>,
    tcp: Slots<Arc<TcpHandles>>,
    last_http: Last<Arc<HttpShard>>,
    last_tcp: Last<Arc<TcpHandles>>,
}

/// The buffers and one kind's map of a thread.
pub(super) struct Parts<'a, V> {
    key: &'a mut Vec<u8>,
    content: &'a mut Vec<u8>,
    slots: &'a mut Slots<V>,
    last: &'a mut Last<V>,
}

impl Local {
    /// The buffers and the HTTP map.
    pub(super) fn http(&mut self) -> Parts<'_, Arc<HttpShard>> {
        Parts {
            key: &mut self.key,
            content: &mut self.content,
            slots: &mut self.http,
            last: &mut self.last_http,
        }
    }

    /// The buffers and the TCP map.
    pub(super) fn tcp(&mut self) -> Parts<'_, Arc<TcpHandles>> {
        Parts {
            key: &mut self.key,
            content: &mut self.content,
            slots: &mut self.tcp,
            last: &mut self.last_tcp,
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

/// How one kind of label set is found and made.
pub(super) struct Lookup<'s, S, V> {
    /// The instance's label sets.
    pub sets: &'s LabelSets<S>,
    /// This thread's map of that kind.
    pub slots: for<'a> fn(&'a mut Local) -> Parts<'a, V>,
    /// What a thread records into, from a shared label set.
    pub view: fn(&Arc<S>) -> V,
}

/// Calls `then` with what this thread records the label set into (None when it was dropped).
///
/// `thread_key` is a compact key (ids, not text, for the workloads) that this thread's last
/// label set and then its map are searched by; only when both miss does `content_key` write
/// the label values themselves, which the shared map (and its bound) goes by, creating the
/// set with `make`.
pub(super) fn with_handles<S, V: Clone, R>(
    lookup: Lookup<'_, S, V>,
    thread_key: ThreadKey<'_>,
    content_key: impl Fn(&mut Vec<u8>),
    make: impl Fn() -> Option<S>,
    then: impl Fn(Option<&V>) -> R,
) -> R {
    let cached = LOCAL.try_with(|local| {
        let mut local = local.try_borrow_mut().ok()?;
        let Parts {
            key,
            content,
            slots,
            last,
        } = (lookup.slots)(&mut local);
        if thread_key.is(&last.key) {
            return Some(then(last.entry.as_ref()));
        }
        key.clear();
        thread_key.write(key);
        let entry = match slots.get(key.as_slice()) {
            Some(entry) => entry.clone(),
            None => {
                content.clear();
                content_key(content);
                let entry = lookup
                    .sets
                    .resolve(content, &make)
                    .map(|s| (lookup.view)(&s));
                if slots.len() >= THREAD_CACHE_MAX {
                    slots.clear();
                }
                slots.insert(key.as_slice().into(), entry.clone());
                entry
            }
        };
        let out = then(entry.as_ref());
        last.key.clear();
        last.key.extend_from_slice(key);
        last.entry = entry;
        Some(out)
    });
    match cached {
        Ok(Some(out)) => out,
        // The thread is exiting (or, impossibly, re-entered): go to the shared map.
        _ => {
            let mut content = Vec::new();
            content_key(&mut content);
            let entry = lookup
                .sets
                .resolve(&content, &make)
                .map(|s| (lookup.view)(&s));
            then(entry.as_ref())
        }
    }
}
/// Entries in this thread's HTTP map (for tests).
#[cfg(test)]
pub(super) fn thread_http_entries() -> usize {
    LOCAL.with(|l| l.borrow().http.len())
}
