#!/usr/bin/env python3
"""Redis dies under load, for fleet.sh: polls every instance's `/admin/fleet` (mode) and
`/metrics` (billgate_fleet_redis_up) every 10 ms, kills the fleet's redis-server (SIGKILL) and
restarts it, or stops it (SIGSTOP) and lets it go on (SIGCONT), CYCLES times, and prints per
cycle and instance the time from the kill (stop) to `redis_up 0` and to mode "shares", and
from the restart (SIGCONT) to `redis_up 1` and mode "leases". One JSON object on stdout; the
events' monotonic times too, to place fleet_load.py's failures.

  fleet_outage.py --pid-file run/redis.pid --port 18599 --admins 127.0.0.1:18511,127.0.0.1:18512 \
      --token T --plan kill,kill,kill,stop --down 3 --between 4 -- redis-server --port 18599 ...

The command after `--` restarts Redis after a kill; its pid is written to --pid-file (the
caller stops it).
"""

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

UP_METRIC = b"\nbillgate_fleet_redis_up "


def ping(port, timeout=0.05):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Poller(threading.Thread):
    """Reads one instance's mode and redis_up gauge every `every` seconds."""

    def __init__(self, addr, token, every):
        super().__init__(daemon=True)
        self.addr, self.token, self.every = addr, token, every
        self.samples = []  # (t, mode or None, up gauge or None), t = when the answer came
        self.stop = threading.Event()
        self.conn = None

    def get(self, path):
        for _ in range(2):
            try:
                if self.conn is None:
                    host, port = self.addr.rsplit(":", 1)
                    self.conn = http.client.HTTPConnection(host, int(port), timeout=1)
                self.conn.request("GET", path, headers={"authorization": f"Bearer {self.token}"})
                reply = self.conn.getresponse()
                return reply.read()
            except (OSError, http.client.HTTPException):
                self.conn = None
        return None

    def run(self):
        next_at = time.monotonic()
        while not self.stop.is_set():
            view = self.get("/admin/fleet")
            t_view = time.monotonic()
            metrics = self.get("/metrics")
            t_metrics = time.monotonic()
            mode = None
            if view:
                try:
                    mode = json.loads(view).get("mode")
                except ValueError:
                    pass
            up = None
            if metrics:
                at = metrics.find(UP_METRIC)
                if at >= 0:
                    up = int(float(metrics[at + len(UP_METRIC):].split(b"\n", 1)[0]))
            self.samples.append((t_view, mode, t_metrics, up))
            next_at += self.every
            time.sleep(max(0.0, next_at - time.monotonic()))


def first_after(samples, t, pick, want):
    """Seconds from t to the first sample at or after t whose picked value is `want`."""
    for sample in samples:
        at, value = pick(sample)
        if at >= t and value == want:
            return round(at - t, 4)
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid-file", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--admins", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--plan", default="kill,kill,kill,stop")
    p.add_argument("--down", type=float, default=3.0, help="seconds Redis stays dead/stopped")
    p.add_argument("--between", type=float, default=4.0, help="seconds up between outages")
    p.add_argument("--every", type=float, default=0.010, help="poll interval, seconds")
    p.add_argument("--log", default=os.devnull, help="the restarted redis-server's output")
    p.add_argument("restart", nargs=argparse.REMAINDER)
    args = p.parse_args()
    restart = args.restart[1:] if args.restart[:1] == ["--"] else args.restart

    pollers = [Poller(a, args.token, args.every) for a in args.admins.split(",")]
    for poller in pollers:
        poller.start()
    time.sleep(args.between)
    events = []
    for kind in args.plan.split(","):
        with open(args.pid_file) as f:
            pid = int(f.read().strip())
        t_down = time.monotonic()
        if kind == "kill":
            os.kill(pid, signal.SIGKILL)
            while ping(args.port):
                time.sleep(0.001)
        elif kind == "stop":
            os.kill(pid, signal.SIGSTOP)
        else:
            sys.exit(f"unknown outage {kind}")
        time.sleep(args.down)
        t_up = time.monotonic()
        if kind == "kill":
            with open(args.log, "ab") as log:
                child = subprocess.Popen(restart, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            with open(args.pid_file, "w") as f:
                f.write(f"{child.pid}\n")
        else:
            os.kill(pid, signal.SIGCONT)
        while not ping(args.port):
            time.sleep(0.001)
        t_ping = time.monotonic()
        events.append({"kind": kind, "t_down": t_down, "t_up": t_up,
                       "redis_answers_after_s": round(t_ping - t_up, 4)})
        time.sleep(args.between)
    for poller in pollers:
        poller.stop.set()
    for poller in pollers:
        poller.join()

    for event in events:
        event["instances"] = []
        for poller in pollers:
            s = poller.samples
            event["instances"].append({
                "admin": poller.addr,
                "to_redis_up_0_s": first_after(s, event["t_down"], lambda x: (x[2], x[3]), 0),
                "to_shares_s": first_after(s, event["t_down"], lambda x: (x[0], x[1]), "shares"),
                "to_redis_up_1_s": first_after(s, event["t_up"], lambda x: (x[2], x[3]), 1),
                "to_leases_s": first_after(s, event["t_up"], lambda x: (x[0], x[1]), "leases"),
            })
    gaps = [b[0] - a[0] for poller in pollers for a, b in zip(poller.samples, poller.samples[1:])]
    gaps.sort()
    json.dump({
        "events": events,
        "poll_interval_median_ms": round(1000 * gaps[len(gaps) // 2], 2) if gaps else None,
        "poll_interval_max_ms": round(1000 * gaps[-1], 2) if gaps else None,
    }, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
