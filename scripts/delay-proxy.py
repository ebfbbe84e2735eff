#!/usr/bin/env python3
"""A TCP proxy that adds a delay each way, for putting a WAN between numgen and etcd in
benchmarks (scripts/bench-wan.sh). The tests have their own, tests/common/proxy.rs.

    delay-proxy.py --upstream 127.0.0.1:2379 --delay-file F --port-file P

Listens on 127.0.0.1 (a free port, written to the port file once listening) and forwards
every connection to the upstream. Each chunk read is written to the other side DELAY ms
after it was read, in order, without holding back the chunks behind it (a pipe with a
latency, not a slower pipe). DELAY is the number in the delay file (milliseconds, each
way; 0 when missing), read again every 100 ms, so a run can change it without dropping
connections. Standard library only.
"""

import argparse
import asyncio
import os
import time

DELAY_S = 0.0


async def watch_delay(path):
    global DELAY_S
    while True:
        try:
            with open(path) as f:
                DELAY_S = max(0.0, float(f.read().strip() or 0)) / 1000.0
        except (OSError, ValueError):
            DELAY_S = 0.0
        await asyncio.sleep(0.1)


async def pump(reader, writer):
    """Copies reader to writer, each chunk DELAY_S after it was read."""
    queue = asyncio.Queue()

    async def read():
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((time.monotonic() + DELAY_S, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            queue.put_nowait((time.monotonic(), b""))

    async def write():
        try:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    await asyncio.gather(read(), write())


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--delay-file", required=True)
    ap.add_argument("--port-file", required=True)
    args = ap.parse_args()
    host, port = args.upstream.rsplit(":", 1)

    async def handle(client_r, client_w):
        try:
            up_r, up_w = await asyncio.open_connection(host, int(port))
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pump(client_r, up_w), pump(up_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    asyncio.ensure_future(watch_delay(args.delay_file))
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    os.replace(args.port_file + ".tmp", args.port_file)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
