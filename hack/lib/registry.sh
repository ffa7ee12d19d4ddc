# shellcheck shell=bash
# hack/lib/registry.sh — start and stop a local docker-registry (Debian's
# /usr/bin/docker-registry, distribution 2.8) on a free 127.0.0.1 port.
#
# Source it; it defines functions only:
#   free_port                              print a TCP port free on 127.0.0.1
#   registry_write_config STORAGE ADDR CONFIG [readonly|rw] [HTPASSWD]
#                                          write a registry config YAML
#   registry_start STORAGE DIR [readonly|rw] [HTPASSWD]
#                                          start a registry serving STORAGE
#                                          (config + log in DIR); sets
#                                          REGISTRY_PID and REGISTRY_ADDR
#   registry_running PID                   true if PID is a live docker-registry
#   registry_stop PID                      stop that registry by PID
#
# The registry speaks plain HTTP with filesystem storage. `readonly` sets the
# registry's maintenance read-only mode: pulls work, pushes are refused, so
# several registries can share one populated storage directory. HTPASSWD (a
# bcrypt file: `htpasswd -Bbn user password`) turns on basic auth.

free_port() {
	if command -v python3 >/dev/null 2>&1; then
		python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
		return
	fi
	# No python3: a random port below the kernel's ephemeral range that no
	# one listens on now. registry_start retries if it is taken meanwhile.
	local port
	while :; do
		port=$((20000 + RANDOM % 12000))
		if ! ss -Htln "sport = :$port" | grep -q .; then
			printf '%s\n' "$port"
			return
		fi
	done
}

registry_write_config() {
	local storage=$1 addr=$2 config=$3 readonly=${4:-} htpasswd=${5:-}
	local ro=false
	[[ "$readonly" == readonly ]] && ro=true
	cat >"$config" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $storage
  maintenance:
    uploadpurging:
      enabled: false
    readonly:
      enabled: $ro
http:
  addr: $addr
  secret: crust-fixtures-not-a-secret
EOF
	if [[ -n "$htpasswd" ]]; then
		cat >>"$config" <<EOF
auth:
  htpasswd:
    realm: crust
    path: $htpasswd
EOF
	fi
}

# registry_start STORAGE DIR [readonly|rw] [HTPASSWD] — DIR holds registry.yml and
# registry.log. The registry is started in its own session with every
# inherited descriptor beyond stdio closed (callers may hold flock fds), so it
# can outlive the caller when the caller wants that (hack/fixtures serve).
# shellcheck disable=SC2034 # REGISTRY_PID, REGISTRY_ADDR are its outputs
registry_start() {
	local storage=$1 dir=$2 readonly=${3:-} htpasswd=${4:-}
	local attempt port addr pid i
	REGISTRY_PID=
	REGISTRY_ADDR=
	mkdir -p "$storage" "$dir"
	for attempt in 1 2 3 4 5; do
		port=$(free_port)
		addr=127.0.0.1:$port
		registry_write_config "$storage" "$addr" "$dir/registry.yml" "$readonly" "$htpasswd"
		: >"$dir/registry.log"
		setsid /usr/bin/docker-registry serve "$dir/registry.yml" \
			</dev/null >>"$dir/registry.log" 2>&1 9>&- 8>&- &
		pid=$!
		for ((i = 0; i < 100; i++)); do
			if ! kill -0 "$pid" 2>/dev/null; then
				break
			fi
			if grep -q "listening on $addr" "$dir/registry.log" &&
				curl --noproxy "*" -sS -o /dev/null "http://$addr/v2/" 2>/dev/null; then
				REGISTRY_PID=$pid
				REGISTRY_ADDR=$addr
				return 0
			fi
			sleep 0.1
		done
		# Died (port taken between free_port and bind) or never answered.
		registry_stop "$pid" 2>/dev/null || true
		printf 'registry: attempt %s on %s failed:\n' "$attempt" "$addr" >&2
		tail -n 5 "$dir/registry.log" >&2 || true
	done
	printf 'registry: could not start docker-registry (log: %s)\n' "$dir/registry.log" >&2
	return 1
}

# registry_running PID — true if PID is a live docker-registry (not a zombie,
# not a recycled PID).
registry_running() {
	[[ "$(readlink "/proc/$1/exe" 2>/dev/null || true)" == */docker-registry ]]
}

# process_gone PID — true once PID has exited (a zombie counts as exited).
process_gone() {
	local stat
	kill -0 "$1" 2>/dev/null || return 0
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	stat=${stat##*) }
	[[ "${stat:0:1}" == Z ]]
}

# registry_stop PID — only signals PID if it still is a docker-registry, so a
# stale pid file never makes us kill a recycled PID. Returns once it exited.
registry_stop() {
	local pid=$1 i
	[[ "$pid" =~ ^[0-9]+$ ]] || return 0
	if registry_running "$pid"; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			if process_gone "$pid"; then
				break
			fi
			sleep 0.05
		done
		if ! process_gone "$pid"; then
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	# Reap it if it is a child of this shell (a no-op otherwise), then wait
	# for it to leave the process table.
	wait "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		if ! kill -0 "$pid" 2>/dev/null; then
			break
		fi
		sleep 0.05
	done
}
