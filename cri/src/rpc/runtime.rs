//! Version, Status, RuntimeConfig, UpdateRuntimeConfig.

use std::collections::HashMap;

use k8s_cri::v1::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeCondition, RuntimeConfigRequest,
    RuntimeConfigResponse, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus, StatusRequest,
    StatusResponse, UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse, VersionRequest,
    VersionResponse,
};

use crate::Cri;
use crate::config;
use crate::error::{CriError, CriResult};

/// The kubelet-facing API version string; CRI v1 runtimes all answer "0.1.0".
const KUBELET_API_VERSION: &str = "0.1.0";

pub async fn version(_cri: &Cri, _req: VersionRequest) -> CriResult<VersionResponse> {
    Ok(VersionResponse {
        version: KUBELET_API_VERSION.to_string(),
        runtime_name: crate::RUNTIME_NAME.to_string(),
        runtime_version: crate::RUNTIME_VERSION.to_string(),
        runtime_api_version: "v1".to_string(),
    })
}

pub async fn status(cri: &Cri, req: StatusRequest) -> CriResult<StatusResponse> {
    let runtime = runtime_condition(cri);
    let (network, cni) = network_condition(&cri.config.sandbox);
    let mut info = HashMap::new();
    if req.verbose {
        let json = |v: serde_json::Value| v.to_string();
        info.insert(
            "config".to_string(),
            serde_json::to_string(&cri.config).unwrap_or_default(),
        );
        info.insert(
            "runtimeConfig".to_string(),
            json(serde_json::json!({ "podCIDR": cri.store.pod_cidr()?.unwrap_or_default() })),
        );
        info.insert("cniConfig".to_string(), json(cni));
        info.insert(
            "version".to_string(),
            json(serde_json::json!({
                "runtimeName": crate::RUNTIME_NAME,
                "runtimeVersion": crate::RUNTIME_VERSION,
                "stateStoreSchema": crate::store::SCHEMA_VERSION,
            })),
        );
    }
    let runtime_handlers = cri
        .config
        .sandbox
        .runtime_handlers
        .iter()
        .map(|(name, handler)| RuntimeHandler {
            name: name.clone(),
            features: Some(RuntimeHandlerFeatures {
                recursive_read_only_mounts: crust_sandbox::features::recursive_read_only(handler),
                user_namespaces: crust_sandbox::userns::handler_supports(
                    handler,
                    &crust_sandbox::Paths {
                        root_dir: cri.config.root_dir.clone(),
                        state_dir: cri.config.state_dir.clone(),
                    },
                )
                .is_ok(),
            }),
        })
        .collect();
    Ok(StatusResponse {
        status: Some(RuntimeStatus {
            conditions: vec![runtime, network],
        }),
        info,
        runtime_handlers,
        // Strict and Merge are both honoured, and ContainerStatus reports the user.
        features: Some(k8s_cri::v1::RuntimeFeatures {
            supplemental_groups_policy: true,
        }),
    })
}

/// RuntimeReady: the default runtime handler's binary is usable and the state
/// directories are writable.
fn runtime_condition(cri: &Cri) -> RuntimeCondition {
    let problem = crust_sandbox::runtime_ready(&cri.config.sandbox)
        .err()
        .or_else(|| {
            [&cri.config.root_dir, &cri.config.state_dir]
                .into_iter()
                .find_map(|d| dir_writable(d).err())
        });
    match problem {
        None => condition("RuntimeReady", true, "", ""),
        Some(message) => condition("RuntimeReady", false, "RuntimeNotReady", &message),
    }
}

fn dir_writable(dir: &std::path::Path) -> Result<(), String> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} is not a valid path", dir.display()))?;
    // SAFETY: access(2) reads a NUL-terminated path and nothing else.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "state directory {} is not usable: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ))
    }
}

/// NetworkReady follows whether a CNI network config is present and valid.
fn network_condition(sandbox: &crust_sandbox::Config) -> (RuntimeCondition, serde_json::Value) {
    match crust_sandbox::cni::find_network_config(&sandbox.cni_conf_dir) {
        Ok(net) => (
            condition("NetworkReady", true, "", ""),
            serde_json::json!({
                "confDir": sandbox.cni_conf_dir,
                "binDirs": sandbox.cni_bin_dirs,
                "network": net.name,
                "cniVersion": net.cni_version,
                "source": net.source,
                "plugins": net.plugin_types(),
            }),
        ),
        Err(e) => (
            condition(
                "NetworkReady",
                false,
                "NetworkPluginNotReady",
                &format!("Network plugin returns error: cni plugin not initialized: {e}"),
            ),
            serde_json::json!({
                "confDir": sandbox.cni_conf_dir,
                "binDirs": sandbox.cni_bin_dirs,
                "error": e.to_string(),
            }),
        ),
    }
}

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> RuntimeCondition {
    RuntimeCondition {
        r#type: kind.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

pub async fn runtime_config(
    cri: &Cri,
    _req: RuntimeConfigRequest,
) -> CriResult<RuntimeConfigResponse> {
    let driver = match cri.config.cgroup_driver {
        config::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
        config::CgroupDriver::Systemd => CgroupDriver::Systemd,
    };
    Ok(RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    })
}

/// Kubelet sends the node's pod CIDR; crust keeps it in the state store. An
/// empty CIDR changes nothing, as in containerd.
pub async fn update_runtime_config(
    cri: &Cri,
    req: UpdateRuntimeConfigRequest,
) -> CriResult<UpdateRuntimeConfigResponse> {
    let cidr = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    if cidr.is_empty() {
        return Ok(UpdateRuntimeConfigResponse {});
    }
    for part in cidr.split(',') {
        validate_cidr(part.trim())
            .map_err(|m| CriError::InvalidArgument(format!("pod CIDR {part:?}: {m}")))?;
    }
    let store = cri.store.clone();
    let to_store = cidr.clone();
    // redb commits fsync; keep them off the async workers.
    tokio::task::spawn_blocking(move || store.set_pod_cidr(&to_store))
        .await
        .map_err(|e| CriError::InvalidArgument(format!("storing pod CIDR: {e}")))??;
    tracing::info!(pod_cidr = %cidr, "pod CIDR updated");
    Ok(UpdateRuntimeConfigResponse {})
}

fn validate_cidr(s: &str) -> Result<(), String> {
    let (addr, len) = s.split_once('/').ok_or("missing /prefix length")?;
    let addr: std::net::IpAddr = addr.parse().map_err(|_| "bad address".to_string())?;
    let len: u8 = len.parse().map_err(|_| "bad prefix length".to_string())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("prefix length {len} exceeds {max}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_validation() {
        assert!(validate_cidr("10.88.0.0/16").is_ok());
        assert!(validate_cidr("fd00::/64").is_ok());
        assert!(validate_cidr("10.88.0.0").is_err());
        assert!(validate_cidr("10.88.0.0/33").is_err());
        assert!(validate_cidr("ten/8").is_err());
    }
}
