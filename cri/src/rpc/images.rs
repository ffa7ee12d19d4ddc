//! ImageService RPCs.

use k8s_cri::v1::{
    ImageFsInfoRequest, ImageFsInfoResponse, ImageStatusRequest, ImageStatusResponse,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse,
};

use crate::Cri;
use crate::error::{CriError, CriResult};

/// ListImages: not built yet.
pub async fn list_images(_cri: &Cri, _req: ListImagesRequest) -> CriResult<ListImagesResponse> {
    Err(CriError::Unimplemented("ListImages"))
}

/// ImageStatus: not built yet.
pub async fn image_status(_cri: &Cri, _req: ImageStatusRequest) -> CriResult<ImageStatusResponse> {
    Err(CriError::Unimplemented("ImageStatus"))
}

/// PullImage: not built yet.
pub async fn pull_image(_cri: &Cri, _req: PullImageRequest) -> CriResult<PullImageResponse> {
    Err(CriError::Unimplemented("PullImage"))
}

/// RemoveImage: not built yet.
pub async fn remove_image(_cri: &Cri, _req: RemoveImageRequest) -> CriResult<RemoveImageResponse> {
    Err(CriError::Unimplemented("RemoveImage"))
}

/// ImageFsInfo: not built yet.
pub async fn image_fs_info(_cri: &Cri, _req: ImageFsInfoRequest) -> CriResult<ImageFsInfoResponse> {
    Err(CriError::Unimplemented("ImageFsInfo"))
}
