//go:build tools

// Package tools records etcd's benchmark tool as a dependency of this module, so
// `go build go.etcd.io/etcd/v3/tools/benchmark` builds it at the pinned version.
package tools

import _ "go.etcd.io/etcd/v3/tools/benchmark"
