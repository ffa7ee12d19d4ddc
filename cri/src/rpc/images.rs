//! ImageService RPCs: CRI messages to and from `crust_images::ImageStore`.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use k8s_cri::v1::{
    ImageFsInfoRequest, ImageFsInfoResponse, ImageStatusRequest, ImageStatusResponse,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse,
};

use crate::Cri;
use crate::error::{CriError, CriResult};

fn image_name(spec: Option<&cri::ImageSpec>, rpc: &str) -> CriResult<String> {
    match spec.map(|s| s.image.trim()) {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(CriError::InvalidArgument(format!("{rpc} needs an image"))),
    }
}

fn to_cri(i: crust_images::Image) -> cri::Image {
    cri::Image {
        id: i.id,
        repo_tags: i.repo_tags,
        repo_digests: i.repo_digests,
        size: i.size,
        uid: i.uid.map(|value| cri::Int64Value { value }),
        username: i.username,
        spec: None,
        pinned: i.pinned,
    }
}

/// ListImages: every image, or those the filter's reference or id names.
pub async fn list_images(cri: &Cri, req: ListImagesRequest) -> CriResult<ListImagesResponse> {
    let filter = req.filter.and_then(|f| f.image).map(|s| s.image);
    let images = cri.images.list(filter.as_deref())?;
    Ok(ListImagesResponse {
        images: images.into_iter().map(to_cri).collect(),
    })
}

/// ImageStatus: an absent image is an empty response, not an error. `verbose` adds
/// `info["info"]`: the image config, the rootfs chain ID and its snapshot directories
/// (top first) as JSON.
pub async fn image_status(cri: &Cri, req: ImageStatusRequest) -> CriResult<ImageStatusResponse> {
    let name = image_name(req.image.as_ref(), "ImageStatus")?;
    let Some(image) = cri.images.status(&name)? else {
        return Ok(ImageStatusResponse::default());
    };
    let mut info = HashMap::new();
    if req.verbose {
        let config: serde_json::Value = serde_json::from_slice(&cri.images.config_json(&image.id)?)
            .unwrap_or(serde_json::Value::Null);
        let lowerdirs = match &image.chain_id {
            Some(c) => cri.images.snapshotter().lowers(c)?,
            None => Vec::new(),
        };
        let v = serde_json::json!({
            "imageSpec": config,
            "chainID": image.chain_id,
            "lowerDirs": lowerdirs,
        });
        info.insert("info".to_string(), v.to_string());
    }
    Ok(ImageStatusResponse {
        image: Some(to_cri(image)),
        info,
    })
}

/// PullImage: returns the image id (the config digest).
pub async fn pull_image(cri: &Cri, req: PullImageRequest) -> CriResult<PullImageResponse> {
    crate::validate::image::pull_image(&req, |h| cri.config.sandbox.handler(h).is_some())?;
    let name = image_name(req.image.as_ref(), "PullImage")?;
    let auth = req.auth.map(|a| crust_images::Auth {
        username: a.username,
        password: a.password,
        auth: a.auth,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    });
    let pulled = cri.images.pull(&name, auth.as_ref()).await;
    // A pull's buffers were spread over several threads' arenas: give them back.
    crate::memory::release_free_heap_soon();
    Ok(PullImageResponse { image_ref: pulled? })
}

/// RemoveImage: by id, tag or digest; removes every tag; absent is fine.
pub async fn remove_image(cri: &Cri, req: RemoveImageRequest) -> CriResult<RemoveImageResponse> {
    let name = image_name(req.image.as_ref(), "RemoveImage")?;
    cri.images.remove(&name).await?;
    Ok(RemoveImageResponse {})
}

/// ImageFsInfo: bytes and inodes of the snapshot and content stores, one entry per
/// mount point (one entry when both live on the same filesystem, as by default).
pub async fn image_fs_info(cri: &Cri, _req: ImageFsInfoRequest) -> CriResult<ImageFsInfoResponse> {
    let fs = cri.images.fs_info().await?;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let mut by_mount: Vec<(String, u64, u64)> = Vec::new();
    for u in [fs.snapshots, fs.content] {
        let mp = u.mountpoint.display().to_string();
        match by_mount.iter_mut().find(|(m, _, _)| *m == mp) {
            Some(e) => {
                e.1 += u.bytes;
                e.2 += u.inodes;
            }
            None => by_mount.push((mp, u.bytes, u.inodes)),
        }
    }
    Ok(ImageFsInfoResponse {
        image_filesystems: by_mount
            .into_iter()
            .map(|(mountpoint, bytes, inodes)| cri::FilesystemUsage {
                timestamp,
                fs_id: Some(cri::FilesystemIdentifier { mountpoint }),
                used_bytes: Some(cri::UInt64Value { value: bytes }),
                inodes_used: Some(cri::UInt64Value { value: inodes }),
            })
            .collect(),
        container_filesystems: Vec::new(),
    })
}
