//! `referral-engine bench SCENARIO`: throughput measured beside a baseline
//! taken in the same run, printed as a table or as one JSON object.
//!
//! * `append`: durable single-event appends/s through the embedded store's
//!   group commit, against a plain SQLite loop with one transaction and one
//!   fsync per append (same schema, same pragmas).
//! * `commands`: full commands/s (load, decide, append) through the command
//!   service, against the same service over a store that commits each append
//!   on its own; `--grpc` drives it through a server over loopback.
//! * `rebuild`: projection rebuild events/s and peak RSS, against reading
//!   and decoding the same events without writing views.
//! * `queries`: inbox page latency through `Views::list`, against the same
//!   page read with plain SQL.
//! * `lag`: time from an acknowledged command to its row in the view,
//!   against the command's own acknowledgement latency.

pub mod append;
pub mod commands;
mod driver;
pub mod lag;
pub mod queries;
pub mod rebuild;
mod workload;

use serde::Serialize;

/// Concurrent writers every scenario is measured at; the last is the headline.
pub const WRITER_COUNTS: [usize; 3] = [1, 16, 64];

/// One measured configuration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchRow {
    /// Concurrent writers (clients, for `queries`; most commands in flight, for `lag`).
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
    /// What the row measures, where the writer count does not say it all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Events in the log the row was measured over (`rebuild`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    /// Wall-clock seconds of the engine's measurement (`rebuild`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Operations per second, where `value` is a latency (`queries`, `lag`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_second: Option<f64>,
    /// Peak resident memory of the process during the engine's measurement, MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    /// Peak resident memory of the process during the baseline's measurement, MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_peak_rss_mb: Option<f64>,
}

/// How `to_table` lays a report out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// Throughput by writer count (`append`, `commands`).
    #[default]
    Writers,
    /// Events/s and memory by log size (`rebuild`).
    Rebuild,
    /// Latency percentiles by row (`queries`, `lag`).
    Latency,
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
    /// What `value` is, where the unit alone does not say it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_description: Option<String>,
    /// The figures the issue asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Peak resident memory of the whole process, set-up included, when
    /// `peak_rss_mb` is the peak of the measured phases only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_peak_rss_mb: Option<f64>,
    /// How the data was set up, and anything else a reader needs to weigh the figures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip)]
    pub layout: Layout,
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
            value_description: None,
            target: None,
            process_peak_rss_mb: None,
            notes: Vec::new(),
            layout: Layout::Writers,
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
        let mut out = match self.layout {
            Layout::Rebuild => format!("bench {}: {}\n", self.scenario, self.unit),
            _ => {
                format!("bench {}: {} ({} s per measurement)\n", self.scenario, self.unit, self.seconds_per_measurement)
            }
        };
        if let Some(what) = &self.value_description {
            out.push_str(&format!("value: {what}\n"));
        }
        out.push_str(&format!("baseline: {}\n", self.baseline_description));
        if let Some(target) = &self.target {
            out.push_str(&format!("target: {target}\n"));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        if let Some(us) = self.fsync_us {
            out.push_str(&format!("disk: a 4 KiB write + fsync takes {us:.0} µs (median of 100)\n"));
        }
        out.push('\n');
        match self.layout {
            Layout::Writers => self.writers_table(&mut out),
            Layout::Rebuild => self.rebuild_table(&mut out),
            Layout::Latency => self.latency_table(&mut out),
        }
        out
    }

    fn writers_table(&self, out: &mut String) {
        let labelled = self.rows.iter().any(|r| r.label.is_some());
        let label = |l: Option<&str>| if labelled { format!("{:<24}  ", l.unwrap_or("")) } else { String::new() };
        out.push_str(&format!(
            "{}{:>7}  {:>12}  {:>12}  {:>7}  {:>16}  {:>16}\n",
            label(Some("measured")),
            "writers",
            "engine",
            "baseline",
            "ratio",
            "engine p50/p99",
            "baseline p50/p99"
        ));
        for row in &self.rows {
            out.push_str(&format!(
                "{}{:>7}  {:>12.0}  {:>12.0}  {:>6.1}x  {:>16}  {:>16}\n",
                label(row.label.as_deref()),
                row.writers,
                row.value,
                row.baseline,
                row.ratio,
                format!("{}/{} µs", row.p50_us, row.p99_us),
                format!("{}/{} µs", row.baseline_p50_us, row.baseline_p99_us),
            ));
        }
        let headline_writers = self.rows.iter().filter(|r| r.value == self.value).map(|r| r.writers).next();
        out.push_str(&format!(
            "\nheadline: {:.0} {} at {} writers, {:.1}x the baseline; peak RSS {:.1} MB",
            self.value,
            self.unit,
            headline_writers.unwrap_or(0),
            self.ratio,
            self.peak_rss_mb
        ));
    }

    fn rebuild_table(&self, out: &mut String) {
        let mb = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0} MB"));
        out.push_str(&format!(
            "{:>9}  {:<22}  {:>10}  {:>10}  {:>6}  {:>8}  {:>9}  {:>9}\n",
            "events", "rebuilding", "engine/s", "baseline/s", "ratio", "seconds", "peak RSS", "base RSS"
        ));
        for row in &self.rows {
            out.push_str(&format!(
                "{:>9}  {:<22}  {:>10.0}  {:>10.0}  {:>5.2}x  {:>8.2}  {:>9}  {:>9}\n",
                row.events.unwrap_or(0),
                row.label.as_deref().unwrap_or(""),
                row.value,
                row.baseline,
                row.ratio,
                row.seconds.unwrap_or(0.0),
                mb(row.peak_rss_mb),
                mb(row.baseline_peak_rss_mb),
            ));
        }
        out.push_str(&format!(
            "\nheadline: {:.0} {}, {:.2}x the baseline; peak RSS {:.1} MB while rebuilding",
            self.value, self.unit, self.ratio, self.peak_rss_mb
        ));
        if let Some(process) = self.process_peak_rss_mb {
            out.push_str(&format!(" ({process:.1} MB for the whole process, set-up included)"));
        }
    }

    fn latency_table(&self, out: &mut String) {
        let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
        out.push_str(&format!(
            "{:<40}  {:>17}  {:>17}  {:>9}  {:>9}\n",
            "measured", "engine p50/p99 ms", "baseline p50/p99", "p99 ratio", "ops/s"
        ));
        for row in &self.rows {
            out.push_str(&format!(
                "{:<40}  {:>17}  {:>17}  {:>8.1}x  {:>9.0}\n",
                row.label.as_deref().unwrap_or(""),
                format!("{}/{}", ms(row.p50_us), ms(row.p99_us)),
                format!("{}/{}", ms(row.baseline_p50_us), ms(row.baseline_p99_us)),
                row.ratio,
                row.per_second.unwrap_or(0.0),
            ));
        }
        out.push_str(&format!(
            "\nheadline: {:.2} {}, {:.1}x the baseline's {:.2}; peak RSS {:.1} MB",
            self.value, self.unit, self.ratio, self.baseline, self.peak_rss_mb
        ));
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

/// Resets this process's peak resident set size (`VmHWM`) to its current
/// size, so that the next reading is the peak of what runs after. Linux only
/// (`/proc/self/clear_refs`); `false` when the kernel refused.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Returns glibc's free heap to the kernel (`malloc_trim`), so that memory one
/// phase of a benchmark freed is not resident in the next. In the binary,
/// glibc serves SQLite; mimalloc, which serves the Rust code, hands freed
/// memory back by itself after a short delay.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::os::raw::c_int;
    }
    // SAFETY: malloc_trim only releases free heap pages; it takes no pointers.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

