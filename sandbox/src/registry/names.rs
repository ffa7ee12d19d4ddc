//! Name reservation that a kubelet retry cannot wedge.
//!
//! kubelet gives up on a RunPodSandbox or CreateContainer after its timeout and retries with
//! the same request. The create runs on in a task of its own (a dropped RPC does not cancel
//! it), so:
//! - a retry while the first create still runs waits for it and gets its result; if it failed,
//!   the retry creates anew;
//! - a create that finishes after its caller left may be kept *unclaimed*, and the next
//!   identical request takes it over instead of being told the name is taken;
//! - any other request for a name that is held fails (AlreadyExists) naming the holder.
//!
//! The reservation is held by a [`NameGuard`]: a create that panics drops it, which frees the
//! name, and whoever waited learns that the outcome is lost (Internal) instead of waiting on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::error::{Error, Result};

/// The outcome of a create: the new id, or the error text.
pub type Outcome = Option<std::result::Result<String, String>>;

enum Reservation<S> {
    InFlight {
        id: String,
        request: S,
        done: watch::Receiver<Outcome>,
    },
    Unclaimed {
        id: String,
        request: S,
    },
}

impl<S> Reservation<S> {
    fn id(&self) -> &str {
        match self {
            Reservation::InFlight { id, .. } | Reservation::Unclaimed { id, .. } => id,
        }
    }
}

/// An object that already bears a name.
pub enum Holder {
    /// Made by this same request and untouched since: a retry gets it.
    Reusable(String),
    /// Anything else: the name is taken by this id.
    Taken(String),
}

/// What [`Names::reserve`] found.
pub enum Reserved<S> {
    /// The name is this request's; create under the guard's id.
    Fresh(NameGuard<S>),
    /// An identical create is running: [`wait_outcome`] on it.
    Wait(watch::Receiver<Outcome>),
    /// An object this same request made already.
    Made(String),
}

/// The names of one kind of object (`what`: "pod sandbox", "container").
pub struct Names<S> {
    what: &'static str,
    map: Mutex<HashMap<String, Reservation<S>>>,
}

impl<S: PartialEq + Clone + Send + 'static> Names<S> {
    pub fn new(what: &'static str) -> Arc<Names<S>> {
        Arc::new(Names {
            what,
            map: Mutex::new(HashMap::new()),
        })
    }

    /// Takes `key` for a new create of `request`, or finds the create this request retries.
    /// `holder` looks for an existing object of that name; it runs under the names lock, so a
    /// create that just finished is either still reserved or already found there.
    pub fn reserve(
        self: &Arc<Self>,
        key: &str,
        request: &S,
        holder: impl FnOnce() -> Option<Holder>,
    ) -> Result<Reserved<S>> {
        let what = self.what;
        let mut map = self.lock();
        match map.get(key) {
            Some(Reservation::InFlight {
                request: r, done, ..
            }) if r == request => {
                return Ok(Reserved::Wait(done.clone()));
            }
            Some(Reservation::Unclaimed { id, request: r }) if r == request => {
                let id = id.clone();
                map.remove(key);
                return Ok(Reserved::Made(id));
            }
            Some(r) => {
                return Err(Error::AlreadyExists(format!(
                    "{what} name {key:?} is reserved for {}",
                    r.id()
                )));
            }
            None => {}
        }
        match holder() {
            Some(Holder::Reusable(id)) => return Ok(Reserved::Made(id)),
            Some(Holder::Taken(id)) => {
                return Err(Error::AlreadyExists(format!(
                    "{what} name {key:?} is already used by {id}"
                )));
            }
            None => {}
        }
        let id = super::new_id()?;
        let (tx, rx) = watch::channel(None);
        map.insert(
            key.to_string(),
            Reservation::InFlight {
                id: id.clone(),
                request: request.clone(),
                done: rx,
            },
        );
        Ok(Reserved::Fresh(NameGuard {
            names: self.clone(),
            key: key.to_string(),
            id,
            request: request.clone(),
            done: Some(tx),
        }))
    }

    /// A waiter got `id` from the create it waited for: an unclaimed reservation of it goes.
    pub fn claim(&self, key: &str, id: &str) {
        let mut map = self.lock();
        if matches!(map.get(key), Some(Reservation::Unclaimed { id: i, .. }) if i == id) {
            map.remove(key);
        }
    }

    /// Drops every reservation of `id` (its object was removed).
    pub fn forget_id(&self, id: &str) {
        self.lock().retain(|_, r| r.id() != id);
    }
}

