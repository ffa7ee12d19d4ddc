//! crustd's private on-disk state, shared by the crates that keep it:
//!
//! - [`StateDb`]: the one handle on `<root_dir>/state.redb`. redb turns every later call into
//!   `PreviousIo` after one failed write (a full disk); the handle closes and reopens the
//!   database then, so freeing space is enough to make writes work again.
//! - [`NoSpace`]: a write that failed for lack of space (ENOSPC, EDQUOT), naming the path and the
//!   space left on its filesystem; cri answers it with ResourceExhausted.
//! - [`private`]: owner-only directories (0700) and files (0600) below root_dir and state_dir,
//!   and the start-up check that tightens an older install's modes.

mod db;
pub mod private;
mod space;

pub use db::{StateDb, StateError};
pub use space::{NoSpace, free_bytes, is_no_space};
