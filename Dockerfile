# The Concordance node: `docker build -t concordance:0.1.0 .`
# (The operator: `docker build -f operator/Dockerfile -t concordance-operator:0.1.0 .`)
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p concordance

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data concordance \
    && mkdir /data && chown concordance /data
COPY --from=build /src/target/release/concordance /usr/local/bin/concordance
USER 10001
VOLUME /data
EXPOSE 4100
ENV CONCORDANCE_LISTEN=0.0.0.0:4100 CONCORDANCE_DATA_DIR=/data
ENTRYPOINT ["/usr/local/bin/concordance"]
