//! PullImage: the image spec's runtime handler.

use k8s_cri::v1::PullImageRequest;

use super::{invalid, shown};
use crate::error::CriResult;

/// "If the runtime handler is unknown, the request should be rejected"; an empty one is
/// the default handler. `known` says whether crust has a handler of that name.
pub fn pull_image(req: &PullImageRequest, known: impl Fn(&str) -> bool) -> CriResult<()> {
    let handler = req
        .image
        .as_ref()
        .map(|i| i.runtime_handler.as_str())
        .unwrap_or_default();
    if !handler.is_empty() && !known(handler) {
        return Err(invalid(
            "image.runtime_handler",
            format!("{} is not a configured runtime handler", shown(handler)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::ImageSpec;

    #[test]
    fn unknown_runtime_handler_is_refused() {
        let req = |h: &str| PullImageRequest {
            image: Some(ImageSpec {
                image: "busybox".into(),
                runtime_handler: h.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let known = |h: &str| h == "runc";
        assert!(pull_image(&req(""), known).is_ok());
        assert!(pull_image(&req("runc"), known).is_ok());
        assert!(pull_image(&req("kata"), known).is_err());
    }
}
