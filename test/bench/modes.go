package main

import (
	"context"
	"errors"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/kubernaut/creator"
	"github.com/rrguard/rrguard/test/gateway"
	"github.com/rrguard/rrguard/test/testenv"
)

// A mode lands one signal the way one kind of creator does, in a namespace where its webhook
// (if any) is in the path, and says whether the signal stored a new RR.
type mode struct {
	name string
	// label is the namespace label value that puts this mode's webhook in the path: "" for none.
	label  string
	signal func(ctx context.Context, p *process, ns, fp, pod string) (created bool, err error)
}

// process is one creator process of a row: its client, and the Creator through which its
// goroutines' repeats coalesce.
type process struct {
	c  client.Client
	cr *creator.Creator
}

var (
	baseline = mode{name: "baseline", signal: createOnly}
	bare     = mode{name: "bare", label: "bare", signal: createOnly}
	rrguard  = mode{name: "rrguard", label: "rrguard", signal: viaCreator}
	lease    = mode{name: "lease-lock", signal: leaseLocked}
)

// createOnly is a plain create: the baseline with no webhook, and the bare webhook's row.
func createOnly(ctx context.Context, p *process, ns, fp, _ string) (bool, error) {
	err := p.c.Create(ctx, testenv.NewRR(ns, fp))
	if apierrors.IsAlreadyExists(err) {
		return false, nil
	}
	return err == nil, err
}

// viaCreator is rrguard's client side: the process's Creator with its default retry budget, which
// records every repeat.
func viaCreator(ctx context.Context, p *process, ns, fp, _ string) (bool, error) {
	res, err := p.cr.CreateOrRecord(ctx, testenv.NewRR(ns, fp))
	return res.New, err
}

// leaseLocked is Kubernaut's Gateway today (package gateway): Lease lock, uncached List, create
// or record the repeat.
func leaseLocked(ctx context.Context, p *process, ns, fp, pod string) (bool, error) {
	o, err := gateway.Gateway{Client: p.c, Namespace: ns, Pod: pod}.Signal(ctx, fp)
	if errors.Is(err, gateway.ErrLockTimeout) {
		return false, err
	}
	return o.Created && !o.Swallowed409, err
}
