//! Label set resolution: a bounded per-thread map in front of a shared map that owns the
//! cardinality bound.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::{HttpHandles, TcpHandles};

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

    /// The handles for `key`, created with `make` if there is room; None when the bound is
    /// reached (or `make` fails).
    fn resolve(&self, key: &[u8], make: impl FnOnce() -> Option<H>) -> Option<Arc<H>> {
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

/// Encoded label values (prefixed by the instance id) → handles, or None for a dropped set.
pub(super) type Slots<H> = HashMap<Box<[u8]>, Option<Arc<H>>>;

/// One thread's maps, and the buffer keys are encoded into.
#[derive(Default)]
pub(super) struct Local {
    key: Vec<u8>,
    http: Slots<HttpHandles>,
    tcp: Slots<TcpHandles>,
}

impl Local {
    /// The key buffer and the HTTP map.
    pub(super) fn http(&mut self) -> (&mut Vec<u8>, &mut Slots<HttpHandles>) {
        (&mut self.key, &mut self.http)
    }

    /// The key buffer and the TCP map.
    pub(super) fn tcp(&mut self) -> (&mut Vec<u8>, &mut Slots<TcpHandles>) {
        (&mut self.key, &mut self.tcp)
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

/// Calls `then` with the handles of the label set `encode` writes (None when it was dropped):
/// from this thread's map when it has them, else from `sets`, creating them with `make`.
pub(super) fn with_handles<H, R>(
    sets: &LabelSets<H>,
    slots: fn(&mut Local) -> (&mut Vec<u8>, &mut Slots<H>),
    id: u64,
    encode: impl Fn(&mut Vec<u8>),
    make: impl Fn() -> Option<H>,
    then: impl Fn(Option<&Arc<H>>) -> R,
) -> R {
    let id = id.to_le_bytes();
    let cached = LOCAL.try_with(|local| {
        let mut local = local.try_borrow_mut().ok()?;
        let (key, slots) = slots(&mut local);
        key.clear();
        key.extend_from_slice(&id);
        encode(key);
        if let Some(entry) = slots.get(key.as_slice()) {
            return Some(then(entry.as_ref()));
        }
        let entry = sets.resolve(&key[id.len()..], &make);
        let out = then(entry.as_ref());
        if slots.len() >= THREAD_CACHE_MAX {
            slots.clear();
        }
        slots.insert(key.as_slice().into(), entry);
        Some(out)
    });
    match cached {
        Ok(Some(out)) => out,
        // The thread is exiting (or, impossibly, re-entered): go to the shared map.
        _ => {
            let mut key = Vec::new();
            encode(&mut key);
            then(sets.resolve(&key, &make).as_ref())
        }
    }
}

/// Entries in this thread's HTTP map (for tests).
#[cfg(test)]
pub(super) fn thread_http_entries() -> usize {
    LOCAL.with(|l| l.borrow().http.len())
}
