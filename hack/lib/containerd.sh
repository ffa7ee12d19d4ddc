# shellcheck shell=bash
# hack/lib/containerd.sh — run Debian's containerd (1.6) with its CRI plugin as
# a private instance: every path (root, state, sockets, runc state) under one
# directory, so it never touches /run/containerd or /var/lib/containerd and a
# system containerd, if any, is left alone.
#
# Source it after hack/lib/registry.sh (it uses process_gone); it defines
# functions only:
#   containerd_write_config DIR REGISTRY_ADDR CNI_CONF_DIR STREAM_PORT
#                            write DIR/config.toml (see below)
#   containerd_start DIR     start containerd with DIR/config.toml, wait until
#                            its CRI socket answers; sets CONTAINERD_PID
#   containerd_socket DIR    print the CRI endpoint (unix:///DIR/containerd.sock)
#   containerd_stop PID      SIGTERM, then SIGKILL after 15 s; returns once gone
#
# The configuration mirrors what crust gets in hack/bench: runc through
# io.containerd.runc.v2 with cgroupfs, the given CNI conf dir with the plugins
# in /usr/lib/cni, the pause image from the fixtures registry (plain HTTP),
# streaming on 127.0.0.1, restrict_oom_score_adj (no CAP_SYS_RESOURCE here),
# and the plugins a CRI node does not use disabled.

containerd_socket() {
	printf 'unix://%s/containerd.sock\n' "$1"
}

containerd_write_config() {
	local dir=$1 reg=$2 cni=$3 port=$4
	mkdir -p "$dir/root" "$dir/state" "$dir/runc"
	cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.native",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = "$dir/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$reg/crust/pause:3.9"
  stream_server_address = "127.0.0.1"
  stream_server_port = "$port"
  restrict_oom_score_adj = true
  enable_selinux = false
  enable_cdi = false

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "$(command -v runc)"
  Root = "$dir/runc"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "$cni"
  max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri".registry.mirrors."$reg"]
  endpoint = ["http://$reg"]

[plugins."io.containerd.grpc.v1.cri".registry.configs."$reg".tls]
  insecure_skip_verify = true
EOF
}

# containerd_start DIR — containerd runs in its own session (so a Ctrl-C in
# the terminal reaches hack/bench, which stops it in order), logging to
# DIR/containerd.log.
# shellcheck disable=SC2034 # CONTAINERD_PID is its output
containerd_start() {
	local dir=$1 i
	CONTAINERD_PID=
	setsid /usr/bin/containerd --config "$dir/config.toml" \
		</dev/null >>"$dir/containerd.log" 2>&1 9>&- 8>&- &
	CONTAINERD_PID=$!
	for ((i = 0; i < 300; i++)); do
		if process_gone "$CONTAINERD_PID"; then
			printf 'containerd exited during start:\n' >&2
			tail -n 20 "$dir/containerd.log" >&2 || true
			return 1
		fi
		if [[ -S "$dir/containerd.sock" ]]; then
			return 0
		fi
		sleep 0.1
	done
	printf 'containerd: no socket after 30 s (log: %s)\n' "$dir/containerd.log" >&2
	return 1
}

# containerd_stop PID — only signals PID while it still is a containerd.
containerd_stop() {
	local pid=$1 i
	[[ "$pid" =~ ^[0-9]+$ ]] || return 0
	if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" == */containerd ]]; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 150; i++)); do
			process_gone "$pid" && break
			sleep 0.1
		done
		process_gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}
