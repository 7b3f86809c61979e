use super::*;

#[test]
fn the_report_files_hold_every_second_and_the_percentiles() {
    let mut latency = new_histogram();
    for micros in [100, 200, 300, 5000] {
        latency.record(micros).unwrap();
    }
    let each_second = latency.clone();
    let second = |at_s: f64| Second {
        at_s,
        msgs_per_sec: 1000.0 * at_s,
        mb_per_sec: 1.0,
        p50_us: 200,
        p99_us: 5000,
        max_us: 5000,
        broker_cpu_us_per_msg: Some(3.5),
        latency: each_second.clone(),
        consumed: Some((900.0, 100)),
    };
    let summary = Summary {
        engine: "loop",
        connections: 2,
        threads: 1,
        window: 1,
        size: 1024,
        batch: 1,
        topics: 2,
        queues: 8,
        rate: 0.0,
        subscriptions: 1,
        workload: Some("two topics".into()),
        mode: "sync".into(),
        flush: "sync".into(),
        role: "master".into(),
        slaves_in_sync: None,
        elapsed_s: 2.0,
        sent: 4,
        ok: 4,
        not_ok: 0,
        errors: 0,
        kinds: vec![("FLUSH_DISK_TIMEOUT".into(), 1)],
        ended_early: None,
        msgs_per_sec: 2.0,
        mb_per_sec: 0.002,
        latency,
        fsyncs: 2,
        records_per_fsync: 2.0,
        broker_cpu_us_per_msg: Some(3.5),
        bench_cpu_us_per_msg: 1.0,
        fsync_p50_us: None,
        consumers: None,
        seconds: vec![second(1.0), second(2.0)],
    };
    let dir = tempfile::tempdir().unwrap();
    summary.write_out(dir.path()).unwrap();
    let csv = std::fs::read_to_string(dir.path().join("seconds.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.contains("2.0,2000.0,1.00,200,5000,5000,3.50"), "{csv}");
    let svg = std::fs::read_to_string(dir.path().join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(svg.contains(">p99.99<"));
    let json = summary.json();
    let p9999 = summary.latency.value_at_quantile(0.9999);
    assert!(
        json.contains(&format!("\"p9999_us\":{p9999}")) && (4995..=5005).contains(&p9999),
        "{json}"
    );
    assert!(json.contains("\"FLUSH_DISK_TIMEOUT\":1"), "{json}");
    assert!(summary.text().contains("p90 "));
    let omb = summary.omb_result();
    assert_eq!(omb["workload"], "two topics");
    assert_eq!(omb["partitions"], 16);
    assert_eq!(omb["producersPerTopic"], 1);
    assert_eq!(omb["publishRate"].as_array().unwrap().len(), 2);
    assert_eq!(omb["backlog"][1], 100);
    let p99_ms = omb["aggregatedPublishLatency99pct"].as_f64().unwrap();
    assert!((4.9..=5.1).contains(&p99_ms), "{omb}");
    assert!(
        omb["aggregatedPublishLatencyQuantiles"]["99"].is_number(),
        "{omb}"
    );
}
