// k6 version of the navcast-load rider (loadtest/README.md, "The rider"),
// for teams that already run k6. navcast-load itself measures more (exact HDR
// latencies, per-stage percentiles, fan-out loss per seq, per-node spread,
// mergeable segments); this script keeps the same behaviour and thresholds.
//
//   k6 run loadtest/k6/navigation.js -e HOST=ws://127.0.0.1:8080
//   k6 run loadtest/k6/navigation.js -e HOST=ws://127.0.0.1:8080 -e TIME_SCALE=0.1
//   k6 run loadtest/k6/navigation.js -e HOST=... -e SHAPE=hold -e USERS=2000 -e HOLD_S=60
//
// Environment:
//   HOST            ws:// or wss:// base URL (HTTP base derived: ws→http, wss→https)
//   SHAPE           "step" (the reference's step-1000 table, default) or "hold"
//   USERS           peak riders (step: rescales the table; hold: riders held)
//   TIME_SCALE      multiplies every duration (0.1 runs step-1000 in 150 s)
//   RAMP_S, HOLD_S  hold shape: ramp and hold seconds (before TIME_SCALE)
//   INTERVAL_MS     "lo,hi" timer between requests (default 3000,5000)
//   GUARDIAN_SHARE  share of riders watched by a guardian (default 0.1)
//   DEVIATING_SHARE share of riders that wander off the route (default 0.02)
//   START_WEIGHT, UPDATE_WEIGHT  request mix (default 1 : 10)
//   PREFIX, PASSWORD account names k6-r{n}@navcast-load.test (registered if missing)
//   LATENCY_TARGETS "off" drops the p95 thresholds and keeps the others (tests
//                   on busy machines check behaviour, not latency)
//
// Rider: register-or-login over HTTP, connect with ?token=, read `connected`
// (node_id counted per node), share with its guardian and wait for the watch,
// start_navigation between two of the 12 stations (weights PHY 40 VIS 30 ELD 20
// AUD 10, timeout 10 s), then every 3–5 s a location_update (timeout 3 s)
// moving along the route at subway speed (compressed by TIME_SCALE) with
// 10–50 m GPS drift, or a new start_navigation (1:10, and after `arrival`).
// Latency of timer-driven requests is measured from the scheduled time.
// Guardians count every peer_event: fan-out latency from sent_at_us, gaps,
// duplicates and reorders from seq per origin_node.

import http from 'k6/http';
import exec from 'k6/execution';
import { WebSocket } from 'k6/experimental/websockets';
import { setTimeout, clearTimeout } from 'k6/timers';
import { Trend, Counter } from 'k6/metrics';

const HOST = (__ENV.HOST || 'ws://127.0.0.1:8080').replace(/\/$/, '');
const HTTP = HOST.replace(/^ws/, 'http');
const SCALE = parseFloat(__ENV.TIME_SCALE || '1');
const SHAPE = __ENV.SHAPE || 'step';
const INTERVAL = (__ENV.INTERVAL_MS || '3000,5000').split(',').map(Number);
const GUARDIAN_SHARE = parseFloat(__ENV.GUARDIAN_SHARE || '0.1');
const DEVIATING_SHARE = parseFloat(__ENV.DEVIATING_SHARE || '0.02');
const START_W = parseFloat(__ENV.START_WEIGHT || '1');
const UPDATE_W = parseFloat(__ENV.UPDATE_WEIGHT || '10');
const PREFIX = __ENV.PREFIX || 'k6';
const PASSWORD = __ENV.PASSWORD || 'navcast-load-password';
const LATENCY_TARGETS = (__ENV.LATENCY_TARGETS || 'on') !== 'off';
const SPEED_MPS = 10;

// The reference's table: cumulative end time, users, spawn rate.
const STEP = [
  [120, 100], [300, 300], [480, 500], [720, 750], [900, 1000], [1500, 1000],
];

function stages() {
  const out = [];
  if (SHAPE === 'hold') {
    const users = parseInt(__ENV.USERS || '100');
    out.push({ duration: `${Math.max(1, parseFloat(__ENV.RAMP_S || '30') * SCALE)}s`, target: users });
    out.push({ duration: `${Math.max(1, parseFloat(__ENV.HOLD_S || '60') * SCALE)}s`, target: users });
    return out;
  }
  const f = parseInt(__ENV.USERS || '1000') / 1000;
  let t = 0;
  for (const [end, users] of STEP) {
    out.push({ duration: `${Math.max(1, (end - t) * SCALE)}s`, target: Math.round(users * f) });
    t = end;
  }
  return out;
}

