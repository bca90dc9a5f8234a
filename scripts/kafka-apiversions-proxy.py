#!/usr/bin/env python3
"""A loopback TCP proxy in front of a Kafka-protocol broker that rewrites one reply.

librdkafka before 2.1 (Debian's 2.0.2) cannot read the top-level tagged fields of an ApiVersions v3+
reply: Tansu sends the KIP-584 feature fields with their default values (no supported features,
finalized epoch -1, no finalized features, not ready for migration) and librdkafka drops the connection
("Read underflow: probably due to broker version < 0.10"). The proxy replaces that tagged-field section
with an empty one, which is what a reply without those fields looks like; every other byte passes
through unchanged. Turning off `api.version.request` instead would leave librdkafka with its 0.10
feature set: no idempotent producer, which the engine requires.

Usage: kafka-apiversions-proxy.py LISTEN_PORT BROKER_PORT   (both on 127.0.0.1)
"""

import asyncio
import struct
import sys

API_VERSIONS = 18
HOST = "127.0.0.1"


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    """An unsigned varint at `at`: (value, next position)."""
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def skip_tags(data: bytes, at: int) -> int:
    count, at = read_varint(data, at)
    for _ in range(count):
        _, at = read_varint(data, at)  # tag
        size, at = read_varint(data, at)
        at += size
    return at


def rewrite_api_versions(frame: bytes) -> bytes:
    """An ApiVersions v3+ response (correlation id first) without its top-level tagged fields."""
    at = 4 + 2  # correlation id, error code
    count, at = read_varint(frame, at)
    for _ in range(max(count - 1, 0)):
        at += 6  # api key, min version, max version
        at = skip_tags(frame, at)
    at += 4  # throttle time
    end = skip_tags(frame, at)
    if end != len(frame):
        return frame  # not the layout we know: pass it on untouched
    return frame[:at] + b"\x00"


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    try:
        size = struct.unpack(">i", await reader.readexactly(4))[0]
        return await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def pipe_requests(client, broker, pending: set[int]) -> None:
    while (frame := await read_frame(client)) is not None:
        key, version, correlation = struct.unpack(">hhi", frame[:8])
        if key == API_VERSIONS and version >= 3:
            pending.add(correlation)
        broker.write(struct.pack(">i", len(frame)) + frame)
        await broker.drain()


async def pipe_responses(broker, client, pending: set[int]) -> None:
    while (frame := await read_frame(broker)) is not None:
        correlation = struct.unpack(">i", frame[:4])[0]
        if correlation in pending:
            pending.discard(correlation)
            try:
                frame = rewrite_api_versions(frame)
            except IndexError:
                pass
        client.write(struct.pack(">i", len(frame)) + frame)
        await client.drain()


async def serve(client_reader, client_writer, broker_port: int) -> None:
    try:
        broker_reader, broker_writer = await asyncio.open_connection(HOST, broker_port)
    except OSError:
        client_writer.close()
        return
    pending: set[int] = set()
    tasks = [
        asyncio.create_task(pipe_requests(client_reader, broker_writer, pending)),
        asyncio.create_task(pipe_responses(broker_reader, client_writer, pending)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for writer in (client_writer, broker_writer):
            writer.close()


async def main(listen_port: int, broker_port: int) -> None:
    server = await asyncio.start_server(lambda r, w: serve(r, w, broker_port), HOST, listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
    except KeyboardInterrupt:
        pass
