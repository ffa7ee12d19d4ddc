//! One layer of a pull: downloaded and unpacked at once into a staging snapshot
//! (`download_layer`), or unpacked from its blob (`ensure_layer`), then committed under
//! its chain ID once its diff ID checks out. Keyed locks: one download per blob digest
//! at a time; a `staged <digest>` lock held from download to commit, so a pull that
//! found the blob waits for it instead of unpacking the blob again; one commit per
//! chain ID. A blocking thread whose pull was dropped cleans up after itself
//! ([`Abandon`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{OwnedMutexGuard, mpsc};

use super::ImageStore;
use super::pull::{Sources, falls_back};
use crate::content::BlobWriter;
use crate::error::{Error, Result};
use crate::metrics::METRICS;
use crate::registry::{Descriptor, RegistryClient};
use crate::snapshot::Staging;
use crate::unpack::{Unpacked, inherit_implicit_dirs, unpack_layer, unpack_layer_overlapped};

/// Staged layers a pull has not committed yet; dropped off the async workers
/// (removing an unpacked layer takes a while).
pub(super) struct Discard(pub(super) Vec<Option<Staged>>);

impl Drop for Discard {
    fn drop(&mut self) {
        let left = std::mem::take(&mut self.0);
        if left.iter().any(Option::is_some)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn_blocking(move || drop(left));
        }
    }
}

impl ImageStore {
    /// Commits the snapshot of every layer of an image, `downloaded` (what
    /// [`download_layer`](Self::download_layer) staged) or unpacked from its blob.
    pub(super) async fn commit_layers(
        &self,
        layers: &[Descriptor],
        downloaded: &mut Discard,
        diff_ids: &[String],
        chains: &[String],
    ) -> Result<()> {
        // Each layer says when its snapshot is committed: the one above may need
        // the layers below to finish its directories (`inherit_implicit_dirs`).
        let (done_tx, done_rx): (Vec<_>, Vec<_>) = (0..layers.len())
            .map(|_| tokio::sync::watch::channel(false))
            .unzip();
        let commits = layers
            .iter()
            .zip(done_tx)
            .enumerate()
            .map(|(i, (layer, done))| {
                let parent = i
                    .checked_sub(1)
                    .map(|p| (chains[p].as_str(), done_rx[p].clone()));
                let staged = downloaded.0[i].take();
                async move {
                    self.ensure_layer(layer, staged, &diff_ids[i], &chains[i], parent)
                        .await?;
                    done.send_replace(true);
                    Ok::<_, Error>(())
                }
            });
        futures::future::try_join_all(commits).await?;
        Ok(())
    }

