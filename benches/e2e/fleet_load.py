#!/usr/bin/env python3
"""Open-loop load at a fixed rate for fleet.sh: request i is due at t0 + i / RATE and goes to the
targets in turn (i mod the number of targets), over keep-alive HTTP/1.1 connections. Latency is
timed from when a request was due (coordinated omission corrected), so a slow answer delays
nobody's clock. Prints one JSON object: answers by status and reason, latency percentiles, 2xx per
window of the run (by send time) fleet-wide and per target, and every failed request (an answer
other than 2xx, 429 or 503 `biller_capacity`, or a connection error) with its monotonic time,
and the times of the refusals (429, 503 `biller_capacity`) when there are at most 5 000.

  fleet_load.py --targets 127.0.0.1:18501,127.0.0.1:18502 --rate 1000 --seconds 60 \
      --key bench-pass-key [--payment] [--connections 8] [--window 10]

Times are time.monotonic() (CLOCK_MONOTONIC): comparable with fleet_outage.py's.
"""

import argparse
import asyncio
import json
import random
import re
import sys
import time

REASON = re.compile(rb'"reason":"([a-z_]+)"')
LENGTH = re.compile(rb"\r\ncontent-length: *([0-9]+)", re.I)
CHUNKED = re.compile(rb"\r\ntransfer-encoding: *chunked", re.I)
CLOSE = re.compile(rb"\r\nconnection: *close", re.I)


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


class Record:
    def __init__(self, t0, window, targets):
        self.t0 = t0
        self.window = window
        self.by_status = {}
        self.by_reason = {}
        self.latency_all = []
        self.latency_2xx = []
        self.service_2xx = []
        self.windows = {}
        self.windows_by_target = [dict() for _ in targets]
        self.failures = []
        self.refused = []
        self.errors = 0
        self.last_sent = t0

    def answer(self, target, due, sent, done, status, reason):
        key = str(status)
        self.by_status[key] = self.by_status.get(key, 0) + 1
        if reason:
            rk = f"{status} {reason}"
            self.by_reason[rk] = self.by_reason.get(rk, 0) + 1
        latency = (done - due) * 1000.0
        self.latency_all.append(latency)
        if 200 <= status < 300:
            self.latency_2xx.append(latency)
            self.service_2xx.append((done - sent) * 1000.0)
            w = int((sent - self.t0) // self.window)
            self.windows[w] = self.windows.get(w, 0) + 1
            self.windows_by_target[target][w] = self.windows_by_target[target].get(w, 0) + 1
        elif status == 429 or (status == 503 and reason == "biller_capacity"):
            self.refused.append(round(sent, 6))
        else:
            self.failures.append([round(sent, 6), status, reason or ""])
        self.last_sent = max(self.last_sent, sent)

    def error(self, target, sent, what):
        self.errors += 1
        self.failures.append([round(sent, 6), 0, what])


def request_bytes(host, key, payment, account):
    if payment:
        body = b'{"account":"%d","amount":"1.00"}' % account
        return (b"POST /v1/payments HTTP/1.1\r\nhost: %s\r\nx-api-key: %s\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (host, key, len(body), body))
    return (b"GET /v1/bills/%d HTTP/1.1\r\nhost: %s\r\nx-api-key: %s\r\n\r\n"
            % (account, host, key))


async def read_answer(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    body = b""
    m = LENGTH.search(head)
    if m:
        body = await reader.readexactly(int(m.group(1)))
    elif CHUNKED.search(head):
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    reason = None
    if status >= 300:
        r = REASON.search(body)
        reason = r.group(1).decode() if r else None
    return status, reason, bool(CLOSE.search(head))


async def connection(index, addr, queue, record, args):
    host, port = addr.rsplit(":", 1)
    key = args.key.encode()
    reader = writer = None
    while True:
        item = await queue.get()
        if item is None:
            break
        due, account = item
        sent = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, int(port)), args.timeout)
                sent = time.monotonic()
            writer.write(request_bytes(addr.encode(), key, args.payment, account))
            status, reason, close = await asyncio.wait_for(read_answer(reader), args.timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError, ValueError) as e:
            record.error(index, sent, type(e).__name__)
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        record.answer(index, due, sent, time.monotonic(), status, reason)
        if close:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def main(args):
    targets = args.targets.split(",")
    total = int(args.rate * args.seconds)
    interval = 1.0 / args.rate
    queues = [asyncio.Queue() for _ in targets]
    t0 = time.monotonic() + 0.2
    record = Record(t0, args.window, targets)
    workers = [
        asyncio.create_task(connection(t, addr, queues[t], record, args))
        for t, addr in enumerate(targets)
        for _ in range(args.connections)
    ]
    rng = random.Random(args.seed)
    i = 0
    while i < total:
        now = time.monotonic()
        while i < total and t0 + i * interval <= now:
            queues[i % len(targets)].put_nowait((t0 + i * interval, 100000 + rng.randrange(900000)))
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, t0 + i * interval - time.monotonic()))
    for q in queues:
        for _ in range(args.connections):
            q.put_nowait(None)
    await asyncio.wait(workers, timeout=args.timeout + 5)
    end = time.monotonic()
    lat = sorted(record.latency_all)
    lat2 = sorted(record.latency_2xx)
    svc = sorted(record.service_2xx)
    windows = int(-(-args.seconds // args.window))
    answered = len(lat)
    out = {
        "targets": targets,
        "rate": args.rate,
        "seconds": args.seconds,
        "sent": total,
        "answered": answered,
        "t0": t0,
        "t_end": end,
        "achieved_rate": round(answered / max(1e-9, record.last_sent - t0), 1),
        "by_status": record.by_status,
        "by_reason": record.by_reason,
        "errors": record.errors,
        "ok": len(lat2),
        "windows_2xx": [record.windows.get(w, 0) for w in range(windows)],
        "windows_2xx_by_target": [[wt.get(w, 0) for w in range(windows)]
                                  for wt in record.windows_by_target],
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
        "p999_ms": percentile(lat, 99.9), "max_ms": lat[-1] if lat else None,
        "ok_p50_ms": percentile(lat2, 50), "ok_p99_ms": percentile(lat2, 99),
        "ok_p999_ms": percentile(lat2, 99.9),
        "service_p50_ms": percentile(svc, 50), "service_p99_ms": percentile(svc, 99),
        "failed": len(record.failures),
        "failures": record.failures[:2000],
        "refused_times": record.refused if len(record.refused) <= 5000 else [],
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", required=True, help="host:port[,host:port...], taken in turn")
    p.add_argument("--rate", type=float, required=True, help="requests per second, all targets")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--key", required=True, help="the partner's x-api-key")
    p.add_argument("--payment", action="store_true", help="POST /v1/payments, not GET a bill")
    p.add_argument("--connections", type=int, default=8, help="keep-alive connections per target")
    p.add_argument("--window", type=float, default=10.0, help="seconds per counting window")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds for one answer")
    p.add_argument("--seed", type=int, default=1)
    asyncio.run(main(p.parse_args()))
