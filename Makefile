# rrguard. `make run` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# The Kubernetes minors rrguard is tested on (make test-k8s: all of them; make test: the newest and
# the oldest), one patch release each. A release's kube-apiserver module and the etcd it ships with
# are in test/tools/testbin (written by its gen.sh).
K8S_VERSIONS := 1.32.13 1.33.13 1.34.4 1.35.4 1.36.3 1.37.2
K8S_OLDEST   := $(firstword $(K8S_VERSIONS))
K8S_NEWEST   := $(lastword $(K8S_VERSIONS))
K8S_VERSION  ?= $(K8S_NEWEST)
ETCD_VERSION  = $(shell cat test/tools/testbin/kube-apiserver/$(K8S_VERSION)/etcd-version)
TESTBIN_ROOT := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/rrguard/testbin
# testbin-dir K8S_VERSION: the folder envtest runs from. -r3: etcd is the release's own; a new
# folder, so a machine's older build (etcd 3.6.16 beside 1.37.2) is not reused.
testbin-dir   = $(TESTBIN_ROOT)/k8s-$(1)-r3
TESTBIN      ?= $(call testbin-dir,$(K8S_VERSION))
ETCD_DIR      = $(TESTBIN_ROOT)/etcd-$(ETCD_VERSION)
KUBE_VERSION_LDFLAGS = $(foreach kv,gitVersion=v$(K8S_VERSION) gitMajor=$(word 1,$(subst ., ,$(K8S_VERSION))) gitMinor=$(word 2,$(subst ., ,$(K8S_VERSION))) gitTreeState=clean,-X k8s.io/component-base/version.$(kv))
export RRGUARD_TESTBIN := $(TESTBIN)
TOOL         := go tool -modfile=test/tools/go.mod
IMG          ?= rrguard:dev
GO_TEST_FLAGS ?=

.PHONY: help
help: ## List targets.
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: manifests
manifests: ## Generate deepcopy code and the CRDs: Kubernaut's RR into config/crd/bases, rrguard's UniquenessPolicy into config/crd/policies and the chart's crds/.
	$(TOOL) controller-gen object paths=./apis/...
	$(TOOL) controller-gen crd paths=./apis/kubernaut/... output:crd:artifacts:config=config/crd/bases
	$(TOOL) controller-gen crd paths=./apis/rrguard/... output:crd:artifacts:config=config/crd/policies
	@mkdir -p charts/rrguard/crds
	@# The chart's copy carries the labels config/default gives it (test/helm holds the two equal).
	sed 's/^metadata:$$/metadata:\n  labels:\n    app.kubernetes.io\/name: rrguard\n    app.kubernetes.io\/part-of: rrguard/' \
	  config/crd/policies/rrguard.kubernaut.ai_uniquenesspolicies.yaml > charts/rrguard/crds/rrguard.kubernaut.ai_uniquenesspolicies.yaml

.PHONY: testbin controlplane
testbin: controlplane $(TESTBIN)/kube-controller-manager ## Build kube-apiserver, kube-controller-manager and etcd of K8S_VERSION (default the newest) into the per-user cache (once).

# controlplane is what make run, the demo and the benchmarks start: no controller manager.
controlplane: $(TESTBIN)/kube-apiserver $(TESTBIN)/etcd

$(TESTBIN)/kube-apiserver:
	@test -f test/tools/testbin/kube-apiserver/$(K8S_VERSION)/go.mod || { echo "K8S_VERSION=$(K8S_VERSION): not one of $(K8S_VERSIONS) (test/tools/testbin/gen.sh adds a release)"; exit 1; }
	@echo "building kube-apiserver v$(K8S_VERSION) into $(TESTBIN) (about 10 minutes the first time)"
	@mkdir -p $(TESTBIN)
	cd test/tools/testbin/kube-apiserver/$(K8S_VERSION) && go build -trimpath -ldflags='-s -w $(KUBE_VERSION_LDFLAGS)' -o $@.tmp k8s.io/kubernetes/cmd/kube-apiserver
	mv $@.tmp $@

