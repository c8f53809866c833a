"""Locust version of the navcast-load rider (loadtest/README.md, "The rider").

For teams that already run Locust. navcast-load itself measures more (exact
HDR latencies from scheduled send times, per-stage percentiles, fan-out loss
per seq, per-node spread, mergeable segments); this file keeps the same rider
behaviour, the reference's step table as a LoadTestShape, and the pass
criteria as an exit code.

    pip install locust websocket-client
    locust -f loadtest/locustfile.py --host ws://127.0.0.1:8080 --headless \
        --csv results/locust
    TIME_SCALE=0.1 locust -f loadtest/locustfile.py --host ws://127.0.0.1:8080 --headless

Environment: TIME_SCALE (multiplies the step table's durations, default 1),
USERS (peak riders, default 1000), INTERVAL_S ("lo,hi", default "3,5"),
GUARDIAN_SHARE (0.1), DEVIATING_SHARE (0.02), PREFIX / PASSWORD (accounts
PREFIX-r{n}@navcast-load.test, registered when missing), LATENCY_TARGETS
("off" drops the p95 criteria and keeps the others: tests on busy machines
check behaviour, not latency).

A rider: register-or-login over HTTP, connect with ?token=, read `connected`
(node_id counted per node), share with its guardian and wait for the watch,
start_navigation between two of the 12 stations (PHY 40 VIS 30 ELD 20 AUD 10,
timeout 10 s), then every 3-5 s a task (weights 1 start_navigation : 10
location_update, as in the reference) moving along the route at subway speed
(compressed by TIME_SCALE) with 10-50 m GPS drift; a new navigation after
`arrival`. Replies are matched by request_id; timer-driven requests are timed
from their scheduled send time. Guardians report each peer_event as
`fanout_delivery` (latency from sent_at_us) and each seq gap as a failure.
"""

import itertools
import json
import math
import os
import random
import time

import gevent
import websocket
from locust import LoadTestShape, User, events, task

TIME_SCALE = float(os.environ.get("TIME_SCALE", "1"))
USERS = int(os.environ.get("USERS", "1000"))
INTERVAL = [float(x) for x in os.environ.get("INTERVAL_S", "3,5").split(",")]
GUARDIAN_SHARE = float(os.environ.get("GUARDIAN_SHARE", "0.1"))
DEVIATING_SHARE = float(os.environ.get("DEVIATING_SHARE", "0.02"))
PREFIX = os.environ.get("PREFIX", "locust")
PASSWORD = os.environ.get("PASSWORD", "navcast-load-password")
SPEED_MPS = 10.0

STATIONS = [
    ("강남", 37.4979, 127.0276), ("홍대입구", 37.5579, 126.9227), ("잠실", 37.5133, 127.1000),
    ("구로디지털단지", 37.4850, 126.9010), ("서울", 37.5547, 126.9707), ("신림", 37.4843, 126.9297),
    ("삼성", 37.5088, 127.0633), ("고속터미널", 37.5046, 127.0047), ("신도림", 37.5088, 126.8913),
    ("선릉", 37.5045, 127.0489), ("사당", 37.4765, 126.9815), ("가산디지털단지", 37.4816, 126.8826),
]
TYPES = ["PHY", "VIS", "ELD", "AUD"]
TYPE_WEIGHTS = [40, 30, 20, 10]
NAV_EVENTS = {"route_calculated", "navigation_update", "route_deviation", "arrival"}

# The pass criteria (the navcast column of loadtest/README.md), checked at the end.
P95_LIMITS_MS = {"ws_connect": 50, "ws_start_navigation": 50, "ws_location_update": 20}
if os.environ.get("LATENCY_TARGETS", "on") == "off":
    P95_LIMITS_MS = {}

_user_index = itertools.count()
_nodes = {}
_close_codes = {}


def in_share(k, share, phase):
    """Every share spread evenly over the user indices (as navcast-load does)."""
    return share > 0 and math.floor((k + phase + 1) * share) > math.floor((k + phase) * share)


def haversine(a, b):
    r = 6371008.8
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(min(1.0, math.sqrt(h)))


def offset(p, dist, bearing):
    dlat = dist * math.cos(bearing) / 111320
    dlon = dist * math.sin(bearing) / (111320 * math.cos(math.radians(p[0])))
    return (p[0] + dlat, p[1] + dlon)


