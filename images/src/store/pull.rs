//! A pull: resolve the reference on the first endpoint that answers (the repo digest
//! is the digest of what the reference names: the index for multi-arch images), then
//! the config and every layer at once — a layer downloads and unpacks into staging
//! while the config is on its way, and is committed once the config's diff IDs are
//! known ([`super::layer`]). Blobs come from the endpoint that resolved and, when it
//! fails for a blob, from the endpoints after it in order. Manifests and config are
//! written last, then the record.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::ImageStore;
use super::layer::Discard;
use super::records::{ImageRecord, RECORD_VERSION};
use crate::digest::{chain_ids, hex_of};
use crate::error::{Error, Result};
use crate::metrics::METRICS;
use crate::reference::Reference;
use crate::registry::{
    Auth, Descriptor, Endpoint, Manifest, Policy, Registries, RegistryClient, Resolved, credentials,
};

/// The endpoints a pull may fetch blobs from, in order.
pub(super) struct Sources<'a> {
    /// The client of the endpoint that resolved the reference.
    first: RegistryClient,
    /// The endpoints after it, with their retry policies.
    pub(super) rest: Vec<(Endpoint, Policy)>,
    r: &'a Reference,
    auth: Option<&'a Auth>,
    /// The registry set-up the pull started with.
    registries: &'a Registries,
}

/// What a pull needs of the image config.
#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: Option<ExecConfig>,
    #[serde(default)]
    rootfs: RootFs,
}

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

impl ImageStore {
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

