# The router as a container image: a static (musl) binary on an empty base,
# run as a non-root user, no shell. Build: `docker build -t switchyard .`
# (deploy/container/check tests the same filesystem without a container tool).

# Build stage: the toolchain rust-toolchain.toml pins.
FROM rust:1.95-bookworm AS build
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN rustup target add x86_64-unknown-linux-musl wasm32-wasip2 \
 && cargo build --release --locked -p switchyard --bin switchyard --target x86_64-unknown-linux-musl \
 && deploy/container/rootfs target/x86_64-unknown-linux-musl/release/switchyard /rootfs

# Shipped stage: nothing but the router (under 20 MB) and its symbols.
FROM scratch
COPY --from=build /rootfs/ /
# COPY makes files root's; the cache is the runtime user's.
COPY --from=build --chown=65532:65532 /rootfs/cache /cache
USER 65532:65532
# Compiled policies are cached here: mount a volume (an emptyDir) on it; the
# root filesystem can be read-only.
ENV XDG_CACHE_HOME=/cache
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s CMD ["/switchyard", "probe", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/switchyard"]
# The embedded default (offline, mock backends); mount a configuration at
# /etc/switchyard/switchyard.toml and run `serve --config /etc/switchyard/switchyard.toml`.
CMD ["serve", "--listen", "0.0.0.0:8080"]
