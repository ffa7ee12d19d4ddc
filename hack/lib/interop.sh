# shellcheck shell=bash
# hack/lib/interop.sh — the interop corpus of hack/fixtures: images
# crust/interop:<name>, each crust/busybox plus the same small tree
# (interop_tree) written as a layer by an independent tool, and for each the
# reference unpack crust must match. Sourced by hack/fixtures, whose L, WORK,
# FX, ROOT, log, die, unpack, repack and configure it uses. See docs/fixtures.md.
#
#   INTEROP_IMAGES        the names, in build order
#   interop_made_by NAME  how the top layer of crust/interop:NAME was made
#   interop_containerd_refuses NAME
#                         whether containerd refuses that layer
#   build_interop         build every image into $L as tag interop-NAME, its
#                         reference rootfs into $L/interop/NAME and the facts
#                         for images.json into $L/interop.json

readonly INTEROP_IMAGES=(
	umoci-repack umoci-insert
	gnutar-dot gnutar-absolute gnutar-gnu gnutar-posix gnutar-ustar gnutar-v7
	gnutar-sparse-gnu gnutar-sparse-0.0 gnutar-sparse-0.1 gnutar-sparse-1.0
	bsdtar-default bsdtar-gnutar bsdtar-ustar
	python-gnu python-pax python-ustar
	go-plain go-no-eoa go-unpadded go-one-zero-block go-trailing-data go-names go-implicit-parents
	go-pax-global go-base256 go-hardlinks go-hardlink-lower
)

# A directory whose files' paths pass the 100 bytes of a tar name field; each
# component is shorter, so ustar can split it into prefix and name.
readonly INTEROP_LONG_DIR=corpus/a-directory-name-long-enough-that-the-path-of-its-files/passes-the-hundred-bytes-of-a-tar-name-field

# interop_tree DIR — the common tree, under DIR/corpus.
interop_tree() {
	local t=$1 c=$1/corpus
	install -d -m 0755 "$c"
	printf 'hello from the interop corpus\n' >"$c/hello"
	: >"$c/empty"
	printf '#!/bin/sh\necho setuid\n' >"$c/setuid"
	chmod 4755 "$c/setuid"
	printf '#!/bin/sh\necho setgid\n' >"$c/setgid"
	chmod 2755 "$c/setgid"
	install -d -m 1777 "$c/sticky"
	printf 'in a sticky dir\n' >"$c/sticky/inside"
	install -d -m 0750 -o 1000 -g 1000 "$c/app"
	install -m 0640 -o 1000 -g 1000 /dev/null "$c/app/owned"
	printf 'owned by app\n' >"$c/app/owned"
	install -m 0600 -o 65534 -g 65534 /dev/null "$c/nobody"
	printf 'owned by nobody\n' >"$c/nobody"
	ln -s /corpus/hello "$c/symlink-absolute"
	ln -s sticky/inside "$c/symlink-relative"
	ln -s ../bin/busybox "$c/symlink-up"
	printf 'three names, one inode\n' >"$c/hardlink-a"
	ln "$c/hardlink-a" "$c/hardlink-b"
	ln "$c/hardlink-a" "$c/app/hardlink-c"
	mkfifo -m 0644 "$c/fifo"
	mknod -m 0666 "$c/null" c 1 3
	install -d -m 0755 "$t/$INTEROP_LONG_DIR"
	printf 'at the end of a long path\n' >"$t/$INTEROP_LONG_DIR/file"
	ln -s "/$INTEROP_LONG_DIR/file" "$c/symlink-long"
	printf 'with a user xattr\n' >"$c/xattr"
	python3 -c 'import os, sys; os.setxattr(sys.argv[1], "user.crust", b"interop")' "$c/xattr"
	printf 'utf-8\n' >"$c/ünïcödé-名前"
	find "$t" -exec touch -h -d @1700000000 {} +
}

# interop_sparse DIR — add corpus/sparse: 3 MiB, data at 0 and at 1 MiB+100,
# a hole up to the end.
interop_sparse() {
	local f=$1/corpus/sparse
	truncate -s 3M "$f"
	printf 'data at the start\n' | dd of="$f" conv=notrunc status=none
	printf 'data in the middle\n' | dd of="$f" bs=1 seek=$((1024 * 1024 + 100)) conv=notrunc status=none
	touch -d @1700000000 "$f"
}

# interop_excluded NAME — tree paths the format of NAME cannot hold, left out
# of its layer.
interop_excluded() {
	case $1 in
	*-ustar) printf '%s\n' corpus/symlink-long ;;
	gnutar-v7) printf '%s\n' corpus/symlink-long corpus/fifo corpus/null "$INTEROP_LONG_DIR" ;;
	esac
}

