#!/bin/sh
# set-image.sh IMG KUSTOMIZATION points the "controller" image of KUSTOMIZATION (this folder's
# kustomization.yaml, or a copy of it) at IMG: a name with a registry port and path
# (registry:5000/team/rrguard), then a tag (:v1), a digest (@sha256:...), both, or neither
# (latest). `make deploy IMG=...` runs it on a copy of config/.
set -eu
img=$1
k=$2
name=${img%%@*}
last=${name##*/}
ref="newTag: latest"
case "$last" in
*:*) ref="newTag: ${last##*:}" ;;
esac
case "$img" in
*@*) ref="digest: ${img#*@}" ;;
esac
# A tag beside a digest is dropped: the digest decides what runs.
case "$last" in
*:*) name=${name%:*} ;;
esac
tmp=$(mktemp)
awk '/^images:/ { exit } { print }' "$k" >"$tmp"
printf 'images:\n  - name: controller\n    newName: %s\n    %s\n' "$name" "$ref" >>"$tmp"
mv "$tmp" "$k"