/// Peak memory per phase: each phase starts from a reset high-water mark,
/// and the process's overall peak is kept across resets.
#[derive(Debug)]
pub struct PhasePeaks {
    process: f64,
    /// Whether the kernel let the mark be reset (else every phase reports
    /// the process's peak so far).
    resettable: bool,
}

impl PhasePeaks {
    pub fn new() -> Self {
        PhasePeaks { process: peak_rss_mb().unwrap_or(0.0), resettable: true }
    }

    /// Starts a phase: remembers the peak so far, hands the memory earlier
    /// phases freed back to the kernel (so that it does not count as this
    /// phase's) and resets the mark.
    pub fn start(&mut self) {
        self.process = self.process.max(peak_rss_mb().unwrap_or(0.0));
        release_free_memory();
        self.resettable &= reset_peak_rss();
    }

    /// The peak since the phase started, MB.
    pub fn finish(&mut self) -> f64 {
        let peak = peak_rss_mb().unwrap_or(0.0);
        self.process = self.process.max(peak);
        peak
    }

    /// What a reader of the figures must know when the mark could not be
    /// reset.
    pub fn caveat(&self) -> Option<String> {
        (!self.resettable)
            .then(|| "the kernel refused to reset VmHWM: each phase's peak includes everything before it".into())
    }

    /// The process's peak over every phase, MB.
    pub fn process(&self) -> f64 {
        self.process.max(peak_rss_mb().unwrap_or(0.0))
    }
}

impl Default for PhasePeaks {
    fn default() -> Self {
        Self::new()
    }
}

/// The `p`-th percentile (0–1) of sorted microsecond latencies.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("an operation failed during the run: {0}")]
    Operation(String),
}