const STAGES = stages();
const TOTAL_S = STAGES.reduce((s, x) => s + parseFloat(x.duration), 0);

export const options = {
  scenarios: {
    riders: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: STAGES,
      gracefulRampDown: '15s',
      gracefulStop: '15s',
    },
  },
  // The navcast column of the pass criteria (loadtest/README.md).
  thresholds: Object.assign(
    {
      ws_connect_failures: ['count==0'],
      ws_errors: ['count==0'],
      fanout_lost: ['count==0'],
    },
    LATENCY_TARGETS
      ? {
          ws_connect: ['p(95)<50'],
          ws_start_navigation: ['p(95)<50'],
          ws_location_update: ['p(95)<20'],
        }
      : {},
  ),
  summaryTrendStats: ['min', 'med', 'avg', 'p(95)', 'p(99)', 'max', 'count'],
};

const tConnect = new Trend('ws_connect', true);
const tStart = new Trend('ws_start_navigation', true);
const tUpdate = new Trend('ws_location_update', true);
const tLogin = new Trend('login', true);
const tFanout = new Trend('fanout_delivery', true);
const tShare = new Trend('ws_share_navigation', true);
const tWatch = new Trend('ws_watch', true);
const cConnectFail = new Counter('ws_connect_failures');
const cErrors = new Counter('ws_errors');
const cLost = new Counter('fanout_lost');
const cGaps = new Counter('fanout_gaps');
const cDup = new Counter('fanout_duplicates');
const cReorder = new Counter('fanout_reorders');
const cClose = new Counter('ws_close');
const cNode = new Counter('ws_node');

const STATIONS = [
  ['강남', 37.4979, 127.0276], ['홍대입구', 37.5579, 126.9227], ['잠실', 37.5133, 127.1],
  ['구로디지털단지', 37.485, 126.901], ['서울', 37.5547, 126.9707], ['신림', 37.4843, 126.9297],
  ['삼성', 37.5088, 127.0633], ['고속터미널', 37.5046, 127.0047], ['신도림', 37.5088, 126.8913],
  ['선릉', 37.5045, 127.0489], ['사당', 37.4765, 126.9815], ['가산디지털단지', 37.4816, 126.8826],
];
const TYPES = [['PHY', 40], ['VIS', 30], ['ELD', 20], ['AUD', 10]];

function weighted(list) {
  const total = list.reduce((s, x) => s + x[1], 0);
  let r = Math.random() * total;
  for (const x of list) { if (r < x[1]) return x[0]; r -= x[1]; }
  return list[list.length - 1][0];
}
function uniform(lo, hi) { return lo + (hi - lo) * Math.random(); }
function haversine(a, b) {
  const R = 6371008.8, rad = Math.PI / 180;
  const dp = (b[0] - a[0]) * rad, dl = (b[1] - a[1]) * rad;
  const h = Math.sin(dp / 2) ** 2 + Math.cos(a[0] * rad) * Math.cos(b[0] * rad) * Math.sin(dl / 2) ** 2;
  return 2 * R * Math.asin(Math.min(1, Math.sqrt(h)));
}
function offset(p, dist, bearing) {
  const dlat = dist * Math.cos(bearing) / 111320;
  const dlon = dist * Math.sin(bearing) / (111320 * Math.cos(p[0] * Math.PI / 180));
  return [p[0] + dlat, p[1] + dlon];
}
// Every share of users spread evenly over the indices (as navcast-load does).
function inShare(k, share, phase) {
  return share > 0 && Math.floor((k + phase + 1) * share) > Math.floor((k + phase) * share);
}

function account(kind, n) {
  const email = `${PREFIX}-${kind}${n}@navcast-load.test`;
  http.post(`${HTTP}/api/v1/auth/register`, JSON.stringify({ email, password: PASSWORD }),
    { headers: { 'Content-Type': 'application/json' }, tags: { name: 'register' } });
  const t0 = Date.now();
  const r = http.post(`${HTTP}/api/v1/auth/login`, { username: email, password: PASSWORD },
    { tags: { name: 'login' } });
  if (r.status !== 200) { cErrors.add(1, { name: 'login', error: `HTTP ${r.status}` }); return null; }
  tLogin.add(Date.now() - t0);
  return r.json();
}