    /// The endpoints of `r`'s registry to try, in order, each with its retry policy:
    /// an insecure host known to speak plain HTTP loses its HTTPS probe, and HTTPS to
    /// an insecure host that may only speak HTTP gets one try, then HTTP.
    fn plan(&self, registries: &Registries, r: &Reference) -> Vec<(Endpoint, Policy)> {
        let cfg = &self.inner.config;
        let policy = Policy {
            retries: cfg.retries,
            no_progress: Duration::from_secs(cfg.no_progress_timeout_secs.max(1)),
        };
        let mut endpoints = registries.endpoints(r.domain());
        {
            let http_hosts = self
                .inner
                .http_hosts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let probe_known_useless = |i: usize, ep: &Endpoint| {
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
        endpoints.into_iter().zip(policies).collect()
    }

    async fn pull_locked(&self, r: &Reference, auth: Option<&Auth>) -> Result<String> {
        let mut last: Option<Error> = None;
        let registries = self.registries();
        let plan = self.plan(&registries, r);
        // A tag is resolved where `resolve` is allowed; a digest where `pull` is.
        let can_resolve = |ep: &Endpoint| ep.resolve || (ep.pull && r.digest().is_some());
        for (i, (ep, policy)) in plan.iter().enumerate() {
            if !can_resolve(ep) {
                continue;
            }
            let client = self.client_for(&registries, r, ep, auth, *policy)?;
            let t = Instant::now();
            let resolved = client.resolve(r).await;
            tracing::debug!(endpoint = %ep.host, http = ep.http, ms = t.elapsed().as_millis() as u64, ok = resolved.is_ok(), "resolve");
            match resolved {
                Ok(resolved) => {
                    if ep.http && i > 0 && plan[i - 1].0.host == ep.host && !ep.mirror {
                        self.inner
                            .http_hosts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(ep.host.clone());
                    }
                    let sources = Sources {
                        first: client,
                        rest: plan[i + 1..]
                            .iter()
                            .filter(|(ep, _)| ep.pull)
                            .cloned()
                            .collect(),
                        r,
                        auth,
                        registries: &registries,
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
        registries: &Registries,
        r: &Reference,
        ep: &Endpoint,
        auth: Option<&Auth>,
        policy: Policy,
    ) -> Result<RegistryClient> {
        let creds = credentials(&registries.config, &ep.host, !ep.mirror, auth)?;
        RegistryClient::new(self.inner.auth.clone(), ep.clone(), r, creds, policy)
    }

    /// The `k`th source of blobs: the endpoint that resolved the reference, then the
    /// endpoints after it (further mirrors, then the registry itself).
    pub(super) fn source(&self, sources: &Sources<'_>, k: usize) -> Result<RegistryClient> {
        match k.checked_sub(1) {
            None => Ok(sources.first.clone()),
            Some(j) => {
                let (ep, policy) = &sources.rest[j];
                self.client_for(sources.registries, sources.r, ep, sources.auth, *policy)
            }
        }
    }

    /// Fetches what `resolved` names from `sources` and records the image.
    async fn fetch(
        &self,
        sources: &Sources<'_>,
        r: &Reference,
        resolved: Resolved,
    ) -> Result<String> {
        let t0 = Instant::now();
        let content = &self.inner.content;
        let manifest = &resolved.manifest;
        let config_desc = check_manifest(r, manifest)?;
        // The layers download (and unpack into staging) while the config comes: only
        // committing them needs its diff ids.
        let downloads = futures::future::try_join_all(
            manifest
                .layers
                .iter()
                .map(|l| self.download_layer(sources, l)),
        );
        let (config_bytes, downloaded) =
            futures::future::try_join(self.fetch_config(sources, config_desc), downloads).await?;
        // Whatever stops the pull from here on drops the staged layers off the async
        // workers (removing an unpacked layer takes a while).
        let mut downloaded = Discard(downloaded);
        let image_config = parse_config(r, &config_bytes, manifest)?;
        let diff_ids = &image_config.rootfs.diff_ids;
        let chains = chain_ids(diff_ids);
        let t_downloaded = t0.elapsed();
        self.commit_layers(&manifest.layers, &mut downloaded, diff_ids, &chains)
            .await?;
        let t_layers = t0.elapsed();
        // Manifests and config go in last: a failed pull leaves no blob behind that
        // only the image record would have referenced.
        for (d, bytes) in &resolved.blobs {
            content.write_all(d, bytes)?;
        }
        content.write_all(&config_desc.digest, &config_bytes)?;
        let record = image_record(r, &resolved, config_desc, image_config, &chains);
        let id = record.id.clone();
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

    /// The config blob: from the content store, or from the sources in order.
    async fn fetch_config(&self, sources: &Sources<'_>, desc: &Descriptor) -> Result<Vec<u8>> {
        let content = &self.inner.content;
        if content.contains(&desc.digest) {
            return content.read(&desc.digest);
        }
        let mut k = 0;
        loop {
            let got = match self.source(sources, k) {
                Ok(client) => client.blob_bytes(desc).await,
                Err(e) => Err(e),
            };
            match got {
                Ok(b) => return Ok(b),
                Err(e) if falls_back(&e) && k < sources.rest.len() => {
                    tracing::warn!(config = %desc.digest, "config from the next endpoint after: {e}");
                    k += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The config descriptor of `manifest`, once its layers are known to be usable: each
/// with a sha256 digest, none encrypted.
fn check_manifest<'m>(r: &Reference, manifest: &'m Manifest) -> Result<&'m Descriptor> {
    let config = manifest
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
    Ok(config)
}

/// The image config of `manifest`, with a diff id per layer.
fn parse_config(r: &Reference, bytes: &[u8], manifest: &Manifest) -> Result<ImageConfig> {
    let image_config: ImageConfig = serde_json::from_slice(bytes)
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
    Ok(image_config)
}

/// The record of the image `r` pulled.
fn image_record(
    r: &Reference,
    resolved: &Resolved,
    config_desc: &Descriptor,
    image_config: ImageConfig,
    chains: &[String],
) -> ImageRecord {
    let manifest = &resolved.manifest;
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
    ImageRecord {
        version: RECORD_VERSION,
        id,
        repo_tags: r.tagged().into_iter().collect(),
        repo_digests: vec![r.with_digest(&resolved.repo_digest)],
        size,
        manifest_digest: resolved.manifest_digest.clone(),
        blobs,
        chain_id: chains.last().cloned(),
        user: image_config.config.and_then(|c| c.user).unwrap_or_default(),
    }
}

/// Whether a blob that failed from one endpoint should be fetched from the next: the
/// endpoint failed us (unreachable, gave up mid-blob, does not have it, refused us), as
/// opposed to content that is wrong wherever it comes from.
pub(super) fn falls_back(e: &Error) -> bool {
    matches!(
        e,
        Error::Unavailable(_)
            | Error::RateLimited(_)
            | Error::NotFound(_)
            | Error::Unauthenticated(_)
    )
}

/// Whether `e`, from `ep`, tells more than the error kept so far: the image's own
/// registry over a mirror, an answer (not found, unauthenticated) over an unreachable host.
fn keep_error(last: &Option<Error>, e: &Error, ep: &Endpoint) -> bool {
    match (last, e) {
        (None, _) => true,
        (Some(Error::Unavailable(_)), _) => true,
        (Some(_), Error::Unavailable(_)) => false,
        _ => !ep.mirror,
    }
}
