#!/usr/bin/env python3
"""Hostile clients for scripts/bench-abuse.sh (issue 11, SPEC 7), against 127.0.0.1 only.

Keeps, for --seconds, H2 HTTP/2 connections that set INITIAL_WINDOW_SIZE=0 and open
--streams streams of GET /numbers/KEY?count=COUNT each without ever granting a window,
and SILENT TCP connections that never send a byte. A connection the server closes is
opened again at once, so the pressure lasts the whole run. Bytes from the server are read
and thrown away (never fed to the h2 state machine, so no WINDOW_UPDATE ever leaves).
Prints "ready" once every connection is open, then, at the end, one line of counts.
"""

import argparse
import selectors
import socket
import sys
import time

import h2.config
import h2.connection
import h2.settings


def hostile(host, port, key, streams, count):
    sock = socket.create_connection((host, port))
    c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    path = f"/numbers/{key}?count={count}"
    for i in range(streams):
        c.send_headers(
            1 + 2 * i,
            [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
            end_stream=True,
        )
    sock.sendall(c.data_to_send())
    sock.setblocking(False)
    return sock


def silent(host, port):
    sock = socket.create_connection((host, port))
    sock.setblocking(False)
    return sock


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--key", default="K")
    p.add_argument("--h2", type=int, default=100)
    p.add_argument("--silent", type=int, default=2000)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--seconds", type=float, default=30)
    a = p.parse_args()
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("abuse.py only targets loopback")

    sel = selectors.DefaultSelector()
    opened = {"h2": 0, "silent": 0}

    def open_one(kind):
        sock = hostile(a.host, a.port, a.key, a.streams, a.count) if kind == "h2" else silent(a.host, a.port)
        sel.register(sock, selectors.EVENT_READ, kind)
        opened[kind] += 1

    for _ in range(a.h2):
        open_one("h2")
    for _ in range(a.silent):
        open_one("silent")
    print("ready", flush=True)

    closed = {"h2": 0, "silent": 0}
    received = 0
    end = time.monotonic() + a.seconds
    while (left := end - time.monotonic()) > 0:
        for k, _ in sel.select(timeout=min(left, 0.5)):
            sock, kind = k.fileobj, k.data
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                received += len(data)
                continue
            sel.unregister(sock)
            sock.close()
            closed[kind] += 1
            try:
                open_one(kind)
            except OSError as e:
                print(f"reopen failed: {e}", file=sys.stderr, flush=True)
    print(
        f"opened h2={opened['h2']} silent={opened['silent']} "
        f"closed_by_server h2={closed['h2']} silent={closed['silent']} bytes_received={received}",
        flush=True,
    )


if __name__ == "__main__":
    main()
