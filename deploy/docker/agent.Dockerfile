# fluidity-agent: a static musl binary on an empty (scratch) base.
#
#   docker build -f deploy/docker/agent.Dockerfile -t fluidity-agent .
#   docker run --rm -p 127.0.0.1:8080:8080 \
#       -v "$PWD/agent.yaml:/etc/fluidity/agent.yaml:ro" \
#       -v "$PWD/ca.crt:/etc/fluidity/ca.crt:ro" \
#       -v "$HOME/.aws:/home/fluidity/.aws:ro" \
#       fluidity-agent --config /etc/fluidity/agent.yaml
#
# Inside a container the proxy has to listen on 0.0.0.0 (set below through
# FLUIDITY_LOCAL_PROXY_ADDR), or Docker's port forwarding cannot reach it. That is only safe
# when the port is published on the host's loopback, as `-p 127.0.0.1:8080:8080` does:
# `-p 8080:8080` would open the proxy to your whole network. If you must publish it more
# widely, set proxy_auth. Paths inside agent.yaml (ca_cert_file, cache_dir) are paths in the
# container.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-alpine AS build
# See server.Dockerfile for why each package is here.
RUN apk add --no-cache musl-dev gcc make cmake perl ca-certificates
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p fluidity-agent \
        --config profile.release.lto=true \
        --config profile.release.codegen-units=1 \
    && mkdir -p /out/tmp /out/home/.aws \
    && cp target/release/fluidity-agent /out/fluidity-agent \
    && chmod 1777 /out/tmp \
    && if readelf -l /out/fluidity-agent | grep -q INTERP; then \
           echo "fluidity-agent is dynamically linked; FROM scratch needs a static binary" >&2; \
           exit 1; \
       fi

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build --chown=65532:65532 /out/tmp /tmp
# HOME for the AWS credential chain (~/.aws/config and ~/.aws/credentials).
COPY --from=build --chown=65532:65532 /out/home /home/fluidity
COPY --from=build /out/fluidity-agent /usr/local/bin/fluidity-agent
# Environment variables override the --config file: FLUIDITY_LOCAL_PROXY_ADDR is set because
# a container needs it; cache_dir is left to agent.yaml (use a path in /tmp, e.g.
# /tmp/fluidity, or a mounted volume to keep the agent certificate across runs).
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    HOME=/home/fluidity \
    FLUIDITY_LOCAL_PROXY_ADDR=0.0.0.0
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/fluidity-agent"]
