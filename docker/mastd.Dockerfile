# syntax=docker/dockerfile:1
# mastd: the control plane (pilot, citadel, injector, telemetry) with the topology view's
# built web assets. Build from the repository root:
#   docker build -f docker/mastd.Dockerfile -t ghcr.io/mast-mesh/mastd:0.1.0 .
# manifests/install/mast.yaml runs it as UID 1337 with a read-only root filesystem.

# The topology view (telemetry/web): esbuild bundle into dist/, as scripts/test.sh builds it.
FROM node:22-bookworm-slim AS web
WORKDIR /src/telemetry/web
COPY telemetry/web/package.json telemetry/web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY telemetry/web/ ./
RUN npm run --silent build

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target/ between builds of the three images.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=mast-target \
    cargo build --release --locked -p mastd --bin mastd \
    && mkdir -p /out && cp target/release/mastd /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1337 mastd \
    && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin mastd
COPY --from=build /out/mastd /usr/local/bin/mastd
COPY --from=web /src/telemetry/web/dist /usr/share/mast/web
ENV MAST_WEB_DIR=/usr/share/mast/web
USER 1337:1337
EXPOSE 15010 15012 15014 15017 20001
ENTRYPOINT ["/usr/local/bin/mastd"]
