# Multi-stage build of the msgxc binary; the runtime image holds only the binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin msgxc

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /var/lib/msgxc msgxc \
    && mkdir -p /var/lib/msgxc && chown msgxc /var/lib/msgxc
COPY --from=build /src/target/release/msgxc /usr/local/bin/msgxc
USER msgxc
ENV MSGXC_DATA_DIR=/var/lib/msgxc MSGXC_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["msgxc"]
CMD ["serve"]
