#!/usr/bin/env bash
# gen.sh <kubernetes version>: writes the modules `make testbin` builds for that release, to commit:
#   kube-apiserver/<version>/  go.mod requiring k8s.io/kubernetes v<version>, each staging module
#                              replaced by its published v0.<minor>.<patch> (the module zip has no
#                              ./staging), go.sum, tools.go, and etcd-version: the etcd that release
#                              ships with (kubeadm's DefaultEtcdVersion);
#   etcd/<etcd version>/       etcd's own main at that version.
# Run once per new release; `make testbin` never runs it.
set -euo pipefail
v=${1:?usage: gen.sh <kubernetes version, e.g. 1.34.4>}
# Staging releases the module proxy does not serve, each replaced by the nearest earlier patch it
# does (module@version=version). Only kube-controller-manager imports these; the tests run none of
# the controllers they hold.
unserved="k8s.io/endpointslice@v0.32.13=v0.32.12"
here=$(cd "$(dirname "$0")" && pwd)
minor_patch=${v#1.}
GOFLAGS=-mod=mod go mod download k8s.io/kubernetes@v"$v"
src=$(go env GOMODCACHE)/k8s.io/kubernetes@v$v
etcd=$(sed -n 's/.*DefaultEtcdVersion = "\([0-9.]*\)-[0-9]*".*/\1/p' "$src/cmd/kubeadm/app/constants/constants.go")
[ -n "$etcd" ] || { echo "no DefaultEtcdVersion in $src" >&2; exit 1; }

d=$here/kube-apiserver/$v
mkdir -p "$d"
{
  echo "// Module $v builds k8s.io/kubernetes' kube-apiserver and kube-controller-manager v$v for the tests (written by ../../gen.sh)."
  echo "// k8s.io/kubernetes points its staging modules at ./staging, which is not in"
  echo "// the module zip, so each is replaced by its published release."
  echo "module github.com/rrguard/rrguard/test/tools/testbin/kube-apiserver/$v"
  echo
  echo "go 1.26.0"
  echo
  echo "require k8s.io/kubernetes v$v"
  echo
  echo "replace ("
  grep -E '^\s*k8s.io/[a-z0-9-]+ => \./staging/src/' "$src/go.mod" | awk -v mv="v0.$minor_patch" -v unserved="$unserved" '
    BEGIN { n = split(unserved, u, " "); for (i = 1; i <= n; i++) { split(u[i], kv, "="); alt[kv[1]] = kv[2] } }
    { ver = mv; if (($1 "@" mv) in alt) ver = alt[$1 "@" mv]; print "\t" $1 " => " $1 " " ver }'
  echo ")"
} > "$d/go.mod"
cat > "$d/tools.go" <<'GO'
//go:build tools

// Package tools pins kube-apiserver and kube-controller-manager (the tests that need a real
// controller run it) so that go mod tidy keeps their dependencies.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
GO
echo "$etcd" > "$d/etcd-version"
(cd "$d" && go mod tidy)

e=$here/etcd/$etcd
if [ ! -f "$e/go.mod" ]; then
  mkdir -p "$e"
  printf '// Module %s builds the etcd server v%s that envtest starts (written by ../../gen.sh).\nmodule github.com/rrguard/rrguard/test/tools/testbin/etcd/%s\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$etcd" "$etcd" "$etcd" "$etcd" > "$e/go.mod"
  cat > "$e/main.go" <<'GO'
// Command etcd is etcd's own main, built from the module proxy for envtest.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$e" && go mod tidy)
fi
echo "kube-apiserver $v: $d; etcd $etcd: $e"
