#!/usr/bin/env python3
"""Memory per idle TLS connection: N connections that completed a TLS 1.3 handshake, left idle.

    benches/e2e/tls_idle.py ADDR --pids PID[,PID...] [--connections 2000] [--request KEY] [--plain]

Reads the server's resident memory (VmRSS of every pid given, summed: nginx's master and
workers, the one billgate process) before, opens the connections one after another (ALPN
http/1.1, no certificate check), waits a second, reads it again, checks that every connection
is still open, closes them all and reads it a last time. With --request KEY each connection
first asks one bill with that key and reads the answer (an idle keep-alive connection after a
request), else it sends nothing after the handshake. --plain opens plain TCP connections instead
(the baseline without TLS). Prints one line:

    IDLE connections=N open=N rss_before=B rss_open=B rss_closed=B bytes_per_connection=B setup_s=S

billgate cuts a connection idle for its head timeout (10 s) off, so the connections must all
be open, and the figures read, within that: `open` says how many still were. Python 3 standard
library only; loopback only; every wait is bounded.
"""

import argparse
import socket
import ssl
import sys
import time


def rss(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def still_open(conn):
    """True if the peer has not closed: nothing to read yet."""
    conn.setblocking(False)
    try:
        return conn.recv(1) != b""
    except (ssl.SSLWantReadError, BlockingIOError):
        return True
    except (ssl.SSLError, OSError):
        return False
    finally:
        conn.setblocking(True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("addr")
    parser.add_argument("--pids", required=True)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--request", metavar="KEY")
    parser.add_argument("--plain", action="store_true", help="plain TCP, no TLS: the baseline")
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("loopback addresses only")
    pids = [int(p) for p in args.pids.split(",") if p]

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["http/1.1"])
    request = (
        f"GET /v1/bills/100234 HTTP/1.1\r\nHost: idle\r\nx-api-key: {args.request}\r\n\r\n".encode()
        if args.request
        else None
    )

    before = rss(pids)
    conns = []
    started = time.monotonic()
    for _ in range(args.connections):
        raw = socket.create_connection((host, int(port)), timeout=5)
        conn = raw if args.plain else context.wrap_socket(raw, server_hostname="localhost")
        if request:
            conn.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    sys.exit("the server closed a connection before answering")
                head += chunk
            length = 0
            header, _, body = head.partition(b"\r\n\r\n")
            for line in header.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            while len(body) < length:
                body += conn.recv(4096)
        conns.append(conn)
    setup = time.monotonic() - started
    time.sleep(1.0)
    opened = rss(pids)
    alive = sum(still_open(c) for c in conns)
    for conn in conns:
        conn.close()
    time.sleep(1.0)
    closed = rss(pids)
    per = (opened - before) / len(conns) if conns else 0
    print(
        f"IDLE connections={len(conns)} open={alive} rss_before={before} rss_open={opened}"
        f" rss_closed={closed} bytes_per_connection={per:.0f} setup_s={setup:.2f}"
    )


if __name__ == "__main__":
    main()