impl<S> Names<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reservation<S>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Waits for the create a retry found running: `Some(id)` when it made the object, None when
/// it failed (the name is free again: try anew), Internal when it ended without an outcome
/// (it panicked; its guard freed the name).
pub async fn wait_outcome(
    mut done: watch::Receiver<Outcome>,
    what: &str,
) -> Result<Option<String>> {
    match done.wait_for(Option::is_some).await {
        Ok(o) => Ok(o.clone().and_then(|r| r.ok())),
        Err(_) => Err(Error::Internal(format!(
            "the {what} creation this request waited for ended without a result"
        ))),
    }
}

/// A reserved name. [`finish`](NameGuard::finish) publishes the outcome; dropped unfinished
/// (a panic), it frees the name and closes the channel waiters watch.
pub struct NameGuard<S> {
    names: Arc<Names<S>>,
    key: String,
    id: String,
    request: S,
    done: Option<watch::Sender<Outcome>>,
}

impl<S: PartialEq + Clone + Send + 'static> NameGuard<S> {
    /// The id the new object gets.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Ends the reservation with the create's result. With `unclaimed` a made object is kept
    /// reserved for the next identical request (its caller left).
    pub fn finish(mut self, result: std::result::Result<&str, String>, unclaimed: bool) {
        {
            let mut map = self.names.lock();
            match result {
                Ok(id) if unclaimed => {
                    map.insert(
                        self.key.clone(),
                        Reservation::Unclaimed {
                            id: id.to_string(),
                            request: self.request.clone(),
                        },
                    );
                }
                _ => {
                    map.remove(&self.key);
                }
            }
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(Some(result.map(str::to_string)));
        }
    }
}

impl<S> Drop for NameGuard<S> {
    fn drop(&mut self) {
        if self.done.is_some() {
            tracing::error!(name = ?self.key, id = %self.id, "a create ended without an outcome; its name is freed");
            self.names.lock().remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(r: Result<Reserved<u32>>) -> NameGuard<u32> {
        match r {
            Ok(Reserved::Fresh(g)) => g,
            _ => panic!("expected a fresh reservation"),
        }
    }

    /// A name reserved for request 1, and an identical request waiting for it.
    fn reserved_and_waited_for() -> (Arc<Names<u32>>, NameGuard<u32>, watch::Receiver<Outcome>) {
        let names = Names::<u32>::new("thing");
        let g = fresh(names.reserve("a", &1, || None));
        let Ok(Reserved::Wait(rx)) = names.reserve("a", &1, || None) else {
            panic!("an identical request waits");
        };
        (names, g, rx)
    }

    #[tokio::test]
    async fn identical_requests_wait_and_others_are_refused() {
        let (names, g, rx) = reserved_and_waited_for();
        let id = g.id().to_string();
        match names.reserve("a", &2, || None) {
            Err(Error::AlreadyExists(m)) => assert!(m.contains(&id), "{m}"),
            _ => panic!("another request is refused"),
        }
        g.finish(Ok(&id), false);
        assert_eq!(wait_outcome(rx, "thing").await.unwrap(), Some(id));
        // Free again (the object itself is found through `holder` from now on).
        fresh(names.reserve("a", &2, || None));
    }

    #[tokio::test]
    async fn a_failed_create_frees_the_name_for_the_waiter() {
        let (names, g, rx) = reserved_and_waited_for();
        g.finish(Err("boom".into()), false);
        assert_eq!(wait_outcome(rx, "thing").await.unwrap(), None);
        fresh(names.reserve("a", &1, || None));
    }

    #[tokio::test]
    async fn a_dropped_guard_frees_the_name_and_tells_the_waiter() {
        let (names, g, rx) = reserved_and_waited_for();
        // A create that panics drops its guard while unwinding.
        let r = std::thread::spawn(move || {
            let _g = g;
            panic!("create panicked");
        })
        .join();
        assert!(r.is_err());
        assert!(matches!(
            wait_outcome(rx, "thing").await,
            Err(Error::Internal(m)) if m.contains("without a result")
        ));
        fresh(names.reserve("a", &2, || None));
    }

    #[test]
    fn unclaimed_creates_go_to_the_identical_retry_only() {
        let names = Names::<u32>::new("thing");
        let g = fresh(names.reserve("a", &1, || None));
        let id = g.id().to_string();
        g.finish(Ok(&id), true);
        assert!(matches!(
            names.reserve("a", &2, || None),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(names.reserve("a", &1, || None), Ok(Reserved::Made(i)) if i == id));
        // Taken over: the name is the object's now.
        assert!(matches!(
            names.reserve("a", &1, || Some(Holder::Taken(id.clone()))),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            names.reserve("a", &1, || Some(Holder::Reusable(id.clone()))),
            Ok(Reserved::Made(i)) if i == id
        ));
    }
}
