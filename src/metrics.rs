//! A small Prometheus registry: labelled counters, gauges and histograms rendered in the text
//! exposition format for `/metrics`.
//!
//! Design decision: hand-written rather than a metrics crate, because Tandem needs a handful of
//! families and the text format is simple. Families are registered once (at start-up or lazily
//! by name; registering the same name again returns the same family) and cloned into the code
//! that updates them. Each family keeps its label sets in a mutex-guarded map: updates are a
//! short lock, far below the cost of the work they measure. Label values must be bounded (route
//! templates, status codes, stage names), never ids.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Default latency buckets in seconds, 1 ms to 30 s: covers REST calls and pipeline stages.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

type Labels = Vec<(&'static str, String)>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Metric values are plain numbers; a panic mid-update cannot leave them inconsistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// A family of monotonically increasing counters.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<Mutex<BTreeMap<Labels, u64>>>);

impl Counter {
    pub fn inc(&self, labels_: &[(&'static str, &str)]) {
        self.inc_by(labels_, 1);
    }

    pub fn inc_by(&self, labels_: &[(&'static str, &str)], n: u64) {
        *lock(&self.0).entry(labels(labels_)).or_default() += n;
    }

    /// Current value for a label set (0 if never incremented); for tests and diagnostics.
    pub fn get(&self, labels_: &[(&'static str, &str)]) -> u64 {
        lock(&self.0).get(&labels(labels_)).copied().unwrap_or(0)
    }
}

/// A family of values that go up and down (open sockets, queue depth).
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<Mutex<BTreeMap<Labels, i64>>>);

impl Gauge {
    pub fn add(&self, labels_: &[(&'static str, &str)], delta: i64) {
        *lock(&self.0).entry(labels(labels_)).or_default() += delta;
    }

    pub fn set(&self, labels_: &[(&'static str, &str)], value: i64) {
        lock(&self.0).insert(labels(labels_), value);
    }

    pub fn get(&self, labels_: &[(&'static str, &str)]) -> i64 {
        lock(&self.0).get(&labels(labels_)).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
struct HistogramData {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A family of histograms sharing one bucket layout.
#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: Arc<[f64]>,
    data: Arc<Mutex<BTreeMap<Labels, HistogramData>>>,
}

impl Histogram {
    fn new(buckets: &[f64]) -> Self {
        let mut b: Vec<f64> = buckets.iter().copied().filter(|v| v.is_finite()).collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        Self {
            buckets: b.into(),
            data: Arc::default(),
        }
    }

    pub fn observe(&self, labels_: &[(&'static str, &str)], value: f64) {
        let slot = self
            .buckets
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.buckets.len());
        let mut data = lock(&self.data);
        let h = data
            .entry(labels(labels_))
            .or_insert_with(|| HistogramData {
                counts: vec![0; self.buckets.len() + 1],
                sum: 0.0,
                count: 0,
            });
        h.counts[slot] += 1;
        h.sum += value;
        h.count += 1;
    }

    /// Observes a duration in seconds, the Prometheus base unit.
    pub fn observe_duration(&self, labels_: &[(&'static str, &str)], d: Duration) {
        self.observe(labels_, d.as_secs_f64());
    }

    /// Number of observations for a label set; for tests and diagnostics.
    pub fn count(&self, labels_: &[(&'static str, &str)]) -> u64 {
        lock(&self.data)
            .get(&labels(labels_))
            .map_or(0, |h| h.count)
    }
}

#[derive(Debug, Clone)]
enum Family {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

#[derive(Debug)]
struct Entry {
    help: &'static str,
    family: Family,
}

/// The process's metric families, plus the HTTP ones every request updates.
#[derive(Debug)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Entry>>,
    /// `tandem_http_requests_total{method,route,status}`.
    pub http_requests: Counter,
    /// `tandem_http_request_duration_seconds{method,route}`.
    pub http_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self {
            families: Mutex::new(BTreeMap::new()),
            http_requests: Counter::default(),
            http_duration: Histogram::new(LATENCY_BUCKETS),
        };
        m.insert(
            "tandem_http_requests_total",
            "HTTP requests by method, route template and status.",
            Family::Counter(m.http_requests.clone()),
        );
        m.insert(
            "tandem_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            Family::Histogram(m.http_duration.clone()),
        );
        m
    }

    fn insert(&self, name: &'static str, help: &'static str, family: Family) -> Family {
        lock(&self.families)
            .entry(name)
            .or_insert(Entry { help, family })
            .family
            .clone()
    }

    /// Registers (or returns the already registered) counter family `name`.
    ///
    /// If `name` is already registered as another kind, a detached counter is returned and the
    /// clash is logged: metrics must never take the service down.
    pub fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        match self.insert(name, help, Family::Counter(Counter::default())) {
            Family::Counter(c) => c,
            _ => {
                tracing::error!(
                    metric = name,
                    "metric registered twice with different kinds"
                );
                Counter::default()
            }
        }
    }

    /// Registers (or returns) gauge family `name`; kind clashes as for [`Metrics::counter`].
    pub fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        match self.insert(name, help, Family::Gauge(Gauge::default())) {
            Family::Gauge(g) => g,
            _ => {
                tracing::error!(
                    metric = name,
                    "metric registered twice with different kinds"
                );
                Gauge::default()
            }
        }
    }

    /// Registers (or returns) histogram family `name` with `buckets` (upper bounds, seconds
    /// for latencies; `+Inf` is implicit). Kind clashes as for [`Metrics::counter`].
    pub fn histogram(&self, name: &'static str, help: &'static str, buckets: &[f64]) -> Histogram {
        match self.insert(name, help, Family::Histogram(Histogram::new(buckets))) {
            Family::Histogram(h) => h,
            _ => {
                tracing::error!(
                    metric = name,
                    "metric registered twice with different kinds"
                );
                Histogram::new(buckets)
            }
        }
    }

    /// Everything in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, entry) in lock(&self.families).iter() {
            let kind = match entry.family {
                Family::Counter(_) => "counter",
                Family::Gauge(_) => "gauge",
                Family::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}", entry.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            match &entry.family {
                Family::Counter(c) => {
                    for (l, v) in lock(&c.0).iter() {
                        let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
                    }
                }
                Family::Gauge(g) => {
                    for (l, v) in lock(&g.0).iter() {
                        let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
                    }
                }
                Family::Histogram(h) => {
                    for (l, data) in lock(&h.data).iter() {
                        let mut cumulative = 0;
                        for (i, n) in data.counts.iter().enumerate() {
                            cumulative += n;
                            let le = h
                                .buckets
                                .get(i)
                                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {cumulative}",
                                fmt_labels(l, Some(&le))
                            );
                        }
                        let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(l, None), data.sum);
                        let _ = writeln!(out, "{name}_count{} {}", fmt_labels(l, None), data.count);
                    }
                }
            }
        }
        out
    }
}

fn fmt_labels(labels_: &Labels, le: Option<&str>) -> String {
    if labels_.is_empty() && le.is_none() {
        return String::new();
    }
    let mut parts: Vec<String> = labels_
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    format!("{{{}}}", parts.join(","))
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counter_and_histogram() {
        let m = Metrics::new();
        m.http_requests
            .inc(&[("method", "GET"), ("route", "/x"), ("status", "200")]);
        m.http_duration
            .observe(&[("method", "GET"), ("route", "/x")], 0.003);
        let ws = m.gauge("tandem_ws_open", "Open sockets.");
        ws.add(&[("path", "audio")], 2);
        ws.add(&[("path", "audio")], -1);
        let text = m.render();
        assert!(text.contains("# TYPE tandem_http_requests_total counter"));
        assert!(
            text.contains(r#"tandem_http_requests_total{method="GET",route="/x",status="200"} 1"#)
        );
        assert!(text.contains(
            r#"tandem_http_request_duration_seconds_bucket{method="GET",route="/x",le="0.0025"} 0"#
        ));
        assert!(text.contains(
            r#"tandem_http_request_duration_seconds_bucket{method="GET",route="/x",le="0.005"} 1"#
        ));
        assert!(text.contains(
            r#"tandem_http_request_duration_seconds_bucket{method="GET",route="/x",le="+Inf"} 1"#
        ));
        assert!(text
            .contains(r#"tandem_http_request_duration_seconds_count{method="GET",route="/x"} 1"#));
        assert!(text.contains(r#"tandem_ws_open{path="audio"} 1"#));
    }

    #[test]
    fn registering_twice_returns_same_family() {
        let m = Metrics::new();
        let a = m.counter("c_total", "c");
        let b = m.counter("c_total", "c");
        a.inc(&[]);
        assert_eq!(b.get(&[]), 1);
        assert!(m.render().contains("c_total 1"));
        // A kind clash yields a detached family instead of a panic.
        let h = m.histogram("c_total", "c", LATENCY_BUCKETS);
        h.observe(&[], 1.0);
        assert_eq!(b.get(&[]), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.counter("e_total", "e").inc(&[("k", "a\"b\\c\nd")]);
        assert!(m.render().contains(r#"e_total{k="a\"b\\c\nd"} 1"#));
    }
}