def http_base(host):
    return host.rstrip("/").replace("wss://", "https://").replace("ws://", "http://")


class Session:
    """One WebSocket: sends with request_id, a reader greenlet matches replies."""

    def __init__(self, user, url, on_reply, on_pushed):
        self.user = user
        self.on_reply = on_reply
        self.on_pushed = on_pushed
        self.pending = {}
        self.next_id = 0
        self.node_id = None
        self.closed = False
        t0 = time.time()
        try:
            self.ws = websocket.create_connection(url, timeout=10)
            first = json.loads(self.ws.recv())
            if first.get("type") != "connected":
                raise RuntimeError("first frame is not connected")
        except Exception as e:  # noqa: BLE001 - every failure is a ws_connect failure
            self.fire("ws_connect", (time.time() - t0) * 1000, 0, e)
            self.closed = True
            self.ws = None
            return
        self.node_id = first["node_id"]
        _nodes[self.node_id] = _nodes.get(self.node_id, 0) + 1
        self.fire("ws_connect", (time.time() - t0) * 1000, len(json.dumps(first)))
        self.ws.settimeout(None)
        self.reader = gevent.spawn(self._read)

    def fire(self, name, ms, length, exc=None):
        self.user.environment.events.request.fire(
            request_type="WebSocket", name=name, response_time=ms,
            response_length=length, exception=exc, context={})

    def send(self, msg, name, scheduled, timeout_s):
        self.next_id += 1
        msg["request_id"] = self.next_id
        # An early wake-up sends before the scheduled time: count from
        # whichever came first, so no latency is negative.
        now = time.time()
        self.pending[self.next_id] = (name, min(scheduled, now), now + timeout_s)
        try:
            self.ws.send(json.dumps(msg, ensure_ascii=False))
        except Exception as e:  # noqa: BLE001
            self.pending.pop(self.next_id, None)
            self.fire(name, 0, 0, e)

    def sweep(self):
        now = time.time()
        for rid, (name, scheduled, deadline) in list(self.pending.items()):
            if now > deadline:
                del self.pending[rid]
                self.fire(name, (now - scheduled) * 1000, 0, TimeoutError("timeout"))

    def _read(self):
        code = 1006
        while True:
            try:
                opcode, data = self.ws.recv_data(control_frame=True)
            except Exception:  # noqa: BLE001
                break
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                break
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            msg = json.loads(data)
            rid = msg.get("request_id")
            if rid is not None and rid in self.pending:
                name, scheduled, _ = self.pending.pop(rid)
                ms = (time.time() - scheduled) * 1000
                if msg.get("type") == "error":
                    self.fire(name, ms, len(data), RuntimeError(f"error {msg.get('code')}"))
                else:
                    self.fire(name, ms, len(data))
                self.on_reply(self, msg)
            elif rid is None:
                self.on_pushed(self, msg)
        self.closed = True
        _close_codes[code] = _close_codes.get(code, 0) + 1
        for name, _, _ in self.pending.values():
            self.fire(name, 0, 0, ConnectionError(f"connection closed ({code})"))
        self.pending.clear()

    def close(self):
        if self.ws is not None and not self.closed:
            try:
                self.ws.close(status=1000)
            except Exception:  # noqa: BLE001
                pass


