# Build: a static binary (no cgo), paths trimmed.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY apis/ apis/
COPY cmd/rrguard/ cmd/rrguard/
COPY webhook/ webhook/
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags='-s -w' -o /out/rrguard ./cmd/rrguard

# Run: distroless static, as the nonroot user.
FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/rrguard /rrguard
USER 65532:65532
ENTRYPOINT ["/rrguard"]
