//! The server's counters, rendered in the Prometheus text format at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the request latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds of the batch size histogram's buckets (images per forward).
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Default)]
pub struct Metrics {
    /// (route, status) -> count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Latency of `POST /v1/predict`, whatever its status.
    latency: Histogram<13>,
    batch_sizes: Histogram<8>,
    /// Images waiting for the model.
    pub queue_depth: AtomicUsize,
    images: AtomicU64,
    faces: AtomicU64,
    faces_too_small: AtomicU64,
}

struct Histogram<const N: usize> {
    counts: [AtomicU64; N],
    /// Observations above every bucket (only in `+Inf`).
    overflow: AtomicU64,
    /// Sum of observations in micro-units, kept as an integer to stay atomic.
    sum_micros: AtomicU64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            overflow: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Histogram<N> {
    fn observe(&self, bounds: &[f64; N], value: f64) {
        match bounds.iter().position(|&b| value <= b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_micros
            .fetch_add((value * 1e6).round() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str, bounds: &[f64; N]) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.overflow.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

impl Metrics {
    pub fn record_request(&self, route: &str, status: u16, latency: Option<Duration>) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((route.to_string(), status)).or_default() += 1;
        }
        if let Some(latency) = latency {
            self.latency
                .observe(&LATENCY_BUCKETS, latency.as_secs_f64());
        }
    }

    pub fn record_batch(&self, images: usize) {
        self.batch_sizes.observe(&BATCH_BUCKETS, images as f64);
    }

    pub fn record_prediction(&self, faces: usize, too_small: usize) {
        self.images.fetch_add(1, Ordering::Relaxed);
        self.faces.fetch_add(faces as u64, Ordering::Relaxed);
        self.faces_too_small
            .fetch_add(too_small as u64, Ordering::Relaxed);
    }

    /// Requests answered so far with `status` on `route`.
    pub fn requests(&self, route: &str, status: u16) -> u64 {
        self.requests
            .lock()
            .map(|r| r.get(&(route.to_string(), status)).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn render(&self, open_connections: usize) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP gfer_http_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE gfer_http_requests_total counter\n");
        if let Ok(requests) = self.requests.lock() {
            for ((route, status), count) in requests.iter() {
                let _ = writeln!(
                    out,
                    "gfer_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
                );
            }
        }
        self.latency.render(
            &mut out,
            "gfer_predict_request_duration_seconds",
            "Time from receiving a POST /v1/predict to answering it.",
            &LATENCY_BUCKETS,
        );
        self.batch_sizes.render(
            &mut out,
            "gfer_batch_images",
            "Images per batch the model worker ran together.",
            &BATCH_BUCKETS,
        );
        let gauges = [
            (
                "gfer_queue_depth",
                "gauge",
                "Images waiting for the model worker.",
                self.queue_depth.load(Ordering::Relaxed) as u64,
            ),
            (
                "gfer_open_connections",
                "gauge",
                "Client connections open now.",
                open_connections as u64,
            ),
            (
                "gfer_images_total",
                "counter",
                "Images predicted.",
                self.images.load(Ordering::Relaxed),
            ),
            (
                "gfer_faces_total",
                "counter",
                "Faces found and classified.",
                self.faces.load(Ordering::Relaxed),
            ),
            (
                "gfer_faces_too_small_total",
                "counter",
                "Faces found but smaller than the minimum face size.",
                self.faces_too_small.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        for ms in [3, 7, 7, 400, 90_000] {
            metrics.record_request("/v1/predict", 200, Some(Duration::from_millis(ms)));
        }
        let text = metrics.render(2);
        assert!(text.contains("gfer_predict_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("gfer_predict_request_duration_seconds_bucket{le=\"0.01\"} 3\n"));
        assert!(text.contains("gfer_predict_request_duration_seconds_bucket{le=\"0.5\"} 4\n"));
        assert!(text.contains("gfer_predict_request_duration_seconds_bucket{le=\"60\"} 4\n"));
        assert!(text.contains("gfer_predict_request_duration_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(text.contains("gfer_predict_request_duration_seconds_count 5\n"));
        assert!(text.contains("gfer_predict_request_duration_seconds_sum 90.417\n"));
        assert!(text.contains("gfer_http_requests_total{route=\"/v1/predict\",status=\"200\"} 5\n"));
        assert!(text.contains("gfer_open_connections 2\n"));
        assert_eq!(metrics.requests("/v1/predict", 200), 5);
    }
}
