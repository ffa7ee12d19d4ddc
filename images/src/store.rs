//! The image store: what cri calls. Pulls images into the content store and the
//! snapshotter, keeps image records in the state store, removes and collects garbage.
//!
//! Concurrency:
//! - A pull holds the gc lock shared; gc holds it exclusively, so gc never sees the
//!   staging directories and ingest files of a running pull as garbage.
//! - Pulls of one reference, and unpacks of one chain ID, are serialised by keyed
//!   locks: the second waits, then finds the work done.
//! - Layer downloads across all pulls are bounded by one semaphore.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crust_state::{StateDb, StateError};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedMutexGuard, OwnedRwLockWriteGuard, RwLock, Semaphore, mpsc};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::content::{BlobWriter, ContentStore};
use crate::digest::{chain_ids, hex_of};
use crate::error::{Error, Result};
use crate::metrics::METRICS;
use crate::reference::{Reference, is_hex64};
use crate::registry::{self, Auth, Descriptor, Policy, RegistryClient};
use crate::snapshot::{Snapshotter, Staging};
use crate::unpack::{Unpacked, inherit_implicit_dirs, unpack_layer, unpack_layer_overlapped};

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images.images");
const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    version: u32,
    id: String,
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    size: u64,
    manifest_digest: String,
    /// Every blob the image needs kept: manifests, config, layers.
    blobs: Vec<String>,
    /// Chain ID of the top layer (the rootfs); `None` for an image without layers.
    chain_id: Option<String>,
    /// `User` from the image config.
    user: String,
}

/// An image as cri reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The config digest, `sha256:<hex>`.
    pub id: String,
    /// `name:tag` references.
    pub repo_tags: Vec<String>,
    /// `name@digest` references.
    pub repo_digests: Vec<String>,
    /// Bytes of config and (compressed) layers.
    pub size: u64,
    /// Numeric user from the config's `User`, if it is numeric.
    pub uid: Option<i64>,
    /// User name from the config's `User`, if it is a name.
    pub username: String,
    /// In the configured pinned list.
    pub pinned: bool,
    /// Chain ID of the rootfs: the parent for [`Snapshotter::prepare`].
    pub chain_id: Option<String>,
}

/// Usage of one store directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    /// The directory measured.
    pub path: PathBuf,
    /// The mount point holding it.
    pub mountpoint: PathBuf,
    /// Bytes used (allocated blocks).
    pub bytes: u64,
    /// Inodes used.
    pub inodes: u64,
}

/// Usage of the snapshot store and the content store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// Snapshots (unpacked layers, container upper dirs).
    pub snapshots: FsUsage,
    /// Blobs.
    pub content: FsUsage,
}

/// What a gc pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs: usize,
    /// Snapshot directories removed (unreferenced or half-unpacked).
    pub snapshots: usize,
    /// Ingest files of interrupted downloads removed.
    pub ingests: usize,
}

#[derive(Default)]
struct KeyedLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let m = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            // Forget locks nobody holds or waits for, so the map does not grow forever.
            map.retain(|_, m| Arc::strong_count(m) > 1);
            map.entry(key.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }
}

struct Inner {
    root: PathBuf,
    config: Config,
    pinned: HashSet<String>,
    db: Arc<StateDb>,
    content: ContentStore,
    snapshots: Snapshotter,
    downloads: Arc<Semaphore>,
    locks: KeyedLocks,
    /// Held shared by pulls, exclusively by a gc; the gc's guard goes into its
    /// blocking thread, so a gc whose caller is dropped keeps it until it ends.
    gc_lock: Arc<RwLock<()>>,
    /// Insecure hosts that answered over plain HTTP: their HTTPS probe is skipped.
    http_hosts: Mutex<HashSet<String>>,
    /// The HTTP clients for registries (built once: TLS setup costs milliseconds) and
    /// what is known of their authorization (tokens, schemes), shared by all pulls.
    auth: Arc<Authenticator>,
}

