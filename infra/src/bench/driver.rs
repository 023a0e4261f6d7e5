//! Runs N concurrent workers for a fixed time and measures operations/s and
//! per-operation latency.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::BenchError;

/// One concurrent writer; each `step` is one measured operation.
#[async_trait]
pub(crate) trait Worker: Send + 'static {
    async fn step(&mut self) -> Result<(), String>;
}

/// What one run measured.
pub(crate) struct Measured {
    pub per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// Runs `workers` for `duration` and counts the steps they complete.
pub(crate) async fn drive(workers: Vec<Box<dyn Worker>>, duration: Duration) -> Result<Measured, BenchError> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(4096);
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    worker.step().await?;
                    latencies.push(begun.elapsed().as_micros() as u64);
                }
                Ok::<_, String>(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        let latencies = task.await.map_err(|e| BenchError::Operation(e.to_string()))?.map_err(BenchError::Operation)?;
        all.extend(latencies);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let percentile = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied();
    Ok(Measured {
        per_second: all.len() as f64 / elapsed,
        p50_us: percentile(0.50).unwrap_or(0),
        p99_us: percentile(0.99).unwrap_or(0),
    })
}
