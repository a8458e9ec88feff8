# syntax=docker/dockerfile:1
# mast-proxy: the sidecar image the injector names (mastd's MAST_PROXY_IMAGE). Build from the
# repository root:
#   docker build -f docker/proxy.Dockerfile -t ghcr.io/mast-mesh/mast-proxy:0.1.0 .
#
# Istio's injected pod spec gives this image only `args`, written for Istio's proxyv2 image
# whose entrypoint is pilot-agent:
#   istio-init:   pilot-agent istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT …  (as root)
#   istio-proxy:  pilot-agent proxy sidecar --domain $(POD_NAMESPACE).svc.cluster.local …
#   hooks:        pilot-agent request --debug-port=15020 POST drain;  pilot-agent wait
# So the entrypoint is /usr/local/bin/pilot-agent, a symlink to mast-proxy, which answers all
# of these; `istio-iptables` hands over to mast-init beside it, which programs iptables (the
# nf_tables variants from Debian's iptables package when the kernel has them).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# mast-proxy with the `sidecar` profile (root Cargo.toml: fat LTO, one codegen unit, panic =
# abort, no debug info): the binary every pod maps, 14 MB instead of 111, and about 3 MB less
# resident per sidecar (bench/README.md, "Sidecar memory"). mast-init runs once per pod: release.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=mast-target \
    cargo build --profile sidecar --locked -p mast-proxy --bin mast-proxy \
    && cargo build --release --locked -p mast-injector --bin mast-init \
    && mkdir -p /out && cp target/sidecar/mast-proxy target/release/mast-init /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1337 istio-proxy \
    && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin istio-proxy
COPY --from=build /out/mast-proxy /out/mast-init /usr/local/bin/
RUN ln -s mast-proxy /usr/local/bin/pilot-agent
# The sidecar runs as 1337 (iptables lets that UID's traffic out uncaptured); istio-init's
# securityContext runs it as root with NET_ADMIN/NET_RAW.
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/pilot-agent"]
