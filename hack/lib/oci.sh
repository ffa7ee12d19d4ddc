# shellcheck shell=bash
# hack/lib/oci.sh — small helpers to edit an OCI image layout (the kind umoci
# writes) with jq, for what umoci cannot do: image indexes and layers with
# other compressions. Source it; it defines functions only.
#
#   oci_desc LAYOUT REF              descriptor (JSON) of the manifest tagged REF
#   oci_blob LAYOUT DIGEST           path of a blob
#   oci_put_blob LAYOUT FILE         move FILE into the blob store; prints its digest
#   oci_set_ref LAYOUT REF DESC      tag descriptor DESC as REF (replacing REF)
#   oci_recompress LAYOUT REF NEWREF FORMAT
#                                    copy image REF as NEWREF with every layer
#                                    stored as FORMAT: gzip, zstd or none

OCI_REF_NAME=org.opencontainers.image.ref.name

oci_desc() {
	local layout=$1 ref=$2 desc
	desc=$(jq -ec --arg r "$ref" --arg k "$OCI_REF_NAME" \
		'[.manifests[] | select(.annotations[$k] == $r)] | last | del(.annotations)' \
		"$layout/index.json") || {
		printf 'oci: no ref %s in %s\n' "$ref" "$layout" >&2
		return 1
	}
	printf '%s\n' "$desc"
}

oci_blob() {
	local layout=$1 digest=$2
	printf '%s/blobs/%s/%s\n' "$layout" "${digest%%:*}" "${digest#*:}"
}

oci_put_blob() {
	local layout=$1 file=$2 hex
	hex=$(sha256sum "$file" | cut -d' ' -f1)
	mkdir -p "$layout/blobs/sha256"
	mv -f "$file" "$layout/blobs/sha256/$hex"
	printf 'sha256:%s\n' "$hex"
}

oci_set_ref() {
	local layout=$1 ref=$2 desc=$3
	jq --arg r "$ref" --arg k "$OCI_REF_NAME" --argjson d "$desc" \
		'.manifests = [.manifests[] | select(.annotations[$k] != $r)]
		 + [$d + {annotations: {($k): $r}}]' \
		"$layout/index.json" >"$layout/index.json.new"
	mv -f "$layout/index.json.new" "$layout/index.json"
}

# oci_put_json LAYOUT MEDIATYPE JSON — store JSON as a blob, print its descriptor.
oci_put_json() {
	local layout=$1 media_type=$2 json=$3 tmp digest size
	tmp=$(mktemp "$layout/blob.XXXXXX")
	printf '%s' "$json" >"$tmp"
	size=$(stat -c %s "$tmp")
	digest=$(oci_put_blob "$layout" "$tmp")
	jq -nc --arg m "$media_type" --arg d "$digest" --argjson s "$size" \
		'{mediaType: $m, digest: $d, size: $s}'
}

oci_recompress() {
	local layout=$1 ref=$2 newref=$3 format=$4
	local manifest layers=() layer media_type digest size tmp new_layers desc
	case $format in
	gzip) media_type=application/vnd.oci.image.layer.v1.tar+gzip ;;
	zstd) media_type=application/vnd.oci.image.layer.v1.tar+zstd ;;
	none) media_type=application/vnd.oci.image.layer.v1.tar ;;
	*)
		printf 'oci: unknown compression %s\n' "$format" >&2
		return 1
		;;
	esac
	manifest=$(oci_blob "$layout" "$(oci_desc "$layout" "$ref" | jq -r .digest)")
	mapfile -t layers < <(jq -r '.layers[].digest' "$manifest")
	new_layers='[]'
	for layer in "${layers[@]}"; do
		tmp=$(mktemp "$layout/blob.XXXXXX")
		# Every umoci layer is gzip; decompress, then store as asked.
		case $format in
		gzip) gzip -dc "$(oci_blob "$layout" "$layer")" | gzip -n -6 >"$tmp" ;;
		zstd) gzip -dc "$(oci_blob "$layout" "$layer")" | zstd -q -3 -c >"$tmp" ;;
		none) gzip -dc "$(oci_blob "$layout" "$layer")" >"$tmp" ;;
		esac
		size=$(stat -c %s "$tmp")
		digest=$(oci_put_blob "$layout" "$tmp")
		new_layers=$(jq -c --arg m "$media_type" --arg d "$digest" --argjson s "$size" \
			'. + [{mediaType: $m, digest: $d, size: $s}]' <<<"$new_layers")
	done
	desc=$(oci_put_json "$layout" application/vnd.oci.image.manifest.v1+json \
		"$(jq -c --argjson l "$new_layers" '.layers = $l' "$manifest")")
	oci_set_ref "$layout" "$newref" "$desc"
}
