//! Layer unpacking: a (gzip | zstd | plain) tar stream into one empty directory, in the
//! form overlayfs expects.
//!
//! The tar stream is read by [`crate::tar_reader`], which reads what Go's `archive/tar`
//! reads. Names: a leading `/` or `./` is the layer root; `/`, `.` and `./` name the
//! root itself, and such an entry is ignored, as containerd's applier ignores it (the
//! snapshot root keeps its own mode, owner and times); names are cleaned lexically as
//! Go's `path.Clean` does (`a/../b` is `b`, `/../x` is `x`), and only a name that still
//! climbs above the root refuses the layer. Hard-link targets follow the same rules.
//! Sparse files are written with their holes.
//!
//! Safety: every parent directory is opened with `openat2(RESOLVE_BENEATH)` relative
//! to the snapshot root, so a symlink or hard link that would lead outside fails with EXDEV and
//! refuses the layer (consecutive entries of one directory share that opened parent).
//! The last path component is never followed: inodes are created with `O_EXCL |
//! O_NOFOLLOW` (or `symlinkat`/`mkdirat`, which never follow), and whatever stands in the
//! way is unlinked first. A chown is skipped only where the new inode already has the
//! owner asked for (ours, in a directory of our group). The caller deletes
//! the directory when this returns an error, so a refused layer leaves nothing.
//!
//! Whiteouts: `.wh.NAME` becomes a character device 0/0 named NAME, and `.wh..wh..opq`
//! sets `trusted.overlay.opaque=y` on its directory.
//!
//! ```text
//! decompress  gzip | zstd | plain, from the stream's first bytes
//! entry       one tar entry written beneath the snapshot root
//! layer       a whole tar stream, hashed into its diff ID
//! overlap     the same, decompressing on a thread of its own
//! implicit    directories without entries take their metadata from the layers below
//! ```

mod decompress;
mod entry;
mod implicit;
mod layer;
mod overlap;
#[cfg(test)]
mod tests;

pub use implicit::inherit_implicit_dirs;
pub use layer::{Unpacked, io_to_error, unpack_layer};
pub use overlap::unpack_layer_overlapped;