    /// Downloads layer `layer` into the content store, unpacking it into a staging
    /// snapshot while it streams in — unless its blob is here already (`None`). A
    /// download that fails for want of the endpoint (unreachable, dropped for good, not
    /// there, refused) is thrown away whole, staging directory and ingest file, and
    /// starts again from the next endpoint; bytes from two endpoints are never mixed.
    /// One download per blob at a time: a second pull wanting the same layer waits, then
    /// finds the blob.
    pub(super) async fn download_layer(
        &self,
        sources: &Sources<'_>,
        layer: &Descriptor,
    ) -> Result<Option<Staged>> {
        let _one = self
            .inner
            .locks
            .lock(&format!("blob {}", layer.digest))
            .await;
        if self.inner.content.contains(&layer.digest) {
            return Ok(None);
        }
        // Held until this pull has committed the layer (or given up): a pull that finds
        // the blob meanwhile waits for that instead of unpacking the blob again.
        let unpacking = self
            .inner
            .locks
            .lock(&format!("staged {}", layer.digest))
            .await;
        let mut k = 0;
        loop {
            let staging = self.inner.snapshots.begin()?;
            let got = match self.source(sources, k) {
                Ok(client) => self.download_unpack(&client, layer, staging.fs()).await,
                Err(e) => Err(e),
            };
            match got {
                Ok(unpacked) => {
                    return Ok(Some(Staged {
                        staging,
                        unpacked,
                        _unpacking: unpacking,
                    }));
                }
                Err(e) if falls_back(&e) && k < sources.rest.len() => {
                    drop(staging);
                    tracing::warn!(
                        digest = %layer.digest,
                        next = %sources.rest[k].0.host,
                        "layer download failed, starting over from the next endpoint: {e}"
                    );
                    k += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes sure the committed snapshot `chain_id` exists: commits `staged` (what
    /// [`download_layer`](Self::download_layer) unpacked) once its diff id checks out,
    /// or unpacks the layer's blob from the content store.
    async fn ensure_layer(
        &self,
        layer: &Descriptor,
        staged: Option<Staged>,
        diff_id: &str,
        chain_id: &str,
        parent: Option<(&str, tokio::sync::watch::Receiver<bool>)>,
    ) -> Result<()> {
        let (parent, parent_done) = parent.unzip();
        if staged.is_none() {
            // Another pull may have this layer unpacked and not yet committed: let it.
            drop(
                self.inner
                    .locks
                    .lock(&format!("staged {}", layer.digest))
                    .await,
            );
        }
        let _one = self.inner.locks.lock(&format!("chain {chain_id}")).await;
        let snaps = &self.inner.snapshots;
        if snaps.exists(chain_id)? {
            if let Some(s) = staged {
                snaps.discard_staging(s.staging);
            }
            return Ok(());
        }
        let (staging, unpacked) = match staged {
            Some(s) => (s.staging, s.unpacked),
            None => {
                let staging = snaps.begin()?;
                let dest = staging.fs();
                let path = self.inner.content.blob_path(&layer.digest)?;
                let (abandon, abandoned) = Abandon::new();
                let unpacked = tokio::task::spawn_blocking(move || {
                    let f = std::fs::File::open(&path)
                        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
                    let unpacked = unpack_layer(f, &dest).map_err(|e| e.with_space_of(&dest));
                    abandoned.clean_up(&dest)?;
                    unpacked
                })
                .await
                .map_err(|e| Error::Internal(format!("unpack task: {e}")))??;
                abandon.done();
                (staging, unpacked)
            }
        };
        if unpacked.diff_id != diff_id {
            return Err(Error::BadContent(format!(
                "layer {}: uncompressed digest {} does not match the config's {diff_id}",
                layer.digest, unpacked.diff_id
            )));
        }
        if let (Some(parent), Some(mut below), false) =
            (parent, parent_done, unpacked.implicit_dirs.is_empty())
        {
            below
                .wait_for(|committed| *committed)
                .await
                .map_err(|_| Error::Internal(format!("layer below {chain_id} failed")))?;
            let lowers = snaps.lowers(parent)?;
            let fs = staging.fs();
            let dirs = unpacked.implicit_dirs.clone();
            tokio::task::spawn_blocking(move || inherit_implicit_dirs(&fs, &dirs, &lowers))
                .await
                .map_err(|e| Error::Internal(format!("unpack task: {e}")))??;
        }
        snaps.commit(staging, chain_id, parent)
    }

    /// Downloads layer `layer` from `client` into the content store while unpacking it
    /// into `dest`. On error the ingest file is gone; `dest` is the caller's to drop.
    async fn download_unpack(
        &self,
        client: &RegistryClient,
        layer: &Descriptor,
        dest: PathBuf,
    ) -> Result<Unpacked> {
        let _permit = self
            .inner
            .downloads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("download semaphore closed".into()))?;
        let size = u64::try_from(layer.size).ok().filter(|s| *s > 0);
        let writer = self.inner.content.writer(&layer.digest, size)?;
        // A few chunks of slack: enough to keep the network busy while the unpacker
        // writes, little enough that a slow disk does not buffer a layer in memory.
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(8);
        let (abandon, abandoned) = Abandon::new();
        let staging_dir = dest.clone();
        let unpack = tokio::task::spawn_blocking(move || {
            let tee = Tee {
                rx,
                cur: Bytes::new(),
                blob: Some(writer),
            };
            unpack_tee(tee, &dest, abandoned)
        });
        let bytes = &METRICS.bytes_pulled;
        let t = Instant::now();
        let downloaded = client.stream_blob(layer, &tx, |n| bytes.inc_by(n)).await;
        let t_download = t.elapsed();
        drop(tx);
        let unpacked = unpack
            .await
            .map_err(|e| Error::Internal(format!("unpack task: {e}")))?
            .map_err(|e| e.with_space_of(&staging_dir));
        abandon.done();
        tracing::debug!(
            digest = %layer.digest,
            size = layer.size,
            download_ms = t_download.as_millis() as u64,
            unpacked_ms = t.elapsed().as_millis() as u64,
            "layer fetched"
        );
        match (downloaded, unpacked) {
            (Err(Some(e)), _) => Err(e),
            (_, r) => r,
        }
    }
}

/// The blocking side of a download: unpacks what `tee` reads into `dest` while it
/// writes the blob, then publishes the blob if its digest matches and the pull still
/// wants it (the ingest file goes otherwise).
fn unpack_tee(tee: Tee, dest: &Path, abandoned: Abandoned) -> Result<Unpacked> {
    // Bytes after the compressed stream (padding) still belong to the blob. A
    // whole blob of the right digest is made durable while the unpacker finishes.
    let (unpacked, (mut tee, drained, synced)) =
        unpack_layer_overlapped(tee, dest, |mut tee, drained| {
            let synced = match tee.blob.as_mut() {
                Some(b) if drained.is_ok() && b.digest_matches() => b.sync(),
                _ => Ok(()),
            };
            (tee, drained, synced)
        });
    let blob = tee
        .blob
        .take()
        .ok_or_else(|| Error::Internal("blob writer gone".into()))?;
    // Dropping the writer removes the ingest file.
    abandoned.clean_up(dest)?;
    match (unpacked, drained) {
        (Ok(u), Ok(_)) => synced.and_then(|()| blob.commit()).map(|()| u),
        (Ok(_), Err(e)) => Err(crate::unpack::io_to_error(e)),
        // A full disk is not the registry's fault, whatever the digest says.
        (Err(e @ Error::NoSpace(_)), _) => Err(e),
        // A corrupt stream is best explained by its digest, if the whole
        // blob arrived; the blob itself is never kept.
        (Err(e), Ok(_)) if !blob.digest_matches() => Err(Error::BadContent(format!(
            "blob digest mismatch for {} ({e})",
            blob.digest()
        ))),
        (Err(e), _) => Err(e),
    }
}

/// Set when the future that owns it is dropped before [`done`](Abandon::done): the
/// pull was abandoned (its client's deadline passed, or another layer failed). A
/// blocking thread unpacking for it runs on: the staging directory the dropped
/// future removed may still be written to until the thread ends, so the thread
/// removes it again at its end and drops its blob writer (the ingest file) instead of
/// publishing the blob.
struct Abandon {
    flag: Arc<AtomicBool>,
    done: bool,
}

/// The blocking thread's side of an [`Abandon`].
struct Abandoned(Arc<AtomicBool>);

impl Abandon {
    fn new() -> (Self, Abandoned) {
        let flag = Arc::new(AtomicBool::new(false));
        (
            Abandon {
                flag: flag.clone(),
                done: false,
            },
            Abandoned(flag),
        )
    }

    /// The thread's result was received: nothing was abandoned.
    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.done {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

impl Abandoned {
    /// Once the thread wrote its last byte into `dest` (a staging snapshot's `fs`):
    /// if the pull was abandoned, removes the staging snapshot and fails.
    fn clean_up(&self, dest: &Path) -> Result<()> {
        if !self.0.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(dir) = dest.parent() {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("removing {} of an abandoned pull: {e}", dir.display()),
            }
        }
        Err(Error::Internal("the pull was abandoned".into()))
    }
}

/// A layer downloaded and unpacked into staging, waiting for its chain ID.
pub(super) struct Staged {
    staging: Staging,
    unpacked: Unpacked,
    /// The `staged <digest>` lock, held until the layer is committed or dropped.
    _unpacking: OwnedMutexGuard<()>,
}

/// Reads a layer from the download channel, writing every byte to the blob as it passes.
struct Tee {
    rx: mpsc::Receiver<Result<Bytes>>,
    cur: Bytes,
    blob: Option<BlobWriter>,
}

impl std::io::Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Write as _;
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                Some(Ok(b)) => {
                    if let Some(w) = self.blob.as_mut() {
                        // Our own error, so the unpacker reports it as it is (a full disk
                        // is not bad content).
                        w.write_all(&b).map_err(|e| {
                            std::io::Error::other(Error::write("write", w.path(), e))
                        })?;
                    }
                    self.cur = b;
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}
