#!/bin/bash
# Tansu on 127.0.0.1:9093 (memory storage) behind apiversions-proxy on :9092; the container ends when
# either ends. Advertised address: KAFKA_ADVERTISED_LISTENERS' host (kafka:9092 in compose).
set -uo pipefail
advertised=${KAFKA_ADVERTISED_LISTENERS:-PLAINTEXT://localhost:9092}
advertised=${advertised#*://}
tansu broker --silent --cluster-id "${CLUSTER_ID:-saga}" --listener-url tcp://127.0.0.1:9093 \
    --advertised-listener-url "tcp://$advertised" --storage-engine memory://tansu/ &
broker=$!
apiversions-proxy 0.0.0.0:9092 127.0.0.1:9093 &
proxy=$!
trap 'kill $broker $proxy 2>/dev/null; wait; exit 0' TERM INT
wait -n
echo "kafka-entrypoint: tansu or the proxy stopped" >&2
kill $broker $proxy 2>/dev/null
exit 1
