//! crust's additions to the containerd shim v2 task API, spoken by crustd's shim client
//! (`crust_sandbox::shim`) and by crust-shim. Other shim v2 binaries know none of them: the
//! client only sends them to a crust-shim (`ShimFlavour::Crust`).

/// Annotation on a Task `Update` that makes the shim reopen the container's CRI log
/// (ReopenContainerLog).
pub const REOPEN_LOG_ANNOTATION: &str = "io.crust.shim.reopen-log";

/// `Create` options of this type (runc `Options` bytes) also start the task: the shim runs
/// one `runc run --detach` instead of `runc create` + `runc start`. A shim too old to know
/// the type only creates; the client sees the task still CREATED and sends `Start`.
pub const CREATE_AND_START_OPTIONS: &str = "crust.shim.v1.CreateAndStart";

/// The type of ordinary `Create` options (containerd's runc `Options`).
pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";

/// The type of `Checkpoint` options (containerd's runc `CheckpointOptions`: leave running
/// unless `exit`, CRIU's work path, ...), as containerd's CRI sends them.
pub const CHECKPOINT_OPTIONS: &str = "containerd.runc.v1.CheckpointOptions";

/// The scheme of the stdout field that asks the shim to write stdout and stderr into this
/// file in the CRI log format: `file:///abs/path.log`.
pub const CRI_LOG_SCHEME: &str = "file://";

/// The type of an exec's process spec and of an update's resources, in their `Any`.
pub const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
pub const RESOURCES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
