# Go environment shared by the build scripts: local toolchain only, caches under
# ~/.cache/concordance so only the first build is slow, static binaries.
CONCORDANCE_CACHE="${CONCORDANCE_CACHE:-$HOME/.cache/concordance}"
export GOTOOLCHAIN=local
export GOCACHE="$CONCORDANCE_CACHE/go/build"
export GOMODCACHE="$CONCORDANCE_CACHE/go/mod"
export GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0