class NavRider(User):
    """One rider (and for 10 % of riders a guardian session that watches it)."""

    def wait_time(self):
        return max(0.0, self.next_tick - time.time())

    def login(self, kind):
        email = f"{PREFIX}-{kind}{self.k}@navcast-load.test"
        base = http_base(self.host)
        import requests  # Locust depends on requests

        requests.post(f"{base}/api/v1/auth/register", json={"email": email, "password": PASSWORD}, timeout=30)
        t0 = time.time()
        try:
            r = requests.post(f"{base}/api/v1/auth/login", data={"username": email, "password": PASSWORD}, timeout=30)
            r.raise_for_status()
        except Exception as e:  # noqa: BLE001
            self.environment.events.request.fire(request_type="HTTP", name="login", response_time=(time.time() - t0) * 1000,
                                                 response_length=0, exception=e, context={})
            return None
        self.environment.events.request.fire(request_type="HTTP", name="login", response_time=(time.time() - t0) * 1000,
                                             response_length=len(r.content), exception=None, context={})
        return r.json()

    def on_start(self):
        self.k = next(_user_index)
        self.deviating = in_share(self.k, DEVIATING_SHARE, 37)
        self.route = None
        self.need_start = True
        self.next_origin = None
        self.dest = 0
        self.origin = 0
        self.deviation = None
        self.deviations = 0
        self.at_end = 0
        self.expected = 0
        self.received = 0
        self.gaps = 0
        self.last_seq = {}
        self.watching = False
        self.guardian = None
        self.next_tick = time.time() + random.uniform(*INTERVAL)
        tokens = self.login("r")
        if tokens is None:
            self.rider = None
            return
        base = self.host.rstrip("/")
        self.rider = Session(self, f"{base}/api/v1/ws/{tokens['user_id']}?token={tokens['access_token']}",
                             self.on_rider_reply, lambda s, m: None)
        if self.rider.closed:
            return
        if in_share(self.k, GUARDIAN_SHARE, 0):
            g = self.login("g")
            if g is not None:
                self.rider.send({"type": "share_navigation", "guardian_id": g["user_id"]},
                                "ws_share_navigation", time.time(), 10)
                for _ in range(100):
                    if not self.rider.pending:
                        break
                    gevent.sleep(0.05)
                self.guardian = Session(self, f"{base}/api/v1/ws/{g['user_id']}?token={g['access_token']}",
                                        self.on_guardian_reply, self.on_peer_event)
                if not self.guardian.closed:
                    self.guardian.send({"type": "watch", "user_id": tokens["user_id"]}, "ws_watch", time.time(), 10)
                    for _ in range(100):
                        if self.watching:
                            break
                        gevent.sleep(0.05)
        self.start_navigation(time.time())

    def on_stop(self):
        if getattr(self, "rider", None) is not None:
            # Let the replies in flight arrive (up to 3 s), then close with 1000.
            deadline = time.time() + 3
            while self.rider.pending and not self.rider.closed and time.time() < deadline:
                gevent.sleep(0.05)
            self.rider.sweep()
            self.rider.close()
        if self.guardian is not None:
            deadline = time.time() + 2
            while self.received < self.expected and time.time() < deadline:
                gevent.sleep(0.05)
            lost = max(self.gaps, self.expected - self.received)
            for _ in range(lost):
                self.environment.events.request.fire(request_type="WebSocket", name="fanout_delivery", response_time=0,
                                                     response_length=0, exception=RuntimeError("peer_event lost"), context={})
            self.guardian.close()

    # Replies.
    def on_rider_reply(self, session, msg):
        t = msg.get("type")
        if t == "error":
            if self.route is None:
                self.need_start = True
            return
        if self.watching and t in NAV_EVENTS:
            self.expected += 1
        if t == "route_calculated":
            r = next((x for x in msg["routes"] if x["rank"] == msg["selected_route_rank"]), msg["routes"][0])
            pts = [(s["lat"], s["lon"]) for s in r["stations"]]
            cum = [0.0]
            for a, b in zip(pts, pts[1:]):
                cum.append(cum[-1] + haversine(a, b))
            self.route = (pts, cum)
        elif t == "route_deviation":
            self.deviations += 1
            if self.deviations >= 3:
                self.need_start = True
        elif t == "arrival":
            self.need_start = True
            self.next_origin = self.dest

    def on_guardian_reply(self, session, msg):
        if msg.get("type") == "watching":
            self.watching = True

    def on_peer_event(self, session, msg):
        if msg.get("type") != "peer_event":
            return
        ms = max(0.0, time.time() * 1000 - msg["sent_at_us"] / 1000)
        session.fire("fanout_delivery", ms, 0)
        origin, seq = msg["origin_node"], msg["seq"]
        last = self.last_seq.get(origin)
        if last is None or seq == last + 1 or seq == 1:
            self.last_seq[origin] = seq
            self.received += 1
        elif seq > last + 1:
            self.gaps += seq - last - 1
            self.last_seq[origin] = seq
            self.received += 1
        elif seq != last:
            self.received += 1  # reordered

    # Requests.
    def position(self, at):
        if self.route is None:
            return STATIONS[self.origin][1:]
        pts, cum = self.route
        d = SPEED_MPS * (at - self.nav_started) / TIME_SCALE
        p = pts[-1]
        for i in range(1, len(pts)):
            if cum[i] >= d:
                span = cum[i] - cum[i - 1]
                f = max(0.0, (d - cum[i - 1]) / span) if span > 0 else 1.0
                p = (pts[i - 1][0] + (pts[i][0] - pts[i - 1][0]) * f, pts[i - 1][1] + (pts[i][1] - pts[i - 1][1]) * f)
                break
        if self.deviation and d > 0.4 * cum[-1]:
            p = offset(p, *self.deviation)
        if d >= cum[-1]:
            self.at_end += 1
            if self.at_end > 5:
                self.need_start = True
        return p

    def start_navigation(self, scheduled):
        if self.rider is None or self.rider.closed:
            return
        self.origin = self.next_origin if self.next_origin is not None else random.randrange(len(STATIONS))
        self.next_origin = None
        self.dest = random.choice([i for i in range(len(STATIONS)) if i != self.origin])
        self.route, self.need_start, self.nav_started = None, False, scheduled
        self.deviations, self.at_end = 0, 0
        self.deviation = (random.uniform(1500, 3000), random.uniform(0, 2 * math.pi)) if self.deviating else None
        self.rider.send({"type": "start_navigation", "origin": STATIONS[self.origin][0],
                         "destination": STATIONS[self.dest][0],
                         "disability_type": random.choices(TYPES, TYPE_WEIGHTS)[0]},
                        "ws_start_navigation", scheduled, 10)

    def tick(self):
        scheduled = self.next_tick
        # Locust runs a user's first task without waiting: wait for its time.
        if scheduled > time.time():
            gevent.sleep(scheduled - time.time())
        self.next_tick += random.uniform(*INTERVAL)
        if self.rider is not None:
            self.rider.sweep()
        return scheduled

    @task(1)
    def new_navigation(self):
        self.start_navigation(self.tick())

    @task(10)
    def location_update(self):
        scheduled = self.tick()
        if self.rider is None or self.rider.closed:
            return
        if self.need_start:
            self.start_navigation(scheduled)
            return
        lat, lon = offset(self.position(scheduled), random.uniform(10, 50), random.uniform(0, 2 * math.pi))
        self.rider.send({"type": "location_update", "latitude": round(lat, 6), "longitude": round(lon, 6),
                         "accuracy": round(random.uniform(10, 50))}, "ws_location_update", scheduled, 3)


