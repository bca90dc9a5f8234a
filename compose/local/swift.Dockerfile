# swift:6.3-bookworm without a registry: the Debian packages the official image installs, this machine's
# Swift toolchain (/opt/swift/usr, merged into /usr as the official image does) and its Swift package mirror
# (/opt/swift-packages), with git pointed at the mirror so that `swift build` in compose/Dockerfile resolves
# Package.swift's GitHub URLs without a network. Built by scripts/containers with /opt as the context.
FROM debian:bookworm-slim
RUN export DEBIAN_FRONTEND=noninteractive \
    && apt-get -q update \
    && apt-get -q install -y --no-install-recommends \
        binutils git gnupg2 libc6-dev libcurl4-openssl-dev libedit2 libgcc-12-dev libpython3-dev \
        libsqlite3-0 libstdc++-12-dev libxml2-dev libncurses-dev libz3-dev pkg-config tzdata zlib1g-dev \
        ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY swift/usr/ /usr/
COPY swift-packages/ /opt/swift-packages/
RUN git config --system url./opt/swift-packages/.insteadOf https://github.com/ \
    && git config --system --add safe.directory '*' \
    && swift --version