// Sends requests with request_id and matches replies; `onReply(p, msg)`.
function session(url, onConnected, onReply, onPushed, onClose) {
  const t0 = Date.now();
  const ws = new WebSocket(url);
  const pending = new Map();
  let nextId = 0, connected = false;
  const api = {
    ws,
    send(msg, metric, scheduled, timeoutMs) {
      const id = ++nextId;
      msg.request_id = id;
      // A timer that fires early sends before its scheduled time: count
      // from whichever came first, so no latency is negative.
      const now = Date.now();
      pending.set(id, { metric, scheduled: Math.min(scheduled, now), deadline: now + timeoutMs });
      ws.send(JSON.stringify(msg));
    },
    // Timeouts are swept on every tick rather than timed one by one: fewer
    // timers, and clearTimeout from a socket callback proved unreliable in
    // k6 1.1 (it cancelled a different timer).
    pendingCount() {
      return pending.size;
    },
    sweep(now) {
      for (const [id, p] of pending) {
        if (now > p.deadline) {
          pending.delete(id);
          p.metric.add(now - p.scheduled);
          cErrors.add(1, { error: 'timeout' });
        }
      }
    },
  };
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (!connected) {
      connected = true;
      if (msg.type === 'connected') {
        tConnect.add(Date.now() - t0);
        cNode.add(1, { node_id: msg.node_id });
        onConnected(api, msg);
      } else {
        cConnectFail.add(1);
        ws.close();
      }
      return;
    }
    if (msg.request_id !== undefined && pending.has(msg.request_id)) {
      const p = pending.get(msg.request_id);
      pending.delete(msg.request_id);
      p.metric.add(Date.now() - p.scheduled);
      if (msg.type === 'error') cErrors.add(1, { error: msg.code });
      onReply(api, msg);
    } else if (msg.request_id === undefined) {
      onPushed(api, msg);
    }
  };
  ws.onerror = () => { if (!connected) cConnectFail.add(1); };
  ws.onclose = (e) => {
    for (const p of pending.values()) cErrors.add(1, { error: 'closed' });
    pending.clear();
    cClose.add(1, { code: String(e.code || 1006) });
    if (onClose) onClose(e);
  };
  return api;
}

