//! The image store: what cri calls. Pulls images into the content store and the
//! snapshotter, keeps image records in the state store, removes and collects garbage.
//!
//! ```text
//! records  image records (images.images): find, list, status, remove, save
//! pull     reference → endpoints → manifest, config and layers → record
//! layer    one layer: download + unpack into staging, or unpack a blob; commit
//! gc       blobs, snapshots and ingest files nothing needs
//! usage    bytes and inodes of the snapshot and content stores
//! ```
//!
//! Concurrency:
//! - A pull holds the gc lock shared; gc holds it exclusively, so gc never sees the
//!   staging directories and ingest files of a running pull as garbage.
//! - Pulls of one reference, and unpacks of one chain ID, are serialised by keyed
//!   locks: the second waits, then finds the work done.
//! - Layer downloads across all pulls are bounded by one semaphore.

mod gc;
mod layer;
mod pull;
mod records;
mod usage;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crust_state::StateDb;
use tokio::sync::{RwLock, Semaphore};

use crate::config::Config;
use crate::content::ContentStore;
use crate::error::Result;
use crate::keyed::KeyedLocks;
use crate::metrics::METRICS;
use crate::reference::Reference;
use crate::registry::{Authorizer, Registries, Transport};
use crate::snapshot::Snapshotter;

pub use gc::GcReport;
pub use records::Image;
pub use usage::{FsInfo, FsUsage};

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
    auth: Arc<Authorizer>,
    /// The registry set-up: replaced whole by [`ImageStore::reload`]; a pull keeps the
    /// one it started with.
    registries: std::sync::RwLock<Arc<Registries>>,
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
        records::create_table(&db)?;
        let mut pinned = HashSet::new();
        for p in &config.pinned_images {
            let r = Reference::parse(p)?;
            pinned.insert(r.to_string());
        }
        let registries = Registries::load(config.clone())?;
        let transport = Transport::new(
            Duration::from_secs(config.no_progress_timeout_secs.max(1)),
            registries.insecure_hosts(),
        )?;
        let auth = Arc::new(Authorizer::new(Arc::new(transport)));
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
                registries: std::sync::RwLock::new(Arc::new(registries)),
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

    /// Replaces the registry set-up — `registries`, `insecure_registries`,
    /// `credentials_file` and `hosts_dir` of `config`, and what the host directory and
    /// the TLS files hold now — for the pulls that start from now on. Everything is read
    /// and checked first: on an error (InvalidArgument naming the file) nothing changes.
    /// The other settings of `config` take effect at the next start.
    pub fn reload(&self, config: Config) -> Result<()> {
        let new = Registries::load(config)?;
        self.inner
            .auth
            .transport()
            .set_insecure(new.insecure_hosts());
        *self
            .inner
            .registries
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        Ok(())
    }

    /// The registry set-up in force.
    fn registries(&self) -> Arc<Registries> {
        self.inner
            .registries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
