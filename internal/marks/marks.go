// Package marks keeps, for each fingerprint of each RR namespace, its high-water mark: the highest
// occurrence number of an RR of that fingerprint that has been deleted. An RR's name is
// Kubernaut's audit correlation ID for years, so numbering must remember what was deleted:
// the next name is 1 + max(highest number among existing RRs, the mark).
//
// The marks live in rrguard's own namespace, in at most 4,096 ConfigMaps (rrguard-marks-000 ..
// -fff, by the first three hex characters of the fingerprint), one data entry per fingerprint:
// "<rr-namespace>.<fingerprint[:32]>" = "<n> <unix seconds of the last raise>". Sharding bounds
// the object count whatever the number of fingerprints, keeps the object a create reads small
// (about 25 entries, under 2 KB, at 100,000 fingerprints), and makes two deletions of different
// fingerprints rarely contend for one object. They are outside the RR namespaces so that deleting
// an RR namespace, which deletes its RRs, does not also forget their names.
package marks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rrguard/rrguard/internal/rules"
)

// Label marks rrguard's mark ConfigMaps, so that its cache and RBAC can select them alone.
const Label = "rrguard.kubernaut.ai/marks"

const namePrefix = "rrguard-marks-"

// Store reads and raises marks.
type Store struct {
	// Namespace holds the mark ConfigMaps: rrguard's own.
	Namespace string
	// Reader serves consistent reads (a manager's APIReader): a mark read from a lagging cache
	// could be lower than the truth, and numbering must never go below it.
	Reader client.Reader
	// Writer creates and updates the ConfigMaps.
	Writer client.Client
	// Now is time.Now when nil.
	Now func() time.Time
	// Scope keeps apart the marks of policies other than the RR's, which share the shards: their
	// entries are "<namespace>.<scope>.<key[:32]>" (Scope names the target, "jobs.batch"); the
	// RR's, scope "", keep the format they always had.
	Scope string
	// Known, when set, remembers the shards seen to exist, for RaiseAbsent (shared by the copies
	// of a Store, as the shards are by every policy).
	Known *KnownShards
}

// KnownShards is the set of shard ConfigMaps seen to exist: a shard once seen is patched, and one
// never seen is created, rather than a patch that finds nothing. The collector deletes a shard it
// empties (and forgets it here); one deleted by another replica's collector, or by hand, costs one
// failed patch.
type KnownShards struct{ m sync.Map }

func (k *KnownShards) has(shard string) bool {
	if k == nil {
		return false
	}
	_, ok := k.m.Load(shard)
	return ok
}

func (k *KnownShards) add(shard string) {
	if k != nil {
		k.m.Store(shard, struct{}{})
	}
}

func (k *KnownShards) forget(shard string) {
	if k != nil {
		k.m.Delete(shard)
	}
}

// EntryKey is the data key of key fp of namespace in its shard, in s's scope.
func (s Store) EntryKey(namespace, fp string) string {
	if s.Scope == "" {
		return EntryKey(namespace, fp)
	}
	return namespace + "." + s.Scope + "." + fp[:rules.KeyLen]
}

// Owns reports whether a shard entry (a data key of a mark ConfigMap) belongs to s's scope.
func (s Store) Owns(entry string) bool { return s.owns(entry) }

// owns reports whether a shard entry belongs to s's scope: an RR entry has one dot (namespaces
// and hex keys hold none), a scoped one holds ".<scope>." before its key.
func (s Store) owns(entry string) bool {
	if s.Scope == "" {
		return strings.Count(entry, ".") == 1
	}
	i := strings.Index(entry, ".")
	return i > 0 && strings.HasPrefix(entry[i:], "."+s.Scope+".") && len(entry)-i == len(s.Scope)+2+rules.KeyLen
}

// ScopeOf is the Scope of a policy's target: "" for RRs, else "<resource>.<group>" ("core" for the
// core group).
func ScopeOf(group, resource string) string {
	if group == "kubernaut.ai" && resource == "remediationrequests" {
		return ""
	}
	if group == "" {
		group = "core"
	}
	return resource + "." + group
}

// ShardName is the ConfigMap that holds the mark of fingerprint fp.
func ShardName(fp string) string { return namePrefix + fp[:shardChars] }

// shardChars hex characters of the fingerprint pick its shard: 16^3 = 4,096 shards.
const shardChars = 3

// EntryKey is the data key of fingerprint fp of namespace in its shard.
func EntryKey(namespace, fp string) string { return namespace + "." + fp[:rules.KeyLen] }

// Entry is one fingerprint's mark as stored.
type Entry struct {
	N      int64
	Raised time.Time
}

// ErrCorrupt is returned for a mark entry rrguard cannot read: numbering refuses to guess.
var ErrCorrupt = errors.New("corrupt high-water mark entry")

func parseEntry(v string) (Entry, error) {
	n, t, ok := strings.Cut(v, " ")
	if !ok {
		return Entry{}, fmt.Errorf("%w: %q", ErrCorrupt, v)
	}
	num, err1 := strconv.ParseInt(n, 10, 64)
	sec, err2 := strconv.ParseInt(t, 10, 64)
	if err1 != nil || err2 != nil || num < 0 {
		return Entry{}, fmt.Errorf("%w: %q", ErrCorrupt, v)
	}
	return Entry{N: num, Raised: time.Unix(sec, 0)}, nil
}

func formatEntry(e Entry) string {
	return strconv.FormatInt(e.N, 10) + " " + strconv.FormatInt(e.Raised.Unix(), 10)
}

