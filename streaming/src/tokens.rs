//! Single-use tokens: Exec, Attach and PortForward each register what the client may
//! do and get a random token for its URL; the first connection with the token takes
//! it, and a token not taken within its lifetime is gone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::remotecommand::ExecOptions;

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        opts: ExecOptions,
    },
    Attach {
        container_id: String,
        opts: ExecOptions,
    },
    PortForward {
        pod_id: String,
    },
}

impl Request {
    /// The URL path segment of this kind of request.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Exec { .. } => "exec",
            Request::Attach { .. } => "attach",
            Request::PortForward { .. } => "portforward",
        }
    }
}

/// Tokens handed out and not yet taken.
pub struct Tokens {
    ttl: Duration,
    max: usize,
    pending: Mutex<HashMap<String, (Instant, Request)>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Too many tokens are waiting to be used.
    Full,
    /// No random bytes could be had.
    Random(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Full => write!(f, "too many streaming requests are waiting to be used"),
            TokenError::Random(e) => write!(f, "no random bytes for a token: {e}"),
        }
    }
}

impl Tokens {
    /// Tokens living `ttl`, at most `max` waiting at once.
    pub fn new(ttl: Duration, max: usize) -> Tokens {
        Tokens {
            ttl,
            max,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Registers `req` and returns its token.
    pub fn insert(&self, req: Request) -> Result<String, TokenError> {
        let mut bytes = [0u8; 18];
        getrandom(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= self.max {
            pending.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
            if pending.len() >= self.max {
                return Err(TokenError::Full);
            }
        }
        pending.insert(token.clone(), (now, req));
        Ok(token)
    }

    /// Takes the request of `token`: `None` when it is unknown, used or expired.
    pub fn take(&self, token: &str) -> Option<Request> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (at, req) = pending.remove(token)?;
        (at.elapsed() < self.ttl).then_some(req)
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most the given length into the buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Request {
        Request::Exec {
            container_id: "c".into(),
            cmd: vec!["true".into()],
            opts: ExecOptions::default(),
        }
    }

    #[test]
    fn a_token_is_taken_once() {
        let t = Tokens::new(Duration::from_secs(60), 10);
        let a = t.insert(exec()).unwrap();
        let b = t.insert(exec()).unwrap();
        assert_ne!(a, b);
        assert!(a.len() >= 24);
        assert_eq!(t.take(&a), Some(exec()));
        assert_eq!(t.take(&a), None);
        assert_eq!(t.take("unknown"), None);
        assert!(t.take(&b).is_some());
    }

    #[test]
    fn tokens_expire_and_make_room() {
        let t = Tokens::new(Duration::from_millis(20), 2);
        let a = t.insert(exec()).unwrap();
        t.insert(exec()).unwrap();
        assert_eq!(t.insert(exec()), Err(TokenError::Full));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(t.take(&a), None);
        // Expired ones are dropped when room is needed.
        t.insert(exec()).unwrap();
        t.insert(exec()).unwrap();
    }
}