/// The images of this node. Cheap to clone.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

impl ImageStore {
    /// Opens the store under `root` (e.g. `/var/lib/crust/images`) with the state store
    /// `db`, and collects garbage left by a previous run (interrupted pulls).
    pub async fn open(root: impl Into<PathBuf>, config: Config, db: Arc<StateDb>) -> Result<Self> {
        let root = root.into();
        let content = ContentStore::open(root.join("content"))?;
        let snapshots = Snapshotter::open(root.join("snapshots"), db.clone())?;
        db.write(|tx| {
            tx.open_table(IMAGES)?;
            Ok(())
        })?;
        let mut pinned = HashSet::new();
        for p in &config.pinned_images {
            let r = Reference::parse(p)?;
            pinned.insert(r.to_string());
        }
        let insecure = config.insecure_registries.iter().cloned().chain(
            config
                .registries
                .iter()
                .filter(|(_, r)| r.insecure)
                .map(|(h, _)| h.clone()),
        );
        let auth = Arc::new(Authenticator::new(
            Duration::from_secs(config.no_progress_timeout_secs.max(1)),
            insecure,
        )?);
        let store = ImageStore {
            inner: Arc::new(Inner {
                downloads: Arc::new(Semaphore::new(config.max_concurrent_downloads.max(1))),
                root,
                config,
                pinned,
                db,
                content,
                snapshots,
                locks: KeyedLocks::default(),
                gc_lock: Arc::new(RwLock::new(())),
                http_hosts: Mutex::new(HashSet::new()),
                auth,
            }),
        };
        let report = store.gc().await?;
        if report != GcReport::default() {
            tracing::info!(?report, "images: collected garbage at start");
        }
        // Registered at open, so /metrics lists them before the first pull.
        std::sync::LazyLock::force(&METRICS);
        Ok(store)
    }

    /// The snapshotter, for containers: `prepare(key, image.chain_id)` / `remove(key)`.
    /// An active snapshot keeps its image's layers from gc even after the image is
    /// removed.
    pub fn snapshotter(&self) -> &Snapshotter {
        &self.inner.snapshots
    }

    /// The content store (read access to manifests and configs).
    pub fn content(&self) -> &ContentStore {
        &self.inner.content
    }

    /// Root directory of the store.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    // ---- records -------------------------------------------------------------------

