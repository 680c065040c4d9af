//! What the benchmarks share: the flat 8-field event, its generator, and measurements.
#![allow(dead_code)]

use prost::Message;

/// What prost-build generates for `protolake.examples.v1.FlatEvent`.
#[derive(Clone, PartialEq, Message)]
pub struct FlatEvent {
    #[prost(int64, tag = "1")]
    pub ts_ms: i64,
    #[prost(string, tag = "2")]
    pub id: String,
    #[prost(string, tag = "3")]
    pub event_type: String,
    #[prost(string, tag = "4")]
    pub url: String,
    #[prost(int32, tag = "5")]
    pub slot: i32,
    #[prost(double, tag = "6")]
    pub price: f64,
    #[prost(bool, tag = "7")]
    pub viewable: bool,
    #[prost(string, tag = "8")]
    pub country: String,
}

/// Event `i` of `n`: a UUID-like id, a low-cardinality type, a ~70-byte URL, a 2-letter
/// country, and timestamps spread evenly over one day.
pub fn flat_event(i: usize, n: usize) -> FlatEvent {
    const TYPES: [&str; 4] = ["impression", "click", "view", "conversion"];
    const COUNTRIES: [&str; 6] = ["DE", "US", "FR", "BR", "JP", "IN"];
    FlatEvent {
        ts_ms: 1_763_683_200_000 + (i as i64 * 86_400_000) / n.max(1) as i64,
        id: format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", i * 7919, i % 65536, i % 4096, (i * 31) % 4096, i),
        event_type: TYPES[i % 4].to_string(),
        url: format!("https://www.example-news-site.com/section/world/article-{:06}?ref=home", i % 100_000),
        slot: (i % 12) as i32,
        price: 0.01 + (i % 5000) as f64 / 997.0,
        viewable: !i.is_multiple_of(3),
        country: COUNTRIES[i % 6].to_string(),
    }
}

pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A comma-separated list of numbers, e.g. `--workers 1,2`.
pub fn list_arg(name: &str, default: &str) -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    let text = args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, String::as_str);
    text.split(',').map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name} {default}: numbers"))).collect()
}

pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User + system CPU time of this process.
#[allow(dead_code)]
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Resets this process's peak RSS (VmHWM), so a later phase is measured alone.
#[allow(dead_code)]
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
