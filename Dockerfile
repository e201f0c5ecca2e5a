# The Concordance node, for users with Docker (from the repository root):
#   docker build --build-arg REVISION=$(git rev-parse HEAD) -t concordance:0.1.0 .
# Without Docker, `images/build` builds this image (and the operator's) reproducibly as an OCI
# archive. Both stage the same files with images/rootfs (the stripped binary, exactly the
# shared libraries it needs, CA certificates, user and group 10001, /data owned by them) and
# state the same facts below the last FROM (user, entry point, environment, port, volume,
# labels): images/test compares them with the built image's config.
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p concordance --bin concordance \
    && images/rootfs concordance target/release/concordance /image

FROM scratch
ARG REVISION=unknown
COPY --from=build /image/runtime/ /
COPY --from=build --chown=10001:10001 /image/data/ /
COPY --from=build /image/app/ /
USER 10001:10001
VOLUME /data
EXPOSE 4100
ENV PATH=/usr/local/bin:/usr/bin:/bin
ENV CONCORDANCE_LISTEN=0.0.0.0:4100
ENV CONCORDANCE_DATA_DIR=/data
LABEL org.opencontainers.image.title="concordance"
LABEL org.opencontainers.image.description="Raft-replicated coordination store: keys with revisions, leases, locks, watches"
LABEL org.opencontainers.image.version="0.1.0"
LABEL org.opencontainers.image.revision="$REVISION"
LABEL org.opencontainers.image.source="https://github.com/concordance/concordance"
LABEL org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/concordance"]
