//! Pod name reservation that a kubelet retry cannot wedge.
//!
//! kubelet gives up on a RunPodSandbox after its timeout and retries with the same name. The
//! create itself runs on in a task of its own (a dropped RPC does not cancel it), so:
//! - a retry while the first create is still running waits for it and gets its result;
//! - a create that finishes after its caller left is kept as *unclaimed*, and the next identical
//!   request takes it over instead of being told the name is taken;
//! - any other request for a name that is held fails naming the holder.

use tokio::sync::watch;

use super::spec::PodSpec;

/// The outcome of a create: the pod id, or the error text.
pub type Outcome = Option<Result<String, String>>;

pub enum Reservation {
    InFlight {
        id: String,
        spec: PodSpec,
        done: watch::Receiver<Outcome>,
    },
    Unclaimed {
        id: String,
        spec: PodSpec,
    },
}

impl Reservation {
    pub fn id(&self) -> &str {
        match self {
            Reservation::InFlight { id, .. } | Reservation::Unclaimed { id, .. } => id,
        }
    }
}
