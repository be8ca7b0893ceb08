# Build: a static binary (no cgo), paths trimmed, for the platform asked for (docker buildx
# --platform linux/amd64,linux/arm64), compiled on the builder's own platform.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS=linux
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
# Every package cmd/rrguard imports (test/integration/deploy checks this list against go list).
COPY apis/ apis/
COPY cmd/rrguard/ cmd/rrguard/
COPY config/policies/ config/policies/
COPY internal/audit/ internal/audit/
COPY internal/decision/ internal/decision/
COPY internal/jsonproject/ internal/jsonproject/
COPY internal/marks/ internal/marks/
COPY internal/policy/ internal/policy/
COPY internal/queue/ internal/queue/
COPY internal/rrfacts/ internal/rrfacts/
COPY internal/rules/ internal/rules/
COPY kubernaut/cluster/ kubernaut/cluster/
COPY webhook/ webhook/
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags='-s -w' -o /out/rrguard ./cmd/rrguard

# Run: distroless static, as the nonroot user.
FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/rrguard /rrguard
USER 65532:65532
ENTRYPOINT ["/rrguard"]
