package serve

import (
	"context"
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/internal/rules"
)

// Check makes a dry-run create of obj through the API server, as its creator would, and returns
// the name rrguard gave it, which a policy with namePrefix prefix gives: prefix, the key's 32 hex
// characters, "-n". Nothing is stored: dry runs reach the webhooks (they declare sideEffects None)
// but not etcd. An error means rrguard is not in the path, or did not answer.
func Check(ctx context.Context, c client.Client, obj client.Object, prefix string) (string, error) {
	if err := c.Create(ctx, obj, client.DryRunAll); err != nil {
		return "", fmt.Errorf("the dry-run create was refused: %w", err)
	}
	if _, _, ok := rules.ParseName(prefix, obj.GetName()); !ok {
		return "", fmt.Errorf("the API server accepted the object as %q without rrguard naming it: are rrguard's webhook configurations installed?", obj.GetName())
	}
	return obj.GetName(), nil
}
