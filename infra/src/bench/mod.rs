//! `referral-engine bench SCENARIO`: throughput measured beside a baseline
//! taken in the same run, printed as a table or as one JSON object.
//!
//! * `append`: durable single-event appends/s through the embedded store's
//!   group commit, against a plain SQLite loop with one transaction and one
//!   fsync per append (same schema, same pragmas).
//! * `commands`: full commands/s (load, decide, append) through the command
//!   service, against the same service over a store that commits each append
//!   on its own; `--grpc` drives it through a server over loopback.

pub mod append;
pub mod commands;
mod driver;

use serde::Serialize;

/// Concurrent writers every scenario is measured at; the last is the headline.
pub const WRITER_COUNTS: [usize; 3] = [1, 16, 64];

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub writers: usize,
    /// Operations per second of the engine.
    pub value: f64,
    /// Operations per second of the baseline.
    pub baseline: f64,
    pub ratio: f64,
    /// Engine latency per operation, microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
    pub baseline_p50_us: u64,
    pub baseline_p99_us: u64,
}

/// What a scenario reports.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub scenario: String,
    /// The headline figure: the engine at the most writers.
    pub value: f64,
    pub unit: String,
    pub baseline: f64,
    pub ratio: f64,
    /// Peak resident memory of this process (engine, baseline and load).
    pub peak_rss_mb: f64,
    pub baseline_description: String,
    pub seconds_per_measurement: f64,
    /// Median time of a 4 KiB write plus fsync in the benchmark's directory,
    /// measured in the same run: what every durable commit pays at least.
    pub fsync_us: Option<f64>,
    pub rows: Vec<BenchRow>,
}

impl BenchReport {
    pub fn new(scenario: &str, unit: &str, baseline_description: &str, seconds: f64, rows: Vec<BenchRow>) -> Self {
        let headline = rows.last().cloned();
        BenchReport {
            scenario: scenario.into(),
            value: headline.as_ref().map_or(0.0, |r| r.value),
            unit: unit.into(),
            baseline: headline.as_ref().map_or(0.0, |r| r.baseline),
            ratio: headline.as_ref().map_or(0.0, |r| r.ratio),
            peak_rss_mb: peak_rss_mb().unwrap_or(0.0),
            baseline_description: baseline_description.into(),
            seconds_per_measurement: seconds,
            fsync_us: None,
            rows,
        }
    }

    /// Adds the disk's fsync time, measured in `dir`.
    pub fn with_fsync_of(mut self, dir: &std::path::Path) -> Self {
        self.fsync_us = fsync_micros(dir).ok();
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_table(&self) -> String {
        let mut out =
            format!("bench {}: {} ({} s per measurement)\n", self.scenario, self.unit, self.seconds_per_measurement);
        out.push_str(&format!("baseline: {}\n", self.baseline_description));
        if let Some(us) = self.fsync_us {
            out.push_str(&format!("disk: a 4 KiB write + fsync takes {us:.0} µs (median of 100)\n"));
        }
        out.push('\n');
        out.push_str(&format!(
            "{:>7}  {:>12}  {:>12}  {:>7}  {:>16}  {:>16}\n",
            "writers", "engine", "baseline", "ratio", "engine p50/p99", "baseline p50/p99"
        ));
        for row in &self.rows {
            out.push_str(&format!(
                "{:>7}  {:>12.0}  {:>12.0}  {:>6.1}x  {:>16}  {:>16}\n",
                row.writers,
                row.value,
                row.baseline,
                row.ratio,
                format!("{}/{} µs", row.p50_us, row.p99_us),
                format!("{}/{} µs", row.baseline_p50_us, row.baseline_p99_us),
            ));
        }
        out.push_str(&format!(
            "\nheadline: {:.0} {} at {} writers, {:.1}x the baseline; peak RSS {:.1} MB",
            self.value,
            self.unit,
            self.rows.last().map_or(0, |r| r.writers),
            self.ratio,
            self.peak_rss_mb
        ));
        out
    }
}

/// Median microseconds of a 4 KiB write and fsync of a scratch file in `dir`.
pub fn fsync_micros(dir: &std::path::Path) -> std::io::Result<f64> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("fsync-probe.tmp");
    let mut file = std::fs::File::create(&path)?;
    let block = [0u8; 4096];
    let mut times = Vec::with_capacity(100);
    for _ in 0..100 {
        let started = std::time::Instant::now();
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&block)?;
        file.sync_all()?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Peak resident set size of this process (`VmHWM`), in MB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("an operation failed during the run: {0}")]
    Operation(String),
}