# kube-controller-manager from the same module: the tests that claim what a controller does (a held
# Job makes no Pod) run the real one, with only the controllers they need.
$(TESTBIN)/kube-controller-manager:
	@test -f test/tools/testbin/kube-apiserver/$(K8S_VERSION)/go.mod || { echo "K8S_VERSION=$(K8S_VERSION): not one of $(K8S_VERSIONS)"; exit 1; }
	@echo "building kube-controller-manager v$(K8S_VERSION) into $(TESTBIN) (a few minutes the first time)"
	@mkdir -p $(TESTBIN)
	cd test/tools/testbin/kube-apiserver/$(K8S_VERSION) && go build -trimpath -ldflags='-s -w $(KUBE_VERSION_LDFLAGS)' -o $@.tmp k8s.io/kubernetes/cmd/kube-controller-manager
	mv $@.tmp $@

# etcd is built once per etcd version (1.32 and 1.33 ship the same) and linked into each folder.
$(TESTBIN)/etcd: $(ETCD_DIR)/etcd
	@mkdir -p $(TESTBIN)
	ln -f $< $@

$(TESTBIN_ROOT)/etcd-%/etcd:
	@mkdir -p $(@D)
	cd test/tools/testbin/etcd/$* && go build -trimpath -ldflags='-s -w' -o $@.tmp .
	mv $@.tmp $@

# Tekton Pipelines' controller, from source at the release test/tekton/go.mod pins (a module of
# its own), for test/integration/tekton: what Tekton does with a held, released or cancelled run.
.PHONY: tekton-controller
tekton-controller: bin/tekton-controller ## Build Tekton Pipelines' controller (the pinned release) for the tests that run it (once; a few minutes the first time).
bin/tekton-controller: test/tekton/go.mod test/tekton/go.sum
	@mkdir -p bin
	cd test/tekton && go build -trimpath -o ../../$@.tmp github.com/tektoncd/pipeline/cmd/controller
	mv $@.tmp $@

.PHONY: lint
lint: ## gofmt, go vet and staticcheck.
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	  if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	go vet ./...
	$(TOOL) staticcheck ./...

FUZZ_TARGETS := FuzzAdmissionHTTP FuzzDecide
FUZZTIME     ?= 5m
# make test fuzzes for a count of inputs, not a duration: go1.26's coordinator can report its own
# -fuzztime deadline as a failure on a busy machine (golang/go#75804, fixed in go1.27); a count sets
# no deadline.
TEST_FUZZ_EXECS ?= 10000x

# The suites make test runs on the oldest release too: those that exercise what differs between
# releases (selectable fields and the scan fallback, ValidatingAdmissionPolicy, MutatingAdmissionPolicy,
# server-side apply's create path, watch-list and the RR index, CRD validation, the chart's
# kubeVersion with Helm 4 and 3), and policies for other resources (label-selector reads, a built-in
# kind's status rules), the real Job controller's suspend, and the Queue and Replace modes.
OLDEST_SUITES ?= webhook,crd,kubernaut,marks,policies,nokubernaut,jobs,queue,helm,helm3

.PHONY: test
test: lint ## Every test: static checks, unit tests, integration tests on the newest API server (and the version-dependent ones on the oldest), alerts, the Helm chart with Helm 4 and 3, a short fuzz.
	@$(MAKE) --no-print-directory testbin K8S_VERSION=$(K8S_NEWEST)
	@$(MAKE) --no-print-directory testbin K8S_VERSION=$(K8S_OLDEST)
	@$(MAKE) --no-print-directory tekton-controller
	go test $(GO_TEST_FLAGS) -count=1 -timeout 30m ./...
	cd test/alerts && go vet ./... && go test -count=1 ./...
	cd test/helm && go vet ./... && go test -count=1 -timeout 15m ./...
	cd test/helm3 && go vet ./... && go test -count=1 -timeout 15m ./...
	go run ./test/matrix -testbin-root $(TESTBIN_ROOT) -versions $(K8S_OLDEST) -suites $(OLDEST_SUITES)
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZ_EXECS)

