#!/usr/bin/env python3
"""Webhooks end to end against a running gateway with [subscriptions]: subscribes ACCOUNTS
accounts (one subscription each, callbacks to a receiver this script runs), waits until the
gateway has asked the biller about each new account (its first refreshes, read from the admin
listener's /metrics; the bills they find are told too, and not counted here), pushes one bill
event per account to the admin listener's POST /v1/bill-events in batches, and times each
webhook from its batch's push to its arrival. Prints JSON: deliveries per second (first push to
last arrival), latency p50/p99/max, duplicates, missing.

  webhooks.py --gateway 127.0.0.1:18600 --admin 127.0.0.1:18610 --key K --token T \
              --receiver 127.0.0.1:18620 --accounts 5000 --batch 100
"""
import argparse, asyncio, json, time, urllib.request


def post(url, body, headers):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read() or b"{}")


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gateway", required=True)
    p.add_argument("--admin", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--receiver", required=True)
    p.add_argument("--accounts", type=int, default=5000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--run", default=str(int(time.time())))
    a = p.parse_args()
    host, port = a.receiver.split(":")
    arrived = {}
    dupes = 0
    done = asyncio.Event()

    async def serve(reader, writer):
        nonlocal dupes
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                now = time.monotonic()
                data = json.loads(body)["data"]
                account = data["account"]
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                if data["bill_id"] != f"B-{a.run}":
                    continue
                if account in arrived:
                    dupes += 1
                else:
                    arrived[account] = now
                if len(arrived) >= a.accounts:
                    done.set()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, host, int(port), backlog=1024)
    accounts = [f"W{a.run}-{i:06d}" for i in range(a.accounts)]
    loop = asyncio.get_running_loop()
    for account in accounts:
        status, _ = await loop.run_in_executor(None, post, f"http://{a.gateway}/v1/subscriptions",
                                               {"account": account, "callback": f"http://{a.receiver}/hooks/x"},
                                               {"x-api-key": a.key})
        assert status in (200, 201), status
    # The first refreshes: one biller call per new account, at the refresher's pace.
    def refreshed():
        with urllib.request.urlopen(f"http://{a.admin}/metrics", timeout=10) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("billgate_subscription_refreshes_total{") and "deferred" not in line:
                total += float(line.rsplit(" ", 1)[1])
        return total
    deadline = time.monotonic() + 600
    while await loop.run_in_executor(None, refreshed) < a.accounts and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    pushed = {}
    first = time.monotonic()
    for i in range(0, len(accounts), a.batch):
        batch = accounts[i:i + a.batch]
        events = [{"account": acc, "bill_id": f"B-{a.run}", "status": "due", "amount_due": "10.00",
                   "due_date": "2026-12-31"} for acc in batch]
        t = time.monotonic()
        status, reply = await loop.run_in_executor(None, post, f"http://{a.admin}/v1/bill-events",
                                                   {"events": events}, {"authorization": f"Bearer {a.token}"})
        assert status == 202 and reply["enqueued"] == len(batch), reply
        for acc in batch:
            pushed[acc] = t
    try:
        await asyncio.wait_for(done.wait(), timeout=300)
    except asyncio.TimeoutError:
        pass
    server.close()
    lat = sorted((arrived[acc] - pushed[acc]) * 1000 for acc in arrived if acc in pushed)
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] if lat else None
    last = max(arrived.values()) if arrived else first
    print(json.dumps({
        "accounts": a.accounts, "delivered": len(arrived), "missing": a.accounts - len(arrived),
        "duplicates": dupes, "seconds": round(last - first, 3),
        "deliveries_per_second": round(len(arrived) / (last - first), 1) if last > first else None,
        "latency_ms": {"p50": q(0.5), "p99": q(0.99), "max": lat[-1] if lat else None},
    }))


asyncio.run(main())