# interop_containerd_refuses NAME — whether containerd 1.6's applier (with
# the overlayfs snapshotter) refuses the layer of NAME: it does not handle the
# old GNU sparse type S ("unhandled tar header type 83"), which Go's
# archive/tar reads, and it applies a layer into its own upper directory, where
# a hard link to a file of a lower layer finds no target ("link …: no such
# file or directory"), which umoci unpack makes. The tests hold containerd to
# this; crust may refuse these too.
interop_containerd_refuses() {
	[[ $1 == gnutar-sparse-gnu || $1 == go-hardlink-lower ]]
}

interop_made_by() {
	case $1 in
	umoci-repack) echo "umoci repack of the tree copied into an unpacked crust/busybox" ;;
	umoci-insert) echo "umoci insert of the tree at /corpus, then of a file at /inserted/hello (two layers)" ;;
	gnutar-dot) echo "GNU tar -C TREE . (default format gnu; names ./x, a ./ entry)" ;;
	gnutar-absolute) echo "GNU tar -P with absolute names (/corpus/x)" ;;
	gnutar-gnu) echo "GNU tar --format=gnu (long names and targets as ././@LongLink)" ;;
	gnutar-posix) echo "GNU tar --format=posix --xattrs (PAX)" ;;
	gnutar-ustar) echo "GNU tar --format=ustar (long names split into prefix; no long link target)" ;;
	gnutar-v7) echo "GNU tar --format=v7 (no long names or targets, no fifo, no device)" ;;
	gnutar-sparse-gnu) echo "GNU tar -S --format=gnu: corpus/sparse as a GNU sparse entry (type S)" ;;
	gnutar-sparse-*) echo "GNU tar -S --format=posix --sparse-version=${1#gnutar-sparse-}: corpus/sparse as PAX sparse" ;;
	bsdtar-default) echo "bsdtar (libarchive) default format (restricted PAX, xattrs)" ;;
	bsdtar-gnutar) echo "bsdtar --format=gnutar" ;;
	bsdtar-ustar) echo "bsdtar --format=ustar (no long link target)" ;;
	python-gnu) echo "Python tarfile GNU_FORMAT" ;;
	python-pax) echo "Python tarfile PAX_FORMAT: xattrs, a fractional mtime, uname/gname, uid/gid 3000000 in PAX records" ;;
	python-ustar) echo "Python tarfile USTAR_FORMAT (no long link target)" ;;
	go-*) echo "Go archive/tar (hack/tarshapes), shape ${1#go-}" ;;
	*) return 1 ;;
	esac
}

# interop_layer NAME TREE OUT — write the top layer of NAME (not the umoci
# ones) as an uncompressed tar.
interop_layer() {
	local name=$1 t=$2 out=$3 x excludes=()
	while read -r x; do
		excludes+=("--exclude=$x")
	done < <(interop_excluded "$name")
	local gnu=(tar -C "$t" --sort=name --numeric-owner "${excludes[@]}")
	local pax=(--format=posix --xattrs "--pax-option=delete=atime,delete=ctime")
	case $name in
	gnutar-dot) "${gnu[@]}" -cf "$out" . ;;
	gnutar-absolute)
		# -P keeps names as given; the transform drops TREE's own path.
		tar -P --sort=name --numeric-owner --transform="s|^$t||" -cf "$out" "$t/corpus"
		;;
	gnutar-gnu) "${gnu[@]}" --format=gnu -cf "$out" corpus ;;
	gnutar-posix) "${gnu[@]}" "${pax[@]}" -cf "$out" corpus ;;
	gnutar-ustar) "${gnu[@]}" --format=ustar -cf "$out" corpus ;;
	gnutar-v7) "${gnu[@]}" --format=v7 -cf "$out" corpus ;;
	gnutar-sparse-gnu) "${gnu[@]}" -S --format=gnu -cf "$out" corpus ;;
	gnutar-sparse-*) "${gnu[@]}" -S "${pax[@]}" --sparse-version="${name#gnutar-sparse-}" -cf "$out" corpus ;;
	bsdtar-default) bsdtar -C "$t" --numeric-owner "${excludes[@]}" -cf "$out" corpus ;;
	bsdtar-gnutar | bsdtar-ustar) bsdtar -C "$t" --numeric-owner "${excludes[@]}" --format="${name#bsdtar-}" -cf "$out" corpus ;;
	python-*) python3 "$ROOT/hack/lib/interop_tarfile.py" "${name#python-}" "$t" "$out" ;;
	go-*) "$WORK/b/tarshapes" "${name#go-}" "$t" "$out" ;;
	*) die "interop: no layer recipe for $name" ;;
	esac
}