.PHONY: test-k8s
test-k8s: lint ## Every suite that talks to an API server, on each release of K8S_VERSIONS in turn (builds what is missing); a table of release x suite.
	@for v in $(K8S_VERSIONS); do $(MAKE) --no-print-directory testbin K8S_VERSION=$$v; done
	@$(MAKE) --no-print-directory tekton-controller
	go run ./test/matrix -testbin-root $(TESTBIN_ROOT) -versions "$(K8S_VERSIONS)" $(if $(SUITES),-suites $(SUITES))

.PHONY: storm
storm: controlplane ## The storm tests at full length: the completion storm runs a minute (`make test` runs 10 s).
	RRGUARD_STORM_DURATION=$(or $(STORM_DURATION),60s) go test -count=1 -v -timeout 30m ./test/integration/storm/

.PHONY: test-queue
test-queue: testbin ## The Queue and Replace suite at full length: all 64 queued Jobs run to completion one after another (`make test` runs 8).
	RRGUARD_QUEUE_RUNS=64 go test -count=1 -v -timeout 30m ./test/integration/queue/

.PHONY: fuzz
fuzz: ## Fuzz the admission handlers and the decision (FUZZTIME each, default 5m).
	@for t in $(FUZZ_TARGETS); do echo "fuzz $$t ($(FUZZTIME))"; go test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) ./webhook/ || exit 1; done

.PHONY: run
run: controlplane ## Local control plane + CRD + webhooks + rrguard in the foreground (Ctrl-C stops all).
	go build -o bin/rrguard-local ./cmd/rrguard-local
	bin/rrguard-local

.PHONY: demo
demo: controlplane ## `make run`, then the GW-DEDUP-002 storm (5, then 100 simultaneous creates), then exit.
	go build -o bin/rrguard-local ./cmd/rrguard-local
	bin/rrguard-local --demo

.PHONY: bench
bench: controlplane ## Benchmarks against a no-webhook baseline (about 50 min: each rrguard row waits for its release); writes bin/bench/results.json and docs/benchmarks.md.
	go run ./test/bench $(BENCH_FLAGS)

.PHONY: bench-quick
bench-quick: controlplane ## The short benchmark (about 6 minutes): one size, shorter rows; writes docs/benchmarks.md too.
	go run ./test/bench -quick $(BENCH_FLAGS)

.PHONY: bench-policy
bench-policy: controlplane ## A generic target: PipelineRuns under the Tekton sample policy against no webhook and the bare webhook, beside RRs (CPU per create); rrguard's heap per PipelineRun at 100k and a restart with them.
	go run ./test/bench -policy $(BENCH_POLICY_FLAGS)

.PHONY: bench-marks
bench-marks: controlplane ## Names for life at scale: creates with 100k high-water marks against none, interleaved; marks' bytes and objects.
	go run ./test/bench/marks $(BENCH_MARKS_FLAGS)

.PHONY: bench-deletions
bench-deletions: controlplane ## Deleting RRs: past the hold with rrguard up and down, and held, against no rrguard, interleaved.
	go run ./test/bench/deletions $(BENCH_DELETIONS_FLAGS)

.PHONY: bench-reads
bench-reads: controlplane ## A consistent read of one fingerprint at 10k RRs: by field selector, and by the namespace scan a CRD without the selectable field gets.
	go run ./test/bench/reads $(BENCH_READS_FLAGS)

.PHONY: build
build: ## Build bin/rrguard.
	CGO_ENABLED=0 go build -trimpath -o bin/rrguard ./cmd/rrguard

.PHONY: deploy
deploy: ## Deploy config/default to the current kubectl context with image IMG (tag, digest, registry port: all fine; needs cert-manager).
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; cp -r config $$tmp/; \
	  sh config/manager/set-image.sh '$(IMG)' $$tmp/config/manager/kustomization.yaml && \
	  kubectl apply --server-side -k $$tmp/config/default

.PHONY: undeploy
undeploy: ## Remove what `make deploy` installed; first release every RR from rrguard's finalizer.
	go run ./cmd/rrguard release --marks-namespace rrguard-system
	kubectl delete --ignore-not-found -k config/default
