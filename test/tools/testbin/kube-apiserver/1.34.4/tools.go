//go:build tools

// Package tools pins kube-apiserver and kube-controller-manager (the tests that need a real
// controller run it) so that go mod tidy keeps their dependencies.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
