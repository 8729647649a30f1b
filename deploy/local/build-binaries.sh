#!/usr/bin/env bash
# Builds the local platform's Go binaries from the Go module proxy and caches them by version
# outside the repo. A cached version is reused as is; a missing one is built. Safe to re-run.
#
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   kwok                                                                    (sigs.k8s.io/kwok)
#   helm                                                                    (helm.sh/helm/v3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
CACHE=${PORTAL_CACHE_DIR:-$HOME/.cache/infer-portal}
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=${GOTOOLCHAIN:-local}

say() { printf '[build] %s\n' "$*" >&2; }
fail() { printf '[build] error: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || fail "go is not on PATH; install Go 1.26 or newer"

k8s_dir="$CACHE/k8s-$K8S_VERSION"
build_k8s() {
  local want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)
  local missing=0
  for b in "${want[@]}"; do [ -x "$k8s_dir/bin/$b" ] || missing=1; done
  if [ $missing = 0 ]; then say "kubernetes $K8S_VERSION: cached in $k8s_dir/bin"; return; fi

  say "kubernetes $K8S_VERSION: building (cold builds take 15-30 minutes on 2 cores)"
  local src="$k8s_dir/src"
  mkdir -p "$src/etcd" "$k8s_dir/bin"
  local major minor staging_minor
  major=$(echo "$K8S_VERSION" | sed -E 's/^v([0-9]+)\..*/\1/')
  minor=$(echo "$K8S_VERSION" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')
  staging_minor=$(echo "$K8S_VERSION" | sed -E 's/^v[0-9]+\.([0-9]+\.[0-9]+).*/\1/')

  # k8s.io/kubernetes replaces its staging modules with ./staging paths, which the module proxy
  # cannot follow; read that list from its own go.mod and point each at the published v0.N.M tag.
  local kmod
  kmod=$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])') \
    || fail "could not download k8s.io/kubernetes@$K8S_VERSION from the module proxy"
  local staging
  staging=$(grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$kmod" | awk '{print $1}')
  [ -n "$staging" ] || fail "no staging replacements found in $kmod"
  local goline
  goline=$(grep -E '^go [0-9.]+' "$kmod" | head -1)

  {
    echo "module local/k8sbin"
    echo
    echo "$goline"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    for m in $staging; do echo "	$m => $m v0.$staging_minor"; done
    echo ")"
  } > "$src/go.mod"
  # etcd's own main package carries replace directives that `go install pkg@v` refuses, so build it
  # from a two-line main that calls etcdmain at the version kubernetes itself pins.
  cat > "$src/etcd/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  cat > "$src/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubectl/pkg/cmd"
)
GO
  (
    cd "$src"
    go mod tidy -e >/dev/null 2>"$src/tidy.log" || { cat "$src/tidy.log" >&2; exit 1; }
    local ver="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=$major -X k8s.io/client-go/pkg/version.gitMinor=$minor"
    for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
      say "  go build k8s.io/kubernetes/cmd/$c"
      go build -trimpath -ldflags "-s -w $ver" -o "$k8s_dir/bin/$c.tmp" "k8s.io/kubernetes/cmd/$c" \
        || { echo "[build] error: go build of cmd/$c at $K8S_VERSION failed (see above)" >&2; exit 1; }
      mv "$k8s_dir/bin/$c.tmp" "$k8s_dir/bin/$c"
    done
    say "  go build etcd (go.etcd.io/etcd/server/v3/etcdmain)"
    go build -trimpath -ldflags "-s -w" -o "$k8s_dir/bin/etcd.tmp" ./etcd \
      || { echo "[build] error: go build of etcd failed (see above)" >&2; exit 1; }
    mv "$k8s_dir/bin/etcd.tmp" "$k8s_dir/bin/etcd"
  ) || fail "kubernetes $K8S_VERSION build failed; try another K8S_VERSION in $here/versions.env"
  say "kubernetes $K8S_VERSION: built into $k8s_dir/bin"
}

go_install() {  # name module@version
  local name=$1 pkg=$2 dir="$CACHE/$1-${2##*@}"
  if [ -x "$dir/bin/$name" ]; then say "$name ${pkg##*@}: cached in $dir/bin"; return; fi
  say "$name ${pkg##*@}: go install $pkg"
  mkdir -p "$dir/bin"
  GOBIN="$dir/bin" go install -trimpath -ldflags "-s -w" "$pkg" || fail "go install $pkg failed"
}

case "${1:-all}" in
  k8s) build_k8s ;;
  tools)
    go_install kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" ;;
  all)
    build_k8s
    go_install kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" ;;
  *) fail "usage: $0 [all|k8s|tools]" ;;
esac
