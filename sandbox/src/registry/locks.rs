//! One lock per key, made on first use and dropped when its object goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Locks (or any shared `T`) by key. The map's own mutex is held only to find the entry.
pub struct KeyedLocks<T> {
    map: Mutex<HashMap<String, Arc<T>>>,
}

impl<T: Default> Default for KeyedLocks<T> {
    fn default() -> Self {
        KeyedLocks {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Default> KeyedLocks<T> {
    /// The entry of `key`, made if there is none.
    pub fn get(&self, key: &str) -> Arc<T> {
        self.lock().entry(key.to_string()).or_default().clone()
    }

    /// Drops the entry of `key` (whoever holds it keeps their `Arc`).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// The keys whose entry satisfies `f`.
    pub fn keys_where(&self, f: impl Fn(&str, &T) -> bool) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(k, v)| f(k, v))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<T>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}
