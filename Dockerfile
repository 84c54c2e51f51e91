# Build stage: compile the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY actors ./actors
COPY src ./src
COPY benches ./benches
COPY testkit ./testkit
COPY migrations ./migrations
RUN cargo build --release --locked --bin stockline

# Runtime stage: the binary alone on a slim base, as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 stockline
COPY --from=build /src/target/release/stockline /usr/local/bin/stockline
USER stockline
ENV STOCKLINE_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["stockline"]
CMD ["serve"]
