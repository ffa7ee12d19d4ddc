//! The object registry pods and containers share.
//!
//! - [`Names`]: a name reserved for a create that runs in a task of its own, with a drop
//!   guard, so that a kubelet retry of the same request waits for the create (or takes over
//!   one whose caller left) and a create that panics frees its name;
//! - [`Registry`]: the objects themselves, by id (full or a unique prefix), kept in memory and
//!   in a typed, versioned JSON table of the state store ([`Table`]). Each object has its own
//!   lock, under which its durable commit runs: a write waits only for writes of the same
//!   object, and reads never wait for the disk;
//! - [`KeyedLocks`]: one lock per key (an object's writes, a pod's operations).

mod locks;
mod names;
mod objects;
mod table;

pub use locks::KeyedLocks;
pub use names::{Holder, NameGuard, Names, Reserved, wait_outcome};
pub use objects::Registry;
pub use table::{Table, Unreadable, Versioned};

use crate::error::{Error, Result};

/// The full key for a full key or a unique prefix of one; None when nothing matches.
/// `what` names the kind of object in the errors ("container id").
pub fn resolve_prefix<'a>(
    what: &str,
    id: &str,
    keys: impl IntoIterator<Item = &'a String>,
) -> Result<Option<String>> {
    if id.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} is empty")));
    }
    let matches: Vec<&String> = keys.into_iter().filter(|k| k.starts_with(id)).collect();
    if matches.iter().any(|k| *k == id) {
        return Ok(Some(id.to_string()));
    }
    match matches.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).clone())),
        _ => Err(Error::InvalidArgument(format!(
            "{what} prefix {id:?} is ambiguous"
        ))),
    }
}

/// A fresh random id: 64 hex characters.
pub fn new_id() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A record for the registry's own tests.
#[cfg(test)]
mod test_record {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Rec {
        pub version: u32,
        pub id: String,
        pub n: u32,
    }

    impl super::Versioned for Rec {
        const VERSION: u32 = 2;
        fn version(&self) -> u32 {
            self.version
        }
        fn key(&self) -> &str {
            &self.id
        }
    }

    pub fn rec(id: &str) -> Rec {
        Rec {
            version: 1,
            id: id.into(),
            n: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_resolve_when_unique() {
        let keys: Vec<String> = vec!["abc1".into(), "abc2".into(), "def".into()];
        assert_eq!(
            resolve_prefix("id", "def", &keys).unwrap().as_deref(),
            Some("def")
        );
        assert_eq!(
            resolve_prefix("id", "d", &keys).unwrap().as_deref(),
            Some("def")
        );
        assert_eq!(
            resolve_prefix("id", "abc1", &keys).unwrap().as_deref(),
            Some("abc1")
        );
        assert_eq!(resolve_prefix("id", "x", &keys).unwrap(), None);
        assert!(matches!(
            resolve_prefix("id", "abc", &keys),
            Err(Error::InvalidArgument(m)) if m.contains("ambiguous")
        ));
        assert!(matches!(
            resolve_prefix("id", "", &keys),
            Err(Error::InvalidArgument(m)) if m == "id is empty"
        ));
    }

    #[test]
    fn a_full_id_wins_over_longer_ids_it_prefixes() {
        let keys: Vec<String> = vec!["abc".into(), "abcd".into()];
        assert_eq!(
            resolve_prefix("id", "abc", &keys).unwrap().as_deref(),
            Some("abc")
        );
    }
}
