//! Where the ADS server reads resources from: the [`ResourceSource`] trait and an in-memory
//! implementation that the control server fills and tests use.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::types::Resource;

/// The resources of one type for one node, by name.
pub type ResourceMap = BTreeMap<String, Resource>;

/// The per-node resources an [`AdsServer`](super::AdsServer) serves.
pub trait ResourceSource: Send + Sync + 'static {
    /// The resources of `type_url` that node `node_id` gets; `None` when it gets none of that
    /// type (or the node is unknown), which is served as an empty set.
    fn resources(&self, node_id: &str, type_url: &str) -> Option<Arc<ResourceMap>>;

    /// A generation counter bumped on every change; streams recompute what they send when it
    /// moves.
    fn changes(&self) -> watch::Receiver<u64>;
}

type Nodes = HashMap<String, HashMap<String, Arc<ResourceMap>>>;

/// An in-memory [`ResourceSource`]: node id → type URL → resources.
#[derive(Debug)]
pub struct MemorySource {
    nodes: RwLock<Nodes>,
    generation: watch::Sender<u64>,
}

impl Default for MemorySource {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySource {
    /// An empty source at generation 0.
    pub fn new() -> Self {
        MemorySource {
            nodes: RwLock::new(HashMap::new()),
            generation: watch::Sender::new(0),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Nodes)) {
        {
            let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
            f(&mut nodes);
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Replaces the resources of `type_url` for `node_id` and bumps the generation.
    pub fn set(
        &self,
        node_id: &str,
        type_url: &str,
        resources: impl IntoIterator<Item = Resource>,
    ) {
        let map: ResourceMap = resources.into_iter().map(|r| (r.name.clone(), r)).collect();
        self.update(|nodes| {
            nodes
                .entry(node_id.to_string())
                .or_default()
                .insert(type_url.to_string(), Arc::new(map));
        });
    }

    /// Adds or replaces one resource of `type_url` for `node_id`.
    pub fn put(&self, node_id: &str, type_url: &str, resource: Resource) {
        self.update(|nodes| {
            let types = nodes.entry(node_id.to_string()).or_default();
            let map = types.entry(type_url.to_string()).or_default();
            Arc::make_mut(map).insert(resource.name.clone(), resource);
        });
    }

    /// Removes one resource; returns whether it was there.
    pub fn delete(&self, node_id: &str, type_url: &str, name: &str) -> bool {
        let mut found = false;
        self.update(|nodes| {
            if let Some(map) = nodes.get_mut(node_id).and_then(|t| t.get_mut(type_url)) {
                found = Arc::make_mut(map).remove(name).is_some();
            }
        });
        found
    }

    /// Replaces everything `node_id` gets (all types at once, one generation bump).
    pub fn set_node(
        &self,
        node_id: &str,
        types: impl IntoIterator<Item = (String, Vec<Resource>)>,
    ) {
        let types: HashMap<String, Arc<ResourceMap>> = types
            .into_iter()
            .map(|(t, rs)| {
                let map: ResourceMap = rs.into_iter().map(|r| (r.name.clone(), r)).collect();
                (t, Arc::new(map))
            })
            .collect();
        self.update(|nodes| {
            nodes.insert(node_id.to_string(), types);
        });
    }

    /// Replaces everything `node_id` gets with `state` (type URL → name → resource, as
    /// [`ProxyResources::to_state`](super::ProxyResources::to_state) makes it), in one
    /// generation bump.
    pub fn set_node_state(&self, node_id: &str, state: super::types::State) {
        let types: HashMap<String, Arc<ResourceMap>> = state
            .into_iter()
            .map(|(t, map)| (t, Arc::new(map)))
            .collect();
        self.update(|nodes| {
            nodes.insert(node_id.to_string(), types);
        });
    }

    /// Forgets `node_id` entirely.
    pub fn remove_node(&self, node_id: &str) {
        self.update(|nodes| {
            nodes.remove(node_id);
        });
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }
}

impl ResourceSource for MemorySource {
    fn resources(&self, node_id: &str, type_url: &str) -> Option<Arc<ResourceMap>> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes.get(node_id)?.get(type_url).cloned()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ads::types::Any;
    use crate::ads::SERVICE_TYPE;

    #[test]
    fn set_put_delete_bump_the_generation() {
        let s = MemorySource::new();
        let rx = s.changes();
        assert!(s.resources("n", SERVICE_TYPE).is_none());
        s.set("n", SERVICE_TYPE, [Resource::new("a", "1", Any::default())]);
        assert_eq!(s.generation(), 1);
        assert!(rx.has_changed().unwrap());
        s.put("n", SERVICE_TYPE, Resource::new("b", "1", Any::default()));
        let got = s.resources("n", SERVICE_TYPE).unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(s.delete("n", SERVICE_TYPE, "a"));
        assert!(!s.delete("n", SERVICE_TYPE, "zzz"));
        // A reader's snapshot is not changed under it.
        assert_eq!(got.len(), 2);
        assert_eq!(s.resources("n", SERVICE_TYPE).unwrap().len(), 1);
        s.remove_node("n");
        assert!(s.resources("n", SERVICE_TYPE).is_none());
        assert_eq!(s.generation(), 5);
    }
}
