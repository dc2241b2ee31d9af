# fluidity-server: a static musl binary on an empty (scratch) base.
#
#   docker build -f deploy/docker/server.Dockerfile -t fluidity-server .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.
# Run it from the repository root (the whole workspace is the build context; .dockerignore
# keeps target/ and .git out). The image is built for the architecture of the Docker host
# (or of --platform): the ECS template's CpuArchitecture (ARM64 by default) must match.
# docs/deployment.md has the ECR push commands.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-alpine AS build
# musl-dev and gcc: the C parts of aws-lc-sys. cmake, make and perl are not needed
# by recent aws-lc-sys on x86_64/aarch64 musl, but cost nothing in the builder and cover older
# versions. ca-certificates: the bundle copied into the image below.
RUN apk add --no-cache musl-dev gcc make cmake perl ca-certificates
WORKDIR /src
COPY . .
# The workspace [profile.release] already has no debug info and strips symbols; the image
# build adds fat LTO and one codegen unit (slower to build, a little smaller and faster).
# musl targets link statically by default.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p fluidity-server \
        --config profile.release.lto=true \
        --config profile.release.codegen-units=1 \
    && mkdir -p /out/tmp \
    && cp target/release/fluidity-server /out/fluidity-server \
    && chmod 1777 /out/tmp \
    && if readelf -l /out/fluidity-server | grep -q INTERP; then \
           echo "fluidity-server is dynamically linked; FROM scratch needs a static binary" >&2; \
           exit 1; \
       fi

FROM scratch
# Targets are verified against the Mozilla roots built into the binary (webpki-roots). The
# system bundle (about 200 KB) is for any client that reads the platform's roots instead,
# such as an AWS SDK HTTPS client.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# A writable /tmp for the certificate cache (the ECS template sets FLUIDITY_CACHE_DIR=/tmp/fluidity).
COPY --from=build --chown=65532:65532 /out/tmp /tmp
COPY --from=build /out/fluidity-server /usr/local/bin/fluidity-server
# HOME=/tmp: default cache locations ($HOME/.cache) are writable. FLUIDITY_CACHE_DIR is left
# to the deployment (the ECS template sets it) so that a --config file's cache_dir still wins.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    HOME=/tmp
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/fluidity-server"]
