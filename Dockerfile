# numgen: multi-stage build, small non-root runtime image.
#   docker build -t numgen .
#   docker run -p 8080:8080 -e NUMGEN_ADMIN_TOKEN=... numgen
# Inside the container numgen listens on 0.0.0.0:8080 (NUMGEN_LISTEN); standalone data
# lives in /var/lib/numgen (mount a volume there), cluster mode needs NUMGEN_ETCD_ENDPOINTS.

FROM rust:1.95-slim-bookworm AS build
# protoc: the etcd client's gRPC code is generated at build time.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin numgen \
    && strip target/release/numgen

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 numgen \
    && useradd --system --uid 10001 --gid numgen --home-dir /var/lib/numgen numgen \
    && mkdir -p /var/lib/numgen \
    && chown numgen:numgen /var/lib/numgen
COPY --from=build /src/target/release/numgen /usr/local/bin/numgen
USER 10001:10001
WORKDIR /var/lib/numgen
ENV NUMGEN_LISTEN=0.0.0.0:8080 \
    NUMGEN_DATA_DIR=/var/lib/numgen \
    NUMGEN_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/numgen", "health"]
ENTRYPOINT ["/usr/local/bin/numgen"]
CMD ["serve"]