export default function () {
  const k = exec.vu.idInTest - 1;
  const endAt = exec.scenario.startTime + TOTAL_S * 1000;
  const rider = account('r', k);
  if (!rider) return;
  const withGuardian = inShare(k, GUARDIAN_SHARE, 0);
  const deviating = inShare(k, DEVIATING_SHARE, 37);
  const guardian = withGuardian ? account('g', k) : null;

  let expected = 0, received = 0, gaps = 0, watching = false, riderDone = false;
  const lastSeq = {};
  let guardianApi = null;

  function finishGuardian() {
    if (!guardianApi) return;
    const deadline = Date.now() + 2000;
    const check = () => {
      if (received >= expected || Date.now() > deadline) {
        const lost = Math.max(gaps, expected - received);
        if (lost > 0) cLost.add(lost);
        guardianApi.ws.close();
      } else setTimeout(check, 50);
    };
    check();
  }

  // Rider state.
  let route = null, navStarted = 0, needStart = true, origin = -1, dest = -1, nextOrigin = -1;
  let deviation = null, deviations = 0, atEnd = 0, nextTick = Date.now() + uniform(INTERVAL[0], INTERVAL[1]);
  let tickTimer = null, stopping = false;

  function position(at) {
    if (!route) return [STATIONS[origin][1], STATIONS[origin][2]];
    const d = SPEED_MPS * (at - navStarted) / 1000 / SCALE;
    let p = route.points[route.points.length - 1];
    for (let i = 1; i < route.points.length; i++) {
      if (route.cum[i] >= d) {
        const a = route.points[i - 1], b = route.points[i];
        const span = route.cum[i] - route.cum[i - 1];
        const f = span > 0 ? Math.max(0, (d - route.cum[i - 1]) / span) : 1;
        p = [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f];
        break;
      }
    }
    if (deviation && d > 0.4 * route.cum[route.cum.length - 1]) p = offset(p, deviation[0], deviation[1]);
    if (d >= route.cum[route.cum.length - 1] && ++atEnd > 5) needStart = true;
    return p;
  }

  function start(api, scheduled) {
    origin = nextOrigin >= 0 ? nextOrigin : Math.floor(Math.random() * STATIONS.length);
    nextOrigin = -1;
    do { dest = Math.floor(Math.random() * STATIONS.length); } while (dest === origin);
    route = null; needStart = false; navStarted = scheduled; deviations = 0; atEnd = 0;
    deviation = deviating ? [uniform(1500, 3000), uniform(0, 2 * Math.PI)] : null;
    api.send({ type: 'start_navigation', origin: STATIONS[origin][0], destination: STATIONS[dest][0],
      disability_type: weighted(TYPES) }, tStart, scheduled, 10000);
  }

  function tick(api) {
    const scheduled = nextTick;
    api.sweep(Date.now());
    nextTick += uniform(INTERVAL[0], INTERVAL[1]);
    if (needStart || Math.random() < START_W / (START_W + UPDATE_W)) {
      start(api, scheduled);
    } else {
      const p = offset(position(scheduled), uniform(10, 50), uniform(0, 2 * Math.PI));
      api.send({ type: 'location_update', latitude: p[0], longitude: p[1],
        accuracy: Math.round(uniform(10, 50)) }, tUpdate, scheduled, 3000);
    }
    schedule(api);
  }

  function schedule(api) {
    // A rider that fell behind its schedule stops at the end all the same.
    if (nextTick >= endAt || Date.now() >= endAt) {
      // Stop: let the replies in flight arrive (up to 3 s), then close.
      const finish = () => {
        api.sweep(Date.now());
        if (api.pendingCount() === 0 || Date.now() > endAt + 3000) {
          stopping = true; riderDone = true; api.ws.close(); finishGuardian();
        } else {
          tickTimer = setTimeout(finish, 50);
        }
      };
      tickTimer = setTimeout(finish, Math.max(0, endAt - Date.now()));
      return;
    }
    tickTimer = setTimeout(() => tick(api), Math.max(0, nextTick - Date.now()));
  }

  function navigate(api) {
    start(api, Date.now());
    schedule(api);
  }

  const riderApi = session(`${HOST}/api/v1/ws/${rider.user_id}?token=${rider.access_token}`,
    (api) => {
      if (guardian) {
        api.send({ type: 'share_navigation', guardian_id: guardian.user_id }, tShare, Date.now(), 10000);
      } else {
        navigate(api);
      }
    },
    (api, msg) => {
      if (msg.type === 'shared') {
        guardianApi = session(`${HOST}/api/v1/ws/${guardian.user_id}?token=${guardian.access_token}`,
          (g) => g.send({ type: 'watch', user_id: rider.user_id }, tWatch, Date.now(), 10000),
          (g, m) => { if (m.type === 'watching') { watching = true; navigate(riderApi); } },
          (g, m) => {
            if (m.type !== 'peer_event') return;
            tFanout.add(Date.now() - m.sent_at_us / 1000);
            const last = lastSeq[m.origin_node];
            if (last === undefined || m.seq === last + 1 || m.seq === 1) { lastSeq[m.origin_node] = m.seq; received++; }
            else if (m.seq > last + 1) { gaps += m.seq - last - 1; cGaps.add(m.seq - last - 1); lastSeq[m.origin_node] = m.seq; received++; }
            else if (m.seq === last) cDup.add(1);
            else { cReorder.add(1); received++; }
          });
        return;
      }
      if (msg.type === 'error') { if (!route) needStart = true; return; }
      if (watching && ['route_calculated', 'navigation_update', 'route_deviation', 'arrival'].includes(msg.type)) expected++;
      if (msg.type === 'route_calculated') {
        const r = msg.routes.find((x) => x.rank === msg.selected_route_rank) || msg.routes[0];
        const points = r.stations.map((s) => [s.lat, s.lon]);
        const cum = [0];
        for (let i = 1; i < points.length; i++) cum.push(cum[i - 1] + haversine(points[i - 1], points[i]));
        route = { points, cum };
      } else if (msg.type === 'route_deviation') {
        if (++deviations >= 3) needStart = true;
      } else if (msg.type === 'arrival') {
        needStart = true; nextOrigin = dest;
      }
    },
    () => {},
    () => { if (tickTimer) clearTimeout(tickTimer); if (!riderDone) finishGuardian(); });
}
