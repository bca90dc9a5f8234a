#!/usr/bin/env python3
"""A TCP proxy in front of Tansu that rewrites one reply for Debian's librdkafka 2.0.2.

Tansu answers ApiVersions v3 with the top-level tagged fields (supported/finalized features) filled in;
librdkafka before 2.1.2 mis-parses them ("Read underflow: probably due to broker version < 0.10") and drops
the connection. This proxy forwards every byte unchanged except the body of an ApiVersions (key 18,
version >= 3) reply, whose tagged fields it empties (the features are optional and librdkafka ignores them).

    apiversions-proxy.py LISTEN_HOST:PORT UPSTREAM_HOST:PORT     # serve
    apiversions-proxy.py --check HOST:PORT                       # one ApiVersions round trip, exit 0 if ok
"""

import socket
import struct
import sys
import threading

API_VERSIONS = 18


def read_exact(sock, n):
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def read_frame(sock):
    (size,) = struct.unpack(">i", read_exact(sock, 4))
    return read_exact(sock, size)


def uvarint(buf, pos):
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def skip_tags(buf, pos):
    count, pos = uvarint(buf, pos)
    for _ in range(count):
        _, pos = uvarint(buf, pos)
        size, pos = uvarint(buf, pos)
        pos += size
    return pos


def rewrite_api_versions(frame):
    """correlation id, error code, compact array of (key, min, max, tags), throttle, tags -> empty tags."""
    pos = 4 + 2
    count, pos = uvarint(frame, pos)
    out = bytearray(frame[:pos])
    for _ in range(max(count - 1, 0)):
        out += frame[pos : pos + 6]
        pos = skip_tags(frame, pos + 6)
        out += b"\x00"
    out += frame[pos : pos + 4]  # throttle_time_ms
    pos = skip_tags(frame, pos + 4)
    return bytes(out) + b"\x00" + frame[pos:]


def shut_down(*sockets):
    """Ends both directions of a proxied connection once either side is done."""
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def pump_requests(client, upstream, pending, lock):
    try:
        while True:
            frame = read_frame(client)
            key, version, correlation = struct.unpack(">hhi", frame[:8])
            if key == API_VERSIONS and version >= 3:
                with lock:
                    pending.add(correlation)
            upstream.sendall(struct.pack(">i", len(frame)) + frame)
    except (EOFError, OSError, struct.error):
        pass
    finally:
        shut_down(client, upstream)


def pump_replies(upstream, client, pending, lock):
    try:
        while True:
            frame = read_frame(upstream)
            (correlation,) = struct.unpack(">i", frame[:4])
            with lock:
                rewrite = correlation in pending
                pending.discard(correlation)
            if rewrite:
                try:
                    frame = rewrite_api_versions(frame)
                except IndexError:
                    pass  # not the shape we know (e.g. an error reply in v0 form): forward as is
            client.sendall(struct.pack(">i", len(frame)) + frame)
    except (EOFError, OSError, struct.error):
        pass
    finally:
        shut_down(client, upstream)


def serve(listen, upstream_address):
    host, port = listen.rsplit(":", 1)
    up_host, up_port = upstream_address.rsplit(":", 1)
    server = socket.create_server((host, int(port)), reuse_port=False)
    print(f"apiversions-proxy: {listen} -> {upstream_address}", flush=True)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((up_host, int(up_port)), timeout=10)
            upstream.settimeout(None)
        except OSError as error:
            print(f"apiversions-proxy: upstream {upstream_address}: {error}", flush=True)
            client.close()
            continue
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending, lock = set(), threading.Lock()
        threading.Thread(target=pump_requests, args=(client, upstream, pending, lock), daemon=True).start()
        threading.Thread(target=pump_replies, args=(upstream, client, pending, lock), daemon=True).start()


def check(address):
    """ApiVersions v3 through the proxy: the reply must parse the way librdkafka 2.0.2 reads it."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        client_id = b"saga-health"
        body = struct.pack(">hhih", API_VERSIONS, 3, 7, len(client_id)) + client_id + b"\x00"
        body += b"\x05saga" + b"\x021" + b"\x00"  # client software name and version (compact), no tags
        sock.sendall(struct.pack(">i", len(body)) + body)
        frame = read_frame(sock)
    correlation, error = struct.unpack(">ih", frame[:6])
    count, pos = uvarint(frame, 6)
    pos += (count - 1) * 7  # key, min, max, one empty tag buffer each
    ok = correlation == 7 and error == 0 and count > 1 and frame[pos + 4 :] == b"\x00"
    print(f"{address}: ApiVersions v3 {'ok' if ok else 'unexpected reply'}, {count - 1} APIs")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2]))
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    serve(sys.argv[1], sys.argv[2])