    fn records(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.inner.db.read(|tx| {
            let t = tx.open_table(IMAGES)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                let r: ImageRecord = serde_json::from_slice(v.value())
                    .map_err(|e| StateError::record(format!("image record {}: {e}", k.value())))?;
                out.push(r);
            }
            Ok(out)
        })?)
    }

    fn to_image(&self, r: &ImageRecord) -> Image {
        let user = r.user.split(':').next().unwrap_or("");
        let (uid, username) = match user.parse::<i64>() {
            Ok(n) => (Some(n), String::new()),
            Err(_) => (None, user.to_string()),
        };
        Image {
            id: r.id.clone(),
            repo_tags: r.repo_tags.clone(),
            repo_digests: r.repo_digests.clone(),
            size: r.size,
            uid,
            username,
            pinned: r.repo_tags.iter().any(|t| self.inner.pinned.contains(t)),
            chain_id: r.chain_id.clone(),
        }
    }

    /// Finds the record for an image id (`sha256:<hex>` or `<hex>`), a unique id
    /// prefix of at least 12 hex digits, or a reference (by tag or by digest).
    fn find(&self, records: &[ImageRecord], what: &str) -> Result<Option<usize>> {
        let id = what.strip_prefix("sha256:").unwrap_or(what);
        if is_hex64(id) {
            let full = format!("sha256:{id}");
            if let Some(i) = records.iter().position(|r| r.id == full) {
                return Ok(Some(i));
            }
            // `sha256:<hex>` may also be a manifest digest; fall through.
        } else if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<usize> = (0..records.len())
                .filter(|&i| hex_of(&records[i].id).is_some_and(|h| h.starts_with(id)))
                .collect();
            if hits.len() == 1 {
                return Ok(Some(hits[0]));
            }
        }
        if what.starts_with("sha256:") {
            return Ok(records
                .iter()
                .position(|r| r.repo_digests.iter().any(|d| d.ends_with(what))));
        }
        let r = match Reference::parse(what) {
            Ok(r) => r,
            Err(_) if is_hex64(id) => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(d) = r.digest() {
            let rd = r.with_digest(d);
            return Ok(records.iter().position(|x| x.repo_digests.contains(&rd)));
        }
        let tagged = r.tagged().unwrap_or_default();
        Ok(records.iter().position(|x| x.repo_tags.contains(&tagged)))
    }

    /// The image `what` names (id, reference or digest), if present.
    pub fn status(&self, what: &str) -> Result<Option<Image>> {
        let records = self.records()?;
        Ok(self
            .find(&records, what)?
            .map(|i| self.to_image(&records[i])))
    }

    /// The image config JSON of image `id` (for verbose status and for containers).
    pub fn config_json(&self, id: &str) -> Result<Vec<u8>> {
        self.inner.content.read(id)
    }

    /// All images, or those matching `filter` (a reference or id) when given.
    pub fn list(&self, filter: Option<&str>) -> Result<Vec<Image>> {
        let records = self.records()?;
        match filter.filter(|f| !f.is_empty()) {
            None => Ok(records.iter().map(|r| self.to_image(r)).collect()),
            Some(f) => Ok(self
                .find(&records, f)?
                .map(|i| vec![self.to_image(&records[i])])
                .unwrap_or_default()),
        }
    }

    /// Removes the image `what` names with all its tags and digests; absent is fine.
    /// Unreferenced blobs and snapshots are collected afterwards.
    pub async fn remove(&self, what: &str) -> Result<()> {
        let records = self.records()?;
        let Some(i) = self.find(&records, what)? else {
            return Ok(());
        };
        let id = records[i].id.clone();
        self.inner.db.write(|tx| {
            tx.open_table(IMAGES)?.remove(id.as_str())?;
            Ok(())
        })?;
        // Collect now if no pull is running; otherwise the next gc will.
        if let Ok(guard) = self.inner.gc_lock.clone().try_write_owned() {
            self.gc_locked(guard).await?;
        }
        Ok(())
    }

    /// Removes blobs and snapshots that no image or active snapshot needs, ingest files
    /// and half-unpacked snapshots of interrupted pulls. Waits for running pulls.
    pub async fn gc(&self) -> Result<GcReport> {
        let guard = self.inner.gc_lock.clone().write_owned().await;
        self.gc_locked(guard).await
    }

    async fn gc_locked(&self, guard: OwnedRwLockWriteGuard<()>) -> Result<GcReport> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let records = store.records()?;
            let mut blobs: HashSet<String> = HashSet::new();
            let mut chains: HashSet<String> = HashSet::new();
            for r in &records {
                blobs.extend(r.blobs.iter().cloned());
                chains.extend(r.chain_id.iter().cloned());
            }
            let mut report = GcReport {
                ingests: store.inner.content.clean_ingest()?,
                snapshots: store.inner.snapshots.gc(&chains)?,
                ..Default::default()
            };
            for d in store.inner.content.list()? {
                if !blobs.contains(&d) {
                    store.inner.content.delete(&d)?;
                    report.blobs += 1;
                }
            }
            Ok(report)
        })
        .await
        .map_err(|e| Error::Internal(format!("gc task: {e}")))?
    }

    /// Bytes and inodes used by the snapshot and content stores.
    pub async fn fs_info(&self) -> Result<FsInfo> {
        let snap = self.inner.snapshots.root().to_path_buf();
        let content = self.inner.content.root().to_path_buf();
        tokio::task::spawn_blocking(move || {
            Ok(FsInfo {
                snapshots: usage(&snap)?,
                content: usage(&content)?,
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("fs info task: {e}")))?
    }

    // ---- pulling -------------------------------------------------------------------

    /// Pulls `reference` with optional credentials and returns the image id.
    pub async fn pull(&self, reference: &str, auth: Option<&Auth>) -> Result<String> {
        let r = Reference::parse(reference)?;
        let m = &*METRICS;
        m.pulls.inc();
        // A guard, not a dec() after the await: a pull whose client went away is dropped
        // mid-way (its staging directory and ingest file clean themselves up on drop).
        struct InProgress;
        impl Drop for InProgress {
            fn drop(&mut self) {
                METRICS.pulls_in_progress.dec();
            }
        }
        m.pulls_in_progress.inc();
        let in_progress = InProgress;
        let start = Instant::now();
        let result = async {
            let _gc = self.inner.gc_lock.read().await;
            let _one = self.inner.locks.lock(&format!("ref {r}")).await;
            self.pull_locked(&r, auth).await
        }
        .await;
        drop(in_progress);
        m.pull_duration.observe(start.elapsed().as_secs_f64());
        match &result {
            Ok(id) => {
                tracing::info!(reference = %r, %id, secs = start.elapsed().as_secs_f32(), "pulled")
            }
            Err(e) => {
                m.pulls_failed.inc();
                tracing::warn!(reference = %r, "pull failed: {e}");
                // Corrupt or hostile content leaves nothing behind: collect the layers
                // this pull did commit. A network failure keeps them for the retry
                // (until the next gc).
                if matches!(e, Error::BadContent(_))
                    && let Ok(guard) = self.inner.gc_lock.clone().try_write_owned()
                    && let Err(e) = self.gc_locked(guard).await
                {
                    tracing::warn!("gc after failed pull: {e}");
                }
            }
        }
        result
    }

    async fn pull_locked(&self, r: &Reference, auth: Option<&Auth>) -> Result<String> {
        let cfg = &self.inner.config;
        let policy = Policy {
            retries: cfg.retries,
            no_progress: Duration::from_secs(cfg.no_progress_timeout_secs.max(1)),
        };
        let mut last: Option<Error> = None;
        let mut endpoints = registry::endpoints(cfg, r.domain());
        {
            // An insecure host known to speak plain HTTP: skip its HTTPS probe.
            let http_hosts = self
                .inner
                .http_hosts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let probe_known_useless = |i: usize, ep: &registry::Endpoint| {
                !ep.http
                    && http_hosts.contains(&ep.host)
                    && endpoints
                        .get(i + 1)
                        .is_some_and(|n| n.host == ep.host && n.http)
            };
            let keep: Vec<bool> = endpoints
                .iter()
                .enumerate()
                .map(|(i, ep)| !probe_known_useless(i, ep))
                .collect();
            let mut k = keep.into_iter();
            endpoints.retain(|_| k.next().unwrap_or(true));
        }
        // HTTPS to an insecure host that may only speak HTTP: one try, then HTTP.
        let policies: Vec<Policy> = (0..endpoints.len())
            .map(|i| {
                let ep = &endpoints[i];
                let has_http_fallback = endpoints
                    .get(i + 1)
                    .is_some_and(|n| n.host == ep.host && n.http && !ep.http);
                if has_http_fallback {
                    Policy {
                        retries: 0,
                        ..policy
                    }
                } else {
                    policy
                }
            })
            .collect();
        for (i, ep) in endpoints.iter().enumerate() {
            let policy = policies[i];
            let client = self.client_for(r, ep, auth, policy)?;
            let t = Instant::now();
            let resolved = client.resolve(r).await;
            tracing::debug!(endpoint = %ep.host, http = ep.http, ms = t.elapsed().as_millis() as u64, ok = resolved.is_ok(), "resolve");
            match resolved {
                Ok(resolved) => {
                    if ep.http && i > 0 && endpoints[i - 1].host == ep.host && !ep.mirror {
                        self.inner
                            .http_hosts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(ep.host.clone());
                    }
                    let sources = Sources {
                        first: client,
                        rest: endpoints[i + 1..]
                            .iter()
                            .cloned()
                            .zip(policies[i + 1..].iter().copied())
                            .collect(),
                        r,
                        auth,
                    };
                    return self.fetch(&sources, r, resolved).await;
                }
                Err(e) => {
                    tracing::debug!(endpoint = ?ep, "resolving {r}: {e}");
                    if keep_error(&last, &e, ep) {
                        last = Some(e);
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::NotFound(format!("{r}: no endpoint"))))
    }

    /// A client for `r`'s repository at `ep`, with the credentials for that endpoint.
    fn client_for(
        &self,
        r: &Reference,
        ep: &registry::Endpoint,
        auth: Option<&Auth>,
        policy: Policy,
    ) -> Result<RegistryClient> {
        let creds = registry::credentials(&self.inner.config, &ep.host, !ep.mirror, auth)?;
        RegistryClient::new(self.inner.auth.clone(), ep.clone(), r, creds, policy)
    }

    /// The `k`th source of blobs: the endpoint that resolved the reference, then the
    /// endpoints after it (further mirrors, then the registry itself).
    fn source(&self, sources: &Sources<'_>, k: usize) -> Result<RegistryClient> {
        match k.checked_sub(1) {
            None => Ok(sources.first.clone()),
            Some(j) => {
                let (ep, policy) = &sources.rest[j];
                self.client_for(sources.r, ep, sources.auth, *policy)
            }
        }
    }

    async fn fetch(
        &self,
        sources: &Sources<'_>,
        r: &Reference,
        resolved: registry::Resolved,
    ) -> Result<String> {
        let t0 = Instant::now();
        let content = &self.inner.content;
        let manifest = &resolved.manifest;
        let config_desc = manifest
            .config
            .as_ref()
            .ok_or_else(|| Error::BadContent(format!("{r}: manifest has no config")))?;
        for layer in &manifest.layers {
            if hex_of(&layer.digest).is_none() {
                return Err(Error::BadContent(format!(
                    "{r}: bad digest {:?}",
                    layer.digest
                )));
            }
            if layer.media_type.contains("encrypted") {
                return Err(Error::BadContent(format!(
                    "layer {}: encrypted layers are not supported",
                    layer.digest
                )));
            }
        }
        // The layers download (and unpack into staging) while the config comes: only
        // committing them needs its diff ids.
        let config = async {
            if content.contains(&config_desc.digest) {
                return content.read(&config_desc.digest);
            }
            let mut k = 0;
            loop {
                let got = match self.source(sources, k) {
                    Ok(client) => client.blob_bytes(config_desc).await,
                    Err(e) => Err(e),
                };
                match got {
                    Ok(b) => break Ok::<Vec<u8>, Error>(b),
                    Err(e) if falls_back(&e) && k < sources.rest.len() => {
                        tracing::warn!(config = %config_desc.digest, "config from the next endpoint after: {e}");
                        k += 1;
                    }
                    Err(e) => break Err(e),
                }
            }
        };
        let downloads = futures::future::try_join_all(
            manifest
                .layers
                .iter()
                .map(|l| self.download_layer(sources, l)),
        );
        let (config_bytes, mut downloaded) = futures::future::try_join(config, downloads).await?;
        // Whatever stops the pull from here on drops the staged layers off the async
        // workers (removing an unpacked layer takes a while).
        struct Discard(Vec<Option<Staged>>);
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
        let mut downloaded = Discard(std::mem::take(&mut downloaded));
        #[derive(Deserialize, Default)]
        struct RootFs {
            #[serde(default)]
            diff_ids: Vec<String>,
        }
        #[derive(Deserialize, Default)]
        struct ExecConfig {
            #[serde(rename = "User", default)]
            user: Option<String>,
        }
        #[derive(Deserialize)]
        struct ImageConfig {
            #[serde(default)]
            config: Option<ExecConfig>,
            #[serde(default)]
            rootfs: RootFs,
        }
        let image_config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| Error::BadContent(format!("{r}: image config: {e}")))?;
        let diff_ids = &image_config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::BadContent(format!(
                "{r}: {} layers but {} diff ids",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        for d in diff_ids
            .iter()
            .chain(manifest.layers.iter().map(|l| &l.digest))
        {
            if hex_of(d).is_none() {
                return Err(Error::BadContent(format!("{r}: bad digest {d:?}")));
            }
        }
        let chains = chain_ids(diff_ids);
        // Each layer says when its snapshot is committed: the one above may need
        // the layers below to finish its directories (`inherit_implicit_dirs`).
        let (done_tx, done_rx): (Vec<_>, Vec<_>) = (0..manifest.layers.len())
            .map(|_| tokio::sync::watch::channel(false))
            .unzip();
        let layers = manifest
            .layers
            .iter()
            .zip(done_tx)
            .enumerate()
            .map(|(i, (layer, done))| {
                let (chains, diff_ids) = (&chains, &diff_ids);
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
        let t_downloaded = t0.elapsed();
        futures::future::try_join_all(layers).await?;
        let t_layers = t0.elapsed();
        // Manifests and config go in last: a failed pull leaves no blob behind that
        // only the image record would have referenced.
        for (d, bytes) in &resolved.blobs {
            content.write_all(d, bytes)?;
        }
        content.write_all(&config_desc.digest, &config_bytes)?;

        let id = config_desc.digest.clone();
        let mut blobs: Vec<String> = resolved.blobs.iter().map(|(d, _)| d.clone()).collect();
        blobs.push(id.clone());
        blobs.extend(manifest.layers.iter().map(|l| l.digest.clone()));
        let size = manifest
            .layers
            .iter()
            .map(|l| l.size.max(0) as u64)
            .sum::<u64>()
            + config_desc.size.max(0) as u64;
        let record = ImageRecord {
            version: RECORD_VERSION,
            id: id.clone(),
            repo_tags: r.tagged().into_iter().collect(),
            repo_digests: vec![r.with_digest(&resolved.repo_digest)],
            size,
            manifest_digest: resolved.manifest_digest.clone(),
            blobs,
            chain_id: chains.last().cloned(),
            user: image_config.config.and_then(|c| c.user).unwrap_or_default(),
        };
        self.save(record)?;
        tracing::debug!(
            reference = %r,
            endpoint = %sources.first.endpoint().host,
            downloaded_ms = t_downloaded.as_millis() as u64,
            layers_ms = t_layers.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "image stored"
        );
        Ok(id)
    }

    /// Stores `new`, merging with an existing record of the same id, and moves its tags
    /// away from any other image (an image left with no name is dropped).
    fn save(&self, new: ImageRecord) -> Result<()> {
        let encode = |r: &ImageRecord| {
            serde_json::to_vec(r).map_err(|e| StateError::record(format!("image record: {e}")))
        };
        self.inner.db.write(|tx| {
            // The layers' records are lazy commits: a write error that made the state
            // store reopen meanwhile lost them, and the image must not name a chain
            // that is not there.
            if let Some(chain) = &new.chain_id
                && !crate::snapshot::committed_in(tx, chain)?
            {
                return Ok(Err(Error::Unavailable(format!(
                    "the layers of {} were lost when the state store was reopened after a write error; pull again",
                    new.id
                ))));
            }
            let mut t = tx.open_table(IMAGES)?;
            let mut others = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                let rec: ImageRecord = serde_json::from_slice(v.value())
                    .map_err(|e| StateError::record(format!("image record {}: {e}", k.value())))?;
                others.push(rec);
            }
            let mut merged = new.clone();
            for mut o in others {
                if o.id == new.id {
                    for t in o.repo_tags {
                        if !merged.repo_tags.contains(&t) {
                            merged.repo_tags.push(t);
                        }
                    }
                    for d in o.repo_digests {
                        if !merged.repo_digests.contains(&d) {
                            merged.repo_digests.push(d);
                        }
                    }
                    continue;
                }
                let before = o.repo_tags.len();
                o.repo_tags.retain(|t| !new.repo_tags.contains(t));
                if o.repo_tags.len() != before {
                    if o.repo_tags.is_empty() && o.repo_digests.is_empty() {
                        t.remove(o.id.as_str())?;
                    } else {
                        let bytes = encode(&o)?;
                        t.insert(o.id.as_str(), bytes.as_slice())?;
                    }
                }
            }
            let bytes = encode(&merged)?;
            t.insert(merged.id.as_str(), bytes.as_slice())?;
            Ok(Ok(()))
        })?
    }

    /// Downloads layer `layer` into the content store, unpacking it into a staging
    /// snapshot while it streams in — unless its blob is here already (`None`). A
    /// download that fails for want of the endpoint (unreachable, dropped for good, not
    /// there, refused) is thrown away whole, staging directory and ingest file, and
    /// starts again from the next endpoint; bytes from two endpoints are never mixed.
    /// One download per blob at a time: a second pull wanting the same layer waits, then
    /// finds the blob.
    async fn download_layer(
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
    ) -> Result<crate::unpack::Unpacked> {
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
            // Bytes after the compressed stream (padding) still belong to the blob. A
            // whole blob of the right digest is made durable while the unpacker finishes.
            let (unpacked, (mut tee, drained, synced)) =
                unpack_layer_overlapped(tee, &dest, |mut tee, drained| {
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
            abandoned.clean_up(&dest)?;
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

/// Whether a blob that failed from one endpoint should be fetched from the next: the
/// endpoint failed us (unreachable, gave up mid-blob, does not have it, refused us), as
/// opposed to content that is wrong wherever it comes from.
fn falls_back(e: &Error) -> bool {
    matches!(
        e,
        Error::Unavailable(_)
            | Error::RateLimited(_)
            | Error::NotFound(_)
            | Error::Unauthenticated(_)
    )
}

/// The endpoints a pull may fetch blobs from, in order.
struct Sources<'a> {
    /// The client of the endpoint that resolved the reference.
    first: RegistryClient,
    /// The endpoints after it, with their retry policies.
    rest: Vec<(registry::Endpoint, Policy)>,
    r: &'a Reference,
    auth: Option<&'a Auth>,
}

/// Whether `e`, from `ep`, tells more than the error kept so far: the image's own
/// registry over a mirror, an answer (not found, unauthenticated) over an unreachable host.
fn keep_error(last: &Option<Error>, e: &Error, ep: &registry::Endpoint) -> bool {
    match (last, e) {
        (None, _) => true,
        (Some(Error::Unavailable(_)), _) => true,
        (Some(_), Error::Unavailable(_)) => false,
        _ => !ep.mirror,
    }
}

/// A layer downloaded and unpacked into staging, waiting for its chain ID.
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

struct Staged {
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

/// Allocated bytes and inodes under `path` (hard links counted once).
fn usage(path: &Path) -> Result<FsUsage> {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue; // removed while we walked
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        bytes += meta.blocks() * 512;
        inodes += 1;
        if meta.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    Ok(FsUsage {
        path: path.to_path_buf(),
        mountpoint: mountpoint(path)?,
        bytes,
        inodes,
    })
}

/// The mount point holding `path`: the longest mount target in /proc/self/mountinfo that
/// is a prefix of it.
fn mountpoint(path: &Path) -> Result<PathBuf> {
    let path = std::fs::canonicalize(path)
        .map_err(|e| Error::io(format!("canonicalize {}", path.display()), e))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
    let mut best = PathBuf::from("/");
    for line in info.lines() {
        let Some(target) = line.split(' ').nth(4) else {
            continue;
        };
        let target = PathBuf::from(target.replace("\\040", " "));
        if path.starts_with(&target) && target.components().count() > best.components().count() {
            best = target;
        }
    }
    Ok(best)
}
