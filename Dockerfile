# syntax=docker/dockerfile:1
#
# walhook: a static binary on a distroless base (CA certificates and tzdata
# included, no shell), running as a non-root user.
#
#   docker build -t walhook .
#   docker run -v $PWD/walhook.yaml:/etc/walhook/walhook.yaml -p 7376:7376 walhook

FROM golang:1.26 AS build
WORKDIR /src
# Modules first: the download layer is reused until go.mod/go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/walhook ./cmd/walhook

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/walhook /usr/local/bin/walhook
USER nonroot:nonroot
EXPOSE 7376
ENTRYPOINT ["/usr/local/bin/walhook"]
CMD ["run", "-c", "/etc/walhook/walhook.yaml"]
