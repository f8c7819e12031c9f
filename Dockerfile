# Build: docker build -t imager --build-arg VERSION=$(git describe --always) .
# Run:   docker run --rm -e DATABASE_URL=... -e TENCENTCLOUD_SECRET_ID=... -e TENCENTCLOUD_SECRET_KEY=... \
#          -v "$PWD/policies:/etc/imager/policies:ro" -p 9090:9090 imager
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
# Static binary; timetzdata embeds the IANA zone database so policy time zones work on any base image.
RUN CGO_ENABLED=0 go build -trimpath -tags timetzdata \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/imager ./cmd/imager \
 && mkdir -p /out/spool

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/imager /usr/local/bin/imager
# The spool keeps outcomes while PostgreSQL is away; mount a volume here to keep it across restarts.
COPY --from=build --chown=nonroot:nonroot /out/spool /var/lib/imager/spool
ENV IMAGER_POLICIES=/etc/imager/policies \
    IMAGER_SPOOL_DIR=/var/lib/imager/spool
# Policies are mounted read-only at /etc/imager/policies; SIGHUP (docker kill -s HUP) reloads them.
VOLUME ["/var/lib/imager/spool"]
USER nonroot:nonroot
STOPSIGNAL SIGTERM
# Prometheus /metrics, /healthz (liveness) and /readyz (readiness) on --listen.
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/imager"]
CMD ["run", "--listen=:9090", "--log-format=json"]