# interop_reference NAME BASE LAYER — unpack interop-NAME into
# $L/interop/NAME with umoci, as root (owners kept); where umoci cannot, GNU
# tar extracts LAYER (its top layer) over BASE, the umoci unpack of
# crust/busybox. Prints how the reference was made.
interop_reference() {
	local name=$1 base=$2 layer=$3 b=$WORK/b/interop-ref err
	rm -rf "$b"
	if err=$(umoci unpack --image "$L:interop-$name" "$b" 2>&1 >/dev/null); then
		mv "$b/rootfs" "$L/interop/$name"
		echo "umoci unpack"
	else
		err=$(tail -n1 <<<"$err" | sed 's/^[[:space:]]*⨯[[:space:]]*//')
		[[ -n "$layer" ]] || die "interop: umoci cannot unpack $name and there is no layer tar: $err"
		cp -a "$base" "$L/interop/$name"
		tar -C "$L/interop/$name" -xpf "$layer" --numeric-owner --xattrs --xattrs-include='*' ||
			die "interop: GNU tar cannot extract the layer of $name either"
		echo "GNU tar -x of the layer over the umoci unpack of crust/busybox (umoci unpack: $err)"
	fi
	rm -rf "$b"
}

# interop_check_reference NAME TREE — every tree path the format can hold is
# in the reference, so a tool that dropped an entry cannot go unnoticed.
interop_check_reference() {
	local name=$1 t=$2 ref=$L/interop/$1 p x excluded missing=()
	mapfile -t excluded < <(interop_excluded "$name")
	while IFS= read -r -d '' p; do
		for x in "${excluded[@]}"; do
			[[ $p == "$x" || $p == "$x"/* ]] && continue 2
		done
		[[ -e "$ref/$p" || -L "$ref/$p" ]] || missing+=("$p")
	done < <(cd "$t" && find corpus -print0)
	((${#missing[@]} == 0)) || die "interop: the reference of $name lacks ${missing[*]}"
}

build_interop() {
	local w=$WORK/interop name tree layer made_by reference
	mkdir -p "$w" "$L/interop"
	(
		cd "$ROOT/hack/tarshapes"
		GOCACHE=$FX/go/cache GOPATH=$FX/go/path GOPROXY=off GOFLAGS="" GO111MODULE=on GOENV=off GOTOOLCHAIN=local \
			go build -o "$WORK/b/tarshapes" .
	) || die "interop: go build of hack/tarshapes failed"
	interop_tree "$w/tree"
	# The sparse images also hold corpus/sparse; go-hardlinks also bin/sh,
	# a copy of busybox the links point to (as sh it is still the shell).
	cp -a "$w/tree" "$w/tree-sparse"
	interop_sparse "$w/tree-sparse"
	cp -a "$w/tree" "$w/tree-hardlinks"
	install -D -m 0755 /bin/busybox "$w/tree-hardlinks/bin/sh"
	unpack busybox-latest "$w/base"
	: >"$L/interop.json"
	for name in "${INTEROP_IMAGES[@]}"; do
		case $name in
		gnutar-sparse-*) tree=$w/tree-sparse ;;
		go-hardlinks) tree=$w/tree-hardlinks ;;
		*) tree=$w/tree ;;
		esac
		layer=
		case $name in
		umoci-repack)
			rm -rf "$w/bundle"
			unpack busybox-latest "$w/bundle"
			cp -a "$tree/corpus" "$w/bundle/rootfs/corpus"
			repack "interop-$name" "$w/bundle" "interop: $name"
			rm -rf "$w/bundle"
			;;
		umoci-insert)
			umoci insert --image "$L:busybox-latest" --tag "interop-$name" \
				--history.created_by "hack/fixtures: interop: umoci insert /corpus" "$tree/corpus" /corpus
			umoci insert --image "$L:interop-$name" \
				--history.created_by "hack/fixtures: interop: umoci insert /inserted/hello" \
				"$tree/corpus/hello" /inserted/hello
			;;
		*)
			layer=$w/$name.tar
			interop_layer "$name" "$tree" "$layer"
			umoci raw add-layer --image "$L:busybox-latest" --tag "interop-$name" \
				--history.created_by "hack/fixtures: interop: $(interop_made_by "$name")" "$layer"
			;;
		esac
		configure "interop-$name" --config.label org.crust.fixture=interop
		reference=$(interop_reference "$name" "$w/base/rootfs" "$layer")
		interop_check_reference "$name" "$tree"
		made_by=$(interop_made_by "$name")
		jq -nc --arg n "$name" --arg m "$made_by" --arg r "$reference" \
			--argjson c "$(interop_containerd_refuses "$name" && echo true || echo false)" \
			'{($n): {made_by: $m, reference: $r, containerd_refuses: $c}}' >>"$L/interop.json"
		rm -f "$layer"
	done
	jq -s add "$L/interop.json" >"$L/interop.json.new"
	mv -f "$L/interop.json.new" "$L/interop.json"
	rm -rf "$w"
}
