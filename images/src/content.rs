//! The content store: blobs addressed by digest.
//!
//! ```text
//! <root>/content/blobs/sha256/<hex>   committed, digest verified
//! <root>/content/ingest/<random>      being written; renamed into blobs/ only when the
//!                                     digest matches, deleted otherwise (or by gc at start)
//! ```

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{Digester, hex_of};
use crate::error::{Error, Result};

/// Blobs by digest under one directory.
#[derive(Debug)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) the store under `root` (`<images root>/content`).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for d in [
            root.clone(),
            root.join("blobs"),
            root.join("blobs/sha256"),
            root.join("ingest"),
        ] {
            crust_state::private::create_dir(&d).map_err(|e| Error::write("create", &d, e))?;
        }
        Ok(ContentStore { root })
    }

    /// The directory holding the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` lives once committed.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = hex_of(digest)
            .ok_or_else(|| Error::InvalidArgument(format!("invalid digest {digest:?}")))?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    /// Whether the blob is committed.
    pub fn contains(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Reads a whole (small) blob: manifests, configs.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.blob_path(digest)?;
        fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!("blob {digest}")),
            _ => Error::io(format!("read {}", p.display()), e),
        })
    }

    /// Starts writing the blob `digest`; nothing is visible until [`BlobWriter::commit`].
    pub fn writer(&self, digest: &str, size: Option<u64>) -> Result<BlobWriter> {
        let final_path = self.blob_path(digest)?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            &digest[7..19]
        );
        let tmp = self.root.join("ingest").join(name);
        let file =
            crust_state::private::create_file(&tmp).map_err(|e| Error::write("create", &tmp, e))?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            final_path,
            digest: digest.to_string(),
            size,
            written: 0,
            hasher: Digester::new(),
            synced: false,
        })
    }

    /// Writes a whole blob, verifying its digest.
    pub fn write_all(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        if self.contains(digest) {
            return Ok(());
        }
        let mut w = self.writer(digest, Some(bytes.len() as u64))?;
        w.write_all(bytes)
            .map_err(|e| Error::write("write", &w.tmp, e))?;
        w.commit()
    }

    /// Digests of every committed blob.
    pub fn list(&self) -> Result<Vec<String>> {
        let dir = self.root.join("blobs/sha256");
        let rd = fs::read_dir(&dir).map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            if let Some(name) = entry.file_name().to_str() {
                out.push(format!("sha256:{name}"));
            }
        }
        Ok(out)
    }

    /// Removes a blob; absent is fine.
    pub fn delete(&self, digest: &str) -> Result<()> {
        let p = self.blob_path(digest)?;
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(Error::io(format!("remove {}", p.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Removes every ingest file: leftovers of pulls that were interrupted. Call only when
    /// no pull is running.
    pub fn clean_ingest(&self) -> Result<usize> {
        let dir = self.root.join("ingest");
        let rd = fs::read_dir(&dir).map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
        let mut n = 0;
        for entry in rd.flatten() {
            if fs::remove_file(entry.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Number of files being ingested right now (for tests and gc reports).
    pub fn ingest_count(&self) -> usize {
        fs::read_dir(self.root.join("ingest")).map_or(0, |rd| rd.count())
    }
}

/// A blob being written. Hashes what it is given; [`commit`](Self::commit) renames it into
/// place only if the digest (and size, when known) match. Dropped uncommitted, it deletes
/// its temp file.
pub struct BlobWriter {
    file: Option<File>,
    tmp: PathBuf,
    final_path: PathBuf,
    digest: String,
    size: Option<u64>,
    written: u64,
    hasher: Digester,
    /// Made durable already by [`sync`](Self::sync).
    synced: bool,
}

impl BlobWriter {
    /// The ingest file being written.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether what was written so far has the expected digest (nothing is published).
    pub fn digest_matches(&self) -> bool {
        self.hasher.clone().finish() == self.digest
    }

    /// The digest this blob must have.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Makes what was written so far durable, so that [`commit`](Self::commit) has only
    /// the rename left: call it once the whole blob is written, where waiting for the
    /// disk overlaps other work.
    pub fn sync(&mut self) -> Result<()> {
        if let Some(f) = &self.file {
            f.sync_all()
                .map_err(|e| Error::write("sync", &self.tmp, e))?;
            self.synced = true;
        }
        Ok(())
    }

    /// Verifies and publishes the blob.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take();
        if let Some(size) = self.size
            && self.written != size
        {
            return Err(Error::BadContent(format!(
                "blob {}: got {} bytes, expected {size}",
                self.digest, self.written
            )));
        }
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != self.digest {
            return Err(Error::BadContent(format!(
                "blob digest mismatch: expected {}, got {actual}",
                self.digest
            )));
        }
        if let Some(f) = file.filter(|_| !self.synced) {
            // Durable before it becomes visible: a blob in blobs/ is always complete.
            f.sync_all()
                .map_err(|e| Error::write("sync", &self.tmp, e))?;
        }
        fs::rename(&self.tmp, &self.final_path).map_err(|e| {
            Error::io(
                format!(
                    "rename {} to {}",
                    self.tmp.display(),
                    self.final_path.display()
                ),
                e,
            )
        })?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer closed"))?;
        let n = f.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        self.synced = false;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256;

    #[test]
    fn write_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path().join("content")).unwrap();
        let d = sha256(b"hello");
        cs.write_all(&d, b"hello").unwrap();
        assert!(cs.contains(&d));
        assert_eq!(cs.read(&d).unwrap(), b"hello");
        assert_eq!(cs.list().unwrap(), vec![d.clone()]);
        assert_eq!(cs.ingest_count(), 0);
        cs.delete(&d).unwrap();
        cs.delete(&d).unwrap();
        assert!(!cs.contains(&d));
    }

    #[test]
    fn digest_mismatch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path().join("content")).unwrap();
        let d = sha256(b"hello");
        let err = cs.write_all(&d, b"jello").unwrap_err();
        assert!(matches!(err, Error::BadContent(_)), "{err}");
        assert!(err.to_string().contains("digest mismatch"));
        assert!(!cs.contains(&d));
        assert_eq!(cs.ingest_count(), 0);
        assert!(cs.list().unwrap().is_empty());
    }

    #[test]
    fn short_blob_and_dropped_writer_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path().join("content")).unwrap();
        let d = sha256(b"hello");
        let mut w = cs.writer(&d, Some(5)).unwrap();
        w.write_all(b"hel").unwrap();
        assert_eq!(cs.ingest_count(), 1);
        assert!(matches!(w.commit(), Err(Error::BadContent(_))));
        assert_eq!(cs.ingest_count(), 0);

        let mut w = cs.writer(&d, None).unwrap();
        w.write_all(b"hel").unwrap();
        drop(w);
        assert_eq!(cs.ingest_count(), 0);
        assert!(!cs.contains(&d));
        assert!(matches!(cs.read(&d), Err(Error::NotFound(_))));
    }
}
