#!/usr/bin/env python3
"""One-off generator: turns data/seoul/parts/*.csv into the final data files.

It was run once to produce data/seoul/{stations,lines,transfers}.csv; parts/
was deleted afterwards, so this script documents how the data came about
rather than being part of any build. Usage: scripts/data/assemble.py <repo>.

Input rows: sequence,line,loop,order,code,name,lat,lon,note (one row per
station of a running sequence; junction stations appear in two sequences).
"""
import csv
import glob
import math
import os
import sys
from collections import OrderedDict, defaultdict

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
PARTS = os.path.join(ROOT, "data", "seoul", "parts")
OUT = os.path.join(ROOT, "data", "seoul")

CITY_HALL = (37.5657, 126.9769)
LINK_RADIUS_M = 600.0
DEFAULT_WALK_M = 133

# Same-named stations that are different places: never linked.
EXCLUSIONS = [
    ("양평", "1217", "2523", "5호선 양평 is in Yeongdeungpo-gu; 경의중앙선 양평 is in Yangpyeong county, ~54 km away"),
    ("신촌", "0240", "1252", "경의중앙선 신촌 is a separate station ~700 m from 2호선 신촌; no official transfer"),
]

# Sequences where trains run in listed order only (one-way).
ONEWAY = {"L6-eungam"}
# Sequences that close back onto their first station.
LOOPS = {"L2-loop", "L6-eungam"}

# Transfer walks and step-free status set from riders' knowledge (approximate):
# (code, code) -> (walk_m, step_free). Everything else gets 133 m, step-free, estimated.
KNOWN_WALKS = {
    ("0329", "2736"): (250, True),   # 고속터미널 3↔7
    ("0329", "4123"): (420, True),   # 고속터미널 3↔9, long corridor
    ("2736", "4123"): (300, True),   # 고속터미널 7↔9
    ("2513", "4102"): (300, True),   # 김포공항 5↔9
    ("2513", "4207"): (350, True),   # 김포공항 5↔공항철도
    ("4102", "4207"): (250, True),   # 김포공항 9↔공항철도
    ("0150", "0426"): (150, True),   # 서울 1↔4
    ("0150", "4201"): (400, True),   # 서울 1↔공항철도 (deep AREX concourse)
    ("0426", "4201"): (450, True),   # 서울 4↔공항철도
    ("1251", "4201"): (300, True),   # 서울 경의중앙↔공항철도
    ("0150", "1251"): (250, True),   # 서울 1↔경의중앙
    ("0426", "1251"): (350, True),   # 서울 4↔경의중앙
    ("0153", "2535"): (450, False),  # 종로3가 1↔5: long, stairs on the way (estimated)
    ("0153", "0319"): (200, True),   # 종로3가 1↔3
    ("0319", "2535"): (250, True),   # 종로3가 3↔5
    ("0321", "0423"): (30, True),    # 충무로 3↔4: nearly cross-platform
    ("1708", "1458"): (20, True),    # 금정 1↔4: cross-platform
    ("1032", "2526"): (350, False),  # 신길 1↔5: long, stairs (estimated)
    ("0411", "2715"): (400, False),  # 노원 4↔7: long walk outside the gates (estimated)
    ("0159", "2637"): (150, False),  # 동묘앞 1↔6: stairs on the transfer (estimated)
    ("4204", "2619"): (350, True),   # 디지털미디어시티 공항철도↔6
    ("1266", "4204"): (200, True),   # 디지털미디어시티 경의중앙↔공항철도
    ("1266", "2619"): (250, True),   # 디지털미디어시티 경의중앙↔6
    ("0432", "2738"): (250, True),   # 이수 4↔7
    ("0216", "2815"): (200, True),   # 잠실 2↔8
    ("0223", "0330"): (200, True),   # 교대 2↔3
    ("0226", "0433"): (200, True),   # 사당 2↔4
    ("1007", "0234"): (150, True),   # 신도림 1↔2
    ("0239", "4203"): (250, True),   # 홍대입구 2↔공항철도
    ("0239", "1264"): (250, True),   # 홍대입구 2↔경의중앙
    ("1264", "4203"): (100, True),   # 홍대입구 경의중앙↔공항철도
    ("0205", "0422"): (150, True),   # 동대문역사문화공원 2↔4
    ("0205", "2537"): (300, True),   # 동대문역사문화공원 2↔5
    ("0422", "2537"): (250, True),   # 동대문역사문화공원 4↔5
    ("0222", "4307"): (200, True),   # 강남 2↔신분당
    ("0220", "1023"): (150, True),   # 선릉 2↔수인분당
    # 4호선 and 수인분당선 share track and platforms from 한대앞 to 오이도.
    ("1755", "1830"): (10, True),
    ("1756", "1831"): (10, True),
    ("1757", "1832"): (10, True),
    ("1758", "1833"): (10, True),
    ("1759", "1834"): (10, True),
    ("1760", "1835"): (10, True),
    ("1761", "1836"): (10, True),
    ("1762", "1800"): (10, True),
}

