#!/bin/bash
# Stand-in for Apache Kafka's kafka-topics.sh, for the two calls compose/docker-compose.yml makes:
#   --bootstrap-server HOST:PORT --list                     (kafka's health check)
#   --bootstrap-server HOST:PORT --create --if-not-exists --topic T --partitions N --replication-factor 1
set -euo pipefail
op= bootstrap= topic= partitions=1
while [ $# -gt 0 ]; do
    case $1 in
        --bootstrap-server) bootstrap=$2; shift 2 ;;
        --list) op=list; shift ;;
        --create) op=create; shift ;;
        --if-not-exists) shift ;;
        --topic) topic=$2; shift 2 ;;
        --partitions) partitions=$2; shift 2 ;;
        --replication-factor) [ "$2" = 1 ] || { echo "only one replica here" >&2; exit 2; }; shift 2 ;;
        *) echo "kafka-topics.sh stand-in: unsupported argument $1" >&2; exit 2 ;;
    esac
done
case $op in
    list)
        # The published port answers ApiVersions the way librdkafka reads it, and Tansu lists its topics.
        apiversions-proxy --check "$bootstrap" >/dev/null
        exec tansu topic list --broker "tcp://$bootstrap" ;;
    create)
        if tansu topic list --broker "tcp://$bootstrap" | grep -q "\"$topic\""; then
            echo "topic $topic exists"
            exit 0
        fi
        tansu topic create "$topic" --broker "tcp://$bootstrap" --partitions "$partitions"
        echo "created topic $topic ($partitions partitions)" ;;
    *) echo "kafka-topics.sh stand-in: --list or --create" >&2; exit 2 ;;
esac
