package main

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/test/gateway"
	"github.com/rrguard/rrguard/test/testenv"
)

// A mode handles one signal the way one kind of creator does, and says whether it stored a new RR.
type mode struct {
	name string
	// webhook: whether rrguard is in the path (the namespace is labelled for it).
	webhook bool
	signal  func(ctx context.Context, c client.Client, ns, fp, pod string) (created bool, err error)
}

var modes = []mode{
	{name: "baseline", signal: createOnly},
	{name: "rrguard", webhook: true, signal: createOnly},
	{name: "lease-lock", signal: leaseLocked},
	{name: "list-create", signal: listThenCreate},
}

// createOnly is a plain create: the baseline without a webhook, and rrguard's whole client side
// (a 409 is the duplicate answer, naming the RR in flight).
func createOnly(ctx context.Context, c client.Client, ns, fp, _ string) (bool, error) {
	err := c.Create(ctx, testenv.NewRR(ns, fp))
	if apierrors.IsAlreadyExists(err) {
		return false, nil
	}
	return err == nil, err
}

// listThenCreate is Kubernaut's dedup without its lock: list (uncached) by field selector, then
// create or record the repeat.
func listThenCreate(ctx context.Context, c client.Client, ns, fp, pod string) (bool, error) {
	o, err := gateway.Gateway{Client: c, Namespace: ns, Pod: pod, NoLock: true}.Signal(ctx, fp)
	return o.Created && !o.Swallowed409, err
}

// leaseLocked is Kubernaut's current Gateway (package gateway).
func leaseLocked(ctx context.Context, c client.Client, ns, fp, pod string) (bool, error) {
	o, err := gateway.Gateway{Client: c, Namespace: ns, Pod: pod}.Signal(ctx, fp)
	return o.Created && !o.Swallowed409, err
}
