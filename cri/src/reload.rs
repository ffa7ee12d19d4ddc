//! SIGHUP: the registry set-up is reloaded without a restart. The config file crustd
//! was started with (`--config`) is read again and its `[images]` registry settings
//! (`registries`, `insecure_registries`, `credentials_file`, `hosts_dir`) and the host
//! directory's files replace the ones in force, for the pulls that start from then on.
//! A file that does not parse, or a TLS file that cannot be read, is logged and the
//! set-up in force is kept. Other settings take effect at the next start (logged).

use std::future::Future;
use std::path::{Path, PathBuf};

use crust_images::ImageStore;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;

/// Installs the SIGHUP handler: until `stop` completes, each SIGHUP reloads the registry
/// set-up of `images` from `path` (the images section it started with is `running`).
pub fn on_sighup(
    path: Option<PathBuf>,
    running: crust_images::Config,
    images: ImageStore,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                got = hup.recv() => {
                    if got.is_none() {
                        break;
                    }
                    let (path, running, images) = (path.clone(), running.clone(), images.clone());
                    let done = tokio::task::spawn_blocking(move || {
                        reload(path.as_deref(), &running, &images)
                    });
                    if let Err(e) = done.await {
                        tracing::error!("SIGHUP: reload task: {e}");
                    }
                }
            }
        }
    }))
}

/// One reload; every outcome is logged.
fn reload(path: Option<&Path>, running: &crust_images::Config, images: &ImageStore) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: crustd was started without --config: nothing to reload");
        return;
    };
    let config = match Config::load(path) {
        Ok(c) => c.images,
        Err(e) => {
            tracing::error!("SIGHUP: {e}; the registry configuration in force is kept");
            return;
        }
    };
    let restart_only = crust_images::Config {
        registries: running.registries.clone(),
        insecure_registries: running.insecure_registries.clone(),
        credentials_file: running.credentials_file.clone(),
        hosts_dir: running.hosts_dir.clone(),
        ..config.clone()
    };
    if restart_only != *running {
        tracing::warn!(
            "SIGHUP: [images] settings other than registries, insecure_registries, \
             credentials_file and hosts_dir changed in {}: they take effect at the next start",
            path.display()
        );
    }
    let hosts_dir = config.hosts_dir.clone();
    match images.reload(config) {
        Ok(()) => tracing::info!(
            config = %path.display(),
            hosts_dir,
            "SIGHUP: registry configuration reloaded"
        ),
        Err(e) => tracing::error!(
            config = %path.display(),
            "SIGHUP: {e}; the registry configuration in force is kept"
        ),
    }
}
