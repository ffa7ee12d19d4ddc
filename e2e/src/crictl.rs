//! The real client: crictl v1.36, `$CRICTL` if set, else `shared/bin/crictl` beside the
//! repository (where the machines that run crust's CI keep it), else `crictl` on `$PATH`.

use std::path::{Path, PathBuf};

pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("CRICTL") {
        return PathBuf::from(p);
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bin/crictl");
    if beside.exists() {
        return beside;
    }
    PathBuf::from("crictl")
}

/// A crictl config file next to `socket` naming it for both services (without one
/// crictl warns on stderr about the missing /etc/crictl.yaml).
pub fn config(socket: &Path) -> std::io::Result<PathBuf> {
    let path = socket.with_extension("crictl.yaml");
    let endpoint = format!("unix://{}", socket.display());
    // Written aside and renamed: concurrent callers never read half a file.
    let tmp = socket.with_extension(format!("{:?}.tmp", std::thread::current().id()));
    std::fs::write(
        &tmp,
        format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\n"),
    )?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
