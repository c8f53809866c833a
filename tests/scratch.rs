use navcast::network::*;
#[test]
fn scratch() {
    let n = Network::embedded();
    let e = RouteEngine::new(n.clone(), Profiles::embedded(), 0);
    for (o, d) in [("강남","홍대입구"),("서울","잠실"),("영등포","여의도"),("신창","연천"),("인천공항2터미널","광교"),("사당","신도림"),("김포공항","고속터미널"),("응암","구산"),("구산","응암")] {
        for dt in DisabilityType::ALL {
            let t = std::time::Instant::now();
            let rs = e.routes(o, d, dt).unwrap();
            let el = t.elapsed();
            println!("{o}->{d} {dt} {:?}", el);
            for r in &rs.routes {
                println!("  #{} {:?} t={} x={} at {:?} d={} s={} stops={}", r.rank, r.lines, r.total_time_min, r.transfers, r.transfer_stations, r.distance_m, r.score, r.stops.len());
            }
        }
    }
    println!("{:?}", n.resolve("강냠"));
    println!("{:?}", n.resolve("구로디지"));
    println!("{:?}", n.search("신", 10).iter().map(|s| format!("{} {}", s.name, s.line)).collect::<Vec<_>>());
}