// Get returns the mark of fp in namespace, read as of now; 0 when there is none.
func (s Store) Get(ctx context.Context, namespace, fp string) (int64, error) {
	var cm corev1.ConfigMap
	err := s.Reader.Get(ctx, client.ObjectKey{Namespace: s.Namespace, Name: ShardName(fp)}, &cm)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	v, ok := cm.Data[s.EntryKey(namespace, fp)]
	if !ok {
		return 0, nil
	}
	e, err := parseEntry(v)
	return e.N, err
}

// shards lists every shard ConfigMap of the store.
func (s Store) shards(ctx context.Context) (*corev1.ConfigMapList, error) {
	var shards corev1.ConfigMapList
	if err := s.Reader.List(ctx, &shards, client.InNamespace(s.Namespace), client.MatchingLabels{Label: "true"}); err != nil {
		return nil, err
	}
	for i := range shards.Items {
		s.Known.add(shards.Items[i].Name)
	}
	return &shards, nil
}

// All reads every mark, keyed by EntryKey; entries it cannot parse are listed in corrupt
// ("<shard>/<key>") instead.
func (s Store) All(ctx context.Context) (all map[string]int64, corrupt []string, err error) {
	shards, err := s.shards(ctx)
	if err != nil {
		return nil, nil, err
	}
	all = map[string]int64{}
	for _, cm := range shards.Items {
		for k, v := range cm.Data {
			e, err := parseEntry(v)
			if err != nil {
				corrupt = append(corrupt, cm.Name+"/"+k)
				continue
			}
			all[k] = e.N
		}
	}
	return all, corrupt, nil
}

// RaiseAbsent is Raise for fingerprints whose marks are believed absent (the index's filter of
// marked fingerprints says so): one write and no read, a JSON patch that adds each entry after
// testing, in the API server and atomically with the adds, that it is absent; or, for a shard
// that does not exist yet, its create. A test that fails (a mark exists after all: the filter
// learns only of marks seen at start and of deletions, not of the sweep's own raises) falls back
// to Raise, which reads. Two writers of one entry cannot lower it: the loser's test fails and it
// reads.
func (s Store) RaiseAbsent(ctx context.Context, namespace string, shard string, want map[string]int64) error {
	if err := inShard(shard, want); err != nil {
		return err
	}
	data := map[string]string{}
	var ops []jsonPatchOp
	for fp, n := range want {
		k, v := s.EntryKey(namespace, fp), formatEntry(Entry{N: n, Raised: s.now()})
		data[k] = v
		path := "/data/" + jsonPointerEscaper.Replace(k)
		// A test of null passes only where the member is absent (the API server's JSON patch).
		ops = append(ops, jsonPatchOp{Op: "test", Path: path, Value: nil}, jsonPatchOp{Op: "add", Path: path, Value: &v})
	}
	body, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	patch := func() error {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: shard}}
		return s.Writer.Patch(ctx, cm, client.RawPatch(types.JSONPatchType, body))
	}
	create := func() error {
		return s.Writer.Create(ctx, s.newShard(shard, data))
	}
	if s.Known.has(shard) {
		if err = patch(); apierrors.IsNotFound(err) {
			err = create()
		}
	} else if err = create(); apierrors.IsAlreadyExists(err) {
		s.Known.add(shard)
		err = patch()
	}
	if apierrors.IsInvalid(err) {
		return s.Raise(ctx, namespace, shard, want)
	}
	if err == nil {
		s.Known.add(shard)
		raises.Inc()
	}
	return err
}

// now is s.Now, time.Now when nil.
func (s Store) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// newShard is shard as it is first created, holding data.
func (s Store) newShard(shard string, data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: shard, Labels: map[string]string{Label: "true"}}, Data: data}
}

// inShard fails unless every fingerprint of want belongs to shard (see ShardName).
func inShard(shard string, want map[string]int64) error {
	for fp := range want {
		if ShardName(fp) != shard {
			return fmt.Errorf("fingerprint %s does not belong to shard %s", fp, shard)
		}
	}
	return nil
}

// jsonPatchOp is one operation of a JSON patch (RFC 6902); a nil Value is JSON null.
type jsonPatchOp struct {
	Op    string  `json:"op"`
	Path  string  `json:"path"`
	Value *string `json:"value"`
}

// jsonPointerEscaper escapes a member name for a JSON pointer (RFC 6901).
var jsonPointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

// Raise makes the marks of the given fingerprints (all in one shard, see ShardName) at least the
// numbers given, in one write; it writes nothing when every mark is already that high. A write
// conflict is returned as is, for the caller to retry with a fresh read.
func (s Store) Raise(ctx context.Context, namespace string, shard string, want map[string]int64) error {
	var cm corev1.ConfigMap
	err := s.Reader.Get(ctx, client.ObjectKey{Namespace: s.Namespace, Name: shard}, &cm)
	creating := apierrors.IsNotFound(err)
	if err != nil && !creating {
		return err
	}
	if creating {
		cm = *s.newShard(shard, nil)
	}
	if err := inShard(shard, want); err != nil {
		return err
	}
	changed := false
	for fp, n := range want {
		k := s.EntryKey(namespace, fp)
		if v, ok := cm.Data[k]; ok {
			cur, err := parseEntry(v)
			if err != nil {
				return err
			}
			if cur.N >= n {
				continue
			}
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[k] = formatEntry(Entry{N: n, Raised: s.now()})
		changed = true
	}
	if !changed {
		return nil
	}
	if creating {
		// Two first raises of one shard at once: the loser gets AlreadyExists and retries.
		err = s.Writer.Create(ctx, &cm)
	} else {
		// Update carries the resourceVersion read above: a concurrent raise conflicts instead of
		// being overwritten.
		err = s.Writer.Update(ctx, &cm)
	}
	if err == nil {
		s.Known.add(shard)
		raises.Inc()
	}
	return err
}