# Stations counted as hubs for the facility estimate (large, staffed stations).
HUBS = {"천안", "평택", "아산", "온양온천", "신창", "동두천", "소요산", "연천", "용문", "문산", "덕소", "평택지제", "오산", "양주"}

# Codes of lines run by Seoul Metro, Seoul Metro Line 9, 신분당선 and 공항철도
# (underground or fully staffed); everything else here is a Korail commuter line.
def operator(code, line):
    if line in ("9호선", "신분당선", "공항철도", "2호선", "5호선", "6호선", "7호선", "8호선"):
        return "metro"
    if line == "1호선" and code.startswith("01"):
        return "metro"
    if line == "3호선" and code.startswith("03"):
        return "metro"
    if line == "4호선" and code.startswith("04"):
        return "metro"
    return "korail"


def hav(a, b):
    r = 6371008.8
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp = p2 - p1
    dl = math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(h))


def yn(b):
    return "Y" if b else "N"


def facilities(code, name, line, lat, lon):
    """The estimation rule documented in data/README.md."""
    op = operator(code, line)
    d_km = hav(CITY_HALL, (lat, lon)) / 1000.0
    hub = name in HUBS
    if op == "metro":
        return dict(elevator=True, escalator=True, tactile_paving=True, staff_help=True,
                    visual_display=True, audio_guide=True)
    return dict(
        elevator=d_km <= 45 or hub,
        escalator=d_km <= 30 or hub,
        tactile_paving=True,
        staff_help=d_km <= 40 or hub,
        visual_display=d_km <= 45 or hub,
        audio_guide=d_km <= 45 or hub,
    )


def main():
    rows = []
    for f in sorted(glob.glob(os.path.join(PARTS, "*.csv"))):
        with open(f, encoding="utf-8") as fh:
            rows.extend(csv.DictReader(fh))

    stations = OrderedDict()
    seqs = OrderedDict()
    for r in rows:
        code = r["code"]
        lat, lon = float(r["lat"]), float(r["lon"])
        note = r["note"]
        src = "recollection" if "from memory" in note or "approximate" in note else "public-lists"
        if code in stations:
            s = stations[code]
            assert (s["name"], s["line"]) == (r["name"], r["line"]), code
        else:
            stations[code] = dict(code=code, name=r["name"], line=r["line"], lat=lat, lon=lon, src=src)
        seqs.setdefault(r["sequence"], dict(line=r["line"], codes=[]))["codes"].append((int(r["order"]), code))

    with open(os.path.join(OUT, "stations.csv"), "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["code", "name", "line", "lat", "lon", "coord_source", "elevator", "escalator",
                    "tactile_paving", "staff_help", "visual_display", "audio_guide", "facilities_source"])
        for s in sorted(stations.values(), key=lambda s: (s["line"], s["code"])):
            fac = facilities(s["code"], s["name"], s["line"], s["lat"], s["lon"])
            w.writerow([s["code"], s["name"], s["line"], f'{s["lat"]:.5f}', f'{s["lon"]:.5f}', s["src"]]
                       + [yn(fac[k]) for k in ("elevator", "escalator", "tactile_paving", "staff_help",
                                               "visual_display", "audio_guide")]
                       + ["estimated"])

    with open(os.path.join(OUT, "lines.csv"), "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["sequence", "line", "loop", "oneway", "stations"])
        for name, s in seqs.items():
            codes = [c for _, c in sorted(s["codes"])]
            w.writerow([name, s["line"], yn(name in LOOPS), yn(name in ONEWAY), "|".join(codes)])

    excluded = {frozenset((a, b)) for _, a, b, _ in EXCLUSIONS}
    with open(os.path.join(OUT, "transfer_exclusions.csv"), "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["name", "code_a", "code_b", "reason"])
        for e in EXCLUSIONS:
            w.writerow(e)

    by_name = defaultdict(list)
    for s in stations.values():
        by_name[s["name"]].append(s)
    known = {frozenset(k): v for k, v in KNOWN_WALKS.items()}
    used = set()
    out = []
    for name in sorted(by_name):
        group = sorted(by_name[name], key=lambda s: s["code"])
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                a, b = group[i], group[j]
                key = frozenset((a["code"], b["code"]))
                if key in excluded:
                    continue
                d = hav((a["lat"], a["lon"]), (b["lat"], b["lon"]))
                if d > LINK_RADIUS_M:
                    sys.exit(f"{name}: {a['code']}/{b['code']} are {d:.0f} m apart and not excluded")
                if key in known:
                    walk, step_free = known[key]
                    source = "approx"
                    used.add(key)
                else:
                    walk, step_free, source = DEFAULT_WALK_M, True, "estimated"
                out.append([a["code"], b["code"], walk, yn(step_free), source])
    missing = set(known) - used
    assert not missing, missing
    with open(os.path.join(OUT, "transfers.csv"), "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["from_code", "to_code", "walk_m", "step_free", "source"])
        w.writerows(out)
    print(f"{len(stations)} stations, {len(seqs)} sequences, {len(out)} transfers")


if __name__ == "__main__":
    main()
