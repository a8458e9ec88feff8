# syntax=docker/dockerfile:1
# The todo-list sample apps (samples/README.md): sample-myapp, sample-user, sample-todo in one
# image; manifests/samples/kubernetes/todolist.yaml picks one per Deployment by `command`.
#   docker build -f docker/samples.Dockerfile -t ghcr.io/mast-mesh/samples:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=mast-target \
    cargo build --release --locked -p mast-samples \
        --bin sample-myapp --bin sample-user --bin sample-todo \
    && mkdir -p /out \
    && cp target/release/sample-myapp target/release/sample-user target/release/sample-todo /out/

FROM debian:bookworm-slim
COPY --from=build /out/sample-myapp /out/sample-user /out/sample-todo /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sample-myapp"]
