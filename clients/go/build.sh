#!/usr/bin/env bash
# Go client: regenerate the gRPC code from proto/bbo/v1, or build the example worker offline.
#
#   clients/go/build.sh generate        # protoc + protoc-gen-go + protoc-gen-go-grpc -> bbov1/
#   clients/go/build.sh worker OUT      # build examples/worker into the file OUT
#   clients/go/build.sh test [ARGS]     # go test the client package (ARGS: go test's, e.g. -run X);
#                                       # with BBO_TEST_ADDRESS, also its tests against that server
#
# Building uses Debian's Go sources (golang-google-grpc-dev, golang-google-protobuf-dev,
# golang-github-schollz-progressbar-dev under /usr/share/gocode) in GOPATH mode, so it needs no module proxy. With one reachable, plain
# `go mod tidy && go build ./...` in clients/go works too (go.mod names the same versions).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
module="bbo/clients/go"

case "${1:-}" in
generate)
    m="Mbbo/v1/study.proto=$module/bbov1;bbov1,Mbbo/v1/service.proto=$module/bbov1;bbov1"
    protoc -I "$root/proto" \
        --go_out="$here" --go_opt="module=$module,$m" \
        --go-grpc_out="$here" --go-grpc_opt="module=$module,$m" \
        "$root/proto/bbo/v1/study.proto" "$root/proto/bbo/v1/service.proto"
    ;;
worker | test)
    if [ "$1" = worker ]; then
        out="${2:?usage: build.sh worker OUT}"
        case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
    fi
    gopath="$(mktemp -d)"
    trap 'rm -rf "$gopath"' EXIT
    sources="${BBO_GO_SOURCES:-/usr/share/gocode}"
    mkdir -p "$gopath/src/$(dirname "$module")" "$gopath/src/github.com/schollz/progressbar"
    ln -s "$here" "$gopath/src/$module"
    # Debian keeps progressbar's sources under .../schollz/progressbar; its import path ends in /v3
    ln -s "$sources/src/github.com/schollz/progressbar" "$gopath/src/github.com/schollz/progressbar/v3"
    cd "$gopath/src/$module"
    export GO111MODULE=off GOFLAGS= GOPROXY=off GOPATH="$gopath:$sources"
    if [ "$1" = worker ]; then
        go build -o "$out" "$module/examples/worker"
    else
        go test "$module/bbo" "${@:2}"
    fi
    ;;
*)
    echo "usage: $0 generate | worker OUT | test [ARGS]" >&2
    exit 2
    ;;
esac
