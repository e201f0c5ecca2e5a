# OCI image archives without a container engine, with umoci (Debian package).
#
# oci_archive OUT.tar TAG ROOTFS_DIR ENTRYPOINT USER
#   Packs ROOTFS_DIR as the single layer of an image tagged TAG (the OCI layout's
#   org.opencontainers.image.ref.name, a bare tag such as 3.10.1) with the given entry point
#   (a JSON-free, space-separated command) and user (uid:gid), into an OCI layout archive that
#   `ctr images import --base-name NAME` loads as NAME:TAG.
oci_archive() {
  local out=$1 tag=$2 rootfs=$3 entrypoint=$4 user=$5
  local work
  work="$(mktemp -d "${out%/*}/.oci.XXXXXX")"
  umoci init --layout "$work/layout"
  umoci new --image "$work/layout:$tag"
  umoci insert --image "$work/layout:$tag" "$rootfs" /
  local args=() word
  for word in $entrypoint; do args+=(--config.entrypoint "$word"); done
  umoci config --image "$work/layout:$tag" --os linux --architecture amd64 \
    --config.user "$user" "${args[@]}"
  umoci gc --layout "$work/layout"
  tar -C "$work/layout" -cf "$out.tmp" .
  mv -f "$out.tmp" "$out"
  rm -rf "$work"
}
