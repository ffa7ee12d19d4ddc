# shellcheck shell=bash
# build_dist — build crustd and crust-shim as they ship: crustd with profile
# `daemon`, the shim by hack/build-shim (profile `shim`, static glibc); both
# are copied into $DIST (target/dist), where crustd finds the shim beside it.
# Used by hack/run, hack/install and hack/package. Needs $ROOT.
build_dist() {
	local target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
	cargo build --profile daemon -p crust-cri --bin crustd >&2
	local shim
	shim=$("$ROOT/hack/build-shim")
	DIST=$target_dir/dist
	install -D -m 0755 "$target_dir/daemon/crustd" "$DIST/crustd"
	install -D -m 0755 "$shim" "$DIST/crust-shim"
}