class StepLoad(LoadTestShape):
    """The reference's step table (cumulative end s, users, spawn rate), scaled."""

    stages = [(120, 100, 1), (300, 300, 2), (480, 500, 3), (720, 750, 5), (900, 1000, 5), (1500, 1000, 5)]

    def tick(self):
        t = self.get_run_time()
        f = USERS / 1000
        for end, users, rate in self.stages:
            if t < end * TIME_SCALE:
                return max(1, round(users * f)), rate * f / TIME_SCALE
        return None


@events.quitting.add_listener
def check_criteria(environment, **_kw):
    """Exit code 1 with the failing criteria named, as navcast-load does."""
    stats = environment.stats
    failed = []
    connect = stats.get("ws_connect", "WebSocket")
    if connect.num_requests == 0 or connect.num_failures > 0:
        failed.append(f"connect success ({connect.num_failures} of {connect.num_requests} failed)")
    for name, limit in P95_LIMITS_MS.items():
        e = stats.get(name, "WebSocket")
        p95 = e.get_response_time_percentile(0.95) if e.num_requests else None
        if p95 is None or p95 >= limit:
            failed.append(f"{name} p95 {p95} ms (target < {limit} ms)")
    errors = sum(e.num_failures for e in stats.entries.values() if e.name != "fanout_delivery")
    if errors:
        failed.append(f"error rate ({errors} failures)")
    lost = stats.get("fanout_delivery", "WebSocket").num_failures
    if lost:
        failed.append(f"lost peer_events ({lost})")
    if len(_nodes) > 1:
        total = sum(_nodes.values())
        even = total / len(_nodes)
        if even >= 30 and any(abs(n - even) / even > 0.15 for n in _nodes.values()):
            failed.append(f"spread across nodes ({_nodes})")
    print(f"navcast nodes: {_nodes}; close codes: {_close_codes}")
    if failed:
        print("FAIL: " + "; ".join(failed))
        environment.process_exit_code = 1
    else:
        print("PASS: every criterion")
