#!/usr/bin/env python3
"""A reconnect storm: N partner connections opened at once, one bill inquiry on each.

    benches/e2e/storm.py ADDR [--connections 3000] [--key bench-tiny-key] [--rounds 3]

Prints, per round, how long the connections took to be set up and answered (p50, p99, max),
how many took over a second, the answers by status (and problem reason), and the kernel's
count of handshakes dropped because a listener's accept queue was full (TcpExt
ListenOverflows, read from /proc/net/netstat before and after: machine-wide, so run nothing
else beside it). A dropped handshake is retried by the client a second later, and again after
two more. Python 3 standard library only; loopback addresses only; every wait is bounded.
"""

import argparse
import asyncio
import re
import time

REQUEST = "GET /v1/bills/100234 HTTP/1.1\r\nHost: storm\r\nx-api-key: {key}\r\n\r\n"
WAIT = 20.0


def listen_overflows():
    """TcpExt ListenOverflows from /proc/net/netstat."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table["ListenOverflows"])
    raise RuntimeError("no TcpExt line in /proc/net/netstat")


async def one(host, port, request):
    """Connects, asks, reads the whole answer: (connect s, answered s, status) or an error."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), WAIT)
    except (OSError, asyncio.TimeoutError) as error:
        return None, None, f"connect: {error!r}", None
    connected = time.perf_counter() - started
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        answered = time.perf_counter() - started
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await asyncio.wait_for(reader.readexactly(length), WAIT)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
        writer.close()
        return connected, None, f"answer: {error!r}", None
    status = head[9:12].decode(errors="replace")
    if status != "200":
        reason = re.search(rb'"reason":"([a-z_]+)"', body)
        status += "/" + (reason.group(1).decode() if reason else "?")
    return connected, answered, status, writer


def percentile(values, p):
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(p * len(values)))] * 1000


async def storm(host, port, n, request):
    before = listen_overflows()
    results = await asyncio.gather(*(one(host, port, request) for _ in range(n)))
    overflows = listen_overflows() - before
    for *_, writer in results:
        if writer is not None:
            writer.close()
    connects = sorted(r[0] for r in results if r[0] is not None)
    answers = sorted(r[1] for r in results if r[1] is not None)
    statuses = {}
    for _, _, status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "answered": len(answers),
        "connect_p50_ms": percentile(connects, 0.50),
        "connect_p99_ms": percentile(connects, 0.99),
        "answer_p50_ms": percentile(answers, 0.50),
        "answer_p99_ms": percentile(answers, 0.99),
        "answer_max_ms": answers[-1] * 1000 if answers else float("nan"),
        "over_1s": sum(1 for a in answers if a > 1.0),
        "listen_overflows": overflows,
        "statuses": statuses,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("addr", help="host:port, loopback")
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--key", default="bench-tiny-key")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="")
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback addresses only")
    request = REQUEST.format(key=args.key).encode()
    for round_ in range(1, args.rounds + 1):
        r = asyncio.run(storm(host, int(port), args.connections, request))
        print(
            f"{args.name or args.addr}{f' round {round_}' if args.rounds > 1 else ''}: "
            f"{r['answered']}/{args.connections} answered; "
            f"connect p50 {r['connect_p50_ms']:.0f} p99 {r['connect_p99_ms']:.0f} ms; "
            f"answer p50 {r['answer_p50_ms']:.0f} p99 {r['answer_p99_ms']:.0f} "
            f"max {r['answer_max_ms']:.0f} ms; over 1 s: {r['over_1s']}; "
            f"listen overflows: {r['listen_overflows']}; {r['statuses']}",
            flush=True,
        )
        if round_ < args.rounds:
            time.sleep(2)  # the previous round's connections close before the next opens its own


if __name__ == "__main__":
    main()
