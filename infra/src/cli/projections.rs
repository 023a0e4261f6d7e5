//! Operator subcommands for the projections: `projections status`,
//! `projections rebuild NAME...`, `projections retry NAME` and
//! `projections abandon NAME`.
//!
//! By default they ask a running server (`ProjectionAdmin`, operator token).
//! With `--data-dir` they work offline, in this process, on a data directory
//! no server is running on: they open the embedded event store (whose lock
//! file keeps a running server's directory out of reach) and the view
//! database, and drive a `Projector` directly.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use referral_domain::eventlog::EventStore;
use referral_projections::{Projector, RunnerOptions, ViewDb, ViewError};
use serde_json::{json, Value};

use super::client::{self, Connection};
use super::output::{self, emit, Failure};
use super::table::Table;
use crate::grpc::admin_service::projections_to_pb;
use crate::grpc::auth::AdminClient;
use crate::grpc::pb;
use crate::server::{self, ServeError};

/// How often `rebuild` asks how far the new version is.
const POLL: Duration = Duration::from_millis(200);

#[derive(Subcommand)]
pub enum ProjectionsCommand {
    /// Every projection version: state, checkpoint, head, lag, events/s, last error.
    Status(Target),
    /// Rebuild a projection blue/green from the start of the log; waits until the new version is active.
    Rebuild(RebuildArgs),
    /// Resume a failed projection from the event it failed on.
    Retry(OneProjection),
    /// Abandon a projection's rebuild in progress (failed or not): drop the version being built.
    Abandon(OneProjection),
}

/// Where the projections are: a running server (the default) or a data directory.
#[derive(Args, Clone)]
pub struct Target {
    /// Work offline on this data directory, in this process, instead of asking a server.
    /// Refused while a server runs on the directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args)]
pub struct RebuildArgs {
    /// referrals, timeline, history or deadlines; several are rebuilt together,
    /// reading the log once for all of them.
    #[arg(required = true, num_args = 1..)]
    names: Vec<String>,
    /// Return as soon as the rebuild has started (against a server only).
    #[arg(long, conflicts_with = "data_dir")]
    no_wait: bool,
    #[command(flatten)]
    target: Target,
}

/// One projection, by name, and where it is.
#[derive(Args)]
pub struct OneProjection {
    /// referrals, timeline, history or deadlines.
    name: String,
    #[command(flatten)]
    target: Target,
}

/// Runs one `projections` subcommand and prints its result.
pub async fn run(command: ProjectionsCommand) -> ExitCode {
    let target = match &command {
        ProjectionsCommand::Status(t) => t,
        ProjectionsCommand::Rebuild(a) => &a.target,
        ProjectionsCommand::Retry(a) | ProjectionsCommand::Abandon(a) => &a.target,
    };
    let as_json = target.conn.json;
    let mut backend = match Backend::open(target).await {
        Ok(b) => b,
        Err(failure) => {
            output::print_failure(&failure, as_json);
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        ProjectionsCommand::Status(_) => status(&mut backend, as_json).await,
        ProjectionsCommand::Rebuild(a) => rebuild(&mut backend, &a.names, a.no_wait, as_json).await,
        ProjectionsCommand::Retry(a) => retry(&mut backend, &a.name, as_json).await,
        ProjectionsCommand::Abandon(a) => abandon(&mut backend, &a.name, as_json).await,
    };
    backend.close().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            output::print_failure(&failure, as_json);
            ExitCode::FAILURE
        }
    }
}

enum Backend {
    Server(AdminClient),
    Offline { dir: PathBuf, projector: Projector, _store: Arc<dyn EventStore> },
}

fn local(e: ViewError) -> Failure {
    Failure::Local(e.to_string())
}

impl Backend {
    async fn open(target: &Target) -> Result<Backend, Failure> {
        match &target.data_dir {
            None => {
                let (channel, bearer) = client::open(&target.conn).await.map_err(Failure::Local)?;
                Ok(Backend::Server(bearer.admin_client(channel)))
            }
            Some(dir) => Backend::offline(dir).await.map_err(Failure::Local),
        }
    }

    async fn offline(dir: &Path) -> Result<Backend, String> {
        if !dir.join(server::EVENTS_DB).is_file() {
            return Err(format!(
                "{} holds no event store ({} is missing); pass the directory the server runs with (its --data-dir)",
                dir.display(),
                server::EVENTS_DB
            ));
        }
        let store = server::open_embedded_store(dir).map_err(|e| match e {
            ServeError::Store { ref reason, .. } if reason.contains("in use by another process") => format!(
                "{e}. A server is probably running on {}: run this command without --data-dir to ask that server \
                 instead (with --server and an operator --token)",
                dir.display()
            ),
            e => e.to_string(),
        })?;
        let views = ViewDb::open(&dir.join(server::VIEWS_DIR)).map_err(|e| e.to_string())?;
        let projector =
            Projector::open(store.clone(), views, referral_projections::all_projections(), RunnerOptions::default())
                .await
                .map_err(|e| e.to_string())?;
        Ok(Backend::Offline { dir: dir.to_path_buf(), projector, _store: store })
    }

    async fn status(&mut self) -> Result<pb::ListProjectionsResponse, Failure> {
        match self {
            Backend::Server(client) => Ok(client.list_projections(pb::ListProjectionsRequest {}).await?.into_inner()),
            Backend::Offline { projector, .. } => {
                projections_to_pb(projector).await.map_err(|s| Failure::Local(s.message().to_string()))
            }
        }
    }

    /// Starts rebuilds of `names` together and returns the versions being
    /// built. Offline, a rebuild of one projection that an earlier run left
    /// unfinished is resumed instead.
    async fn rebuild(&mut self, names: &[String], as_json: bool) -> Result<Vec<u32>, Failure> {
        match self {
            Backend::Server(client) => {
                let response = client
                    .rebuild_projection(pb::RebuildProjectionRequest {
                        name: names[0].clone(),
                        together_with: names[1..].to_vec(),
                    })
                    .await?
                    .into_inner();
                Ok(std::iter::once(response.version).chain(response.together_with_versions).collect())
            }
            Backend::Offline { projector, .. } => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                match projector.rebuild_together(&names).await {
                    Ok(versions) => Ok(versions),
                    Err(ViewError::RebuildInProgress { name, version }) if names.len() == 1 => {
                        if !as_json {
                            eprintln!("an earlier run left version {version} of {name} unfinished; finishing it");
                        }
                        projector.start_one(&name).await.map_err(local)?;
                        Ok(vec![version])
                    }
                    Err(e @ ViewError::RebuildInProgress { .. }) => Err(Failure::Local(format!(
                        "{e}; an unfinished rebuild is finished by rebuilding that projection alone"
                    ))),
                    Err(e) => Err(local(e)),
                }
            }
        }
    }

    async fn retry(&mut self, name: &str) -> Result<bool, Failure> {
        match self {
            Backend::Server(client) => Ok(client
                .retry_projection(pb::RetryProjectionRequest { name: name.to_string() })
                .await?
                .into_inner()
                .was_failed),
            Backend::Offline { projector, .. } => projector.retry(name).await.map_err(local),
        }
    }

    /// The version abandoned, if a rebuild was in progress.
    async fn abandon(&mut self, name: &str) -> Result<Option<u32>, Failure> {
        match self {
            Backend::Server(client) => {
                let response =
                    client.abandon_rebuild(pb::AbandonRebuildRequest { name: name.to_string() }).await?.into_inner();
                Ok(response.abandoned.then_some(response.version))
            }
            Backend::Offline { projector, .. } => projector.abandon(name).await.map_err(local),
        }
    }

    /// Offline: stops the workers this process started and releases the store.
    async fn close(self) {
        if let Backend::Offline { projector, .. } = self {
            projector.shutdown().await;
        }
    }

    fn offline_dir(&self) -> Option<&Path> {
        match self {
            Backend::Server(_) => None,
            Backend::Offline { dir, .. } => Some(dir),
        }
    }
}

fn state_name(state: i32) -> String {
    pb::ProjectionState::try_from(state)
        .ok()
        .filter(|s| *s != pb::ProjectionState::Unspecified)
        .map_or("unknown", |s| s.as_str_name())
        .trim_start_matches("PROJECTION_STATE_")
        .to_ascii_lowercase()
}

fn position_json(p: &Option<pb::LogPosition>) -> Value {
    p.as_ref().map_or(Value::Null, |p| json!({"commit": p.commit, "prepare": p.prepare}))
}

fn position_text(p: &Option<pb::LogPosition>) -> String {
    p.as_ref().map_or_else(|| "-".into(), |p| p.commit.to_string())
}

fn status_json(response: &pb::ListProjectionsResponse) -> Value {
    let projections: Vec<Value> = response
        .projections
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "schema": p.schema,
                "head": position_json(&p.head),
                "versions": p.versions.iter().map(|v| json!({
                    "version": v.version,
                    "schema": v.schema,
                    "active": v.active,
                    "state": state_name(v.state),
                    "checkpoint": position_json(&v.checkpoint),
                    "events_applied": v.events_applied,
                    "lag_events": v.lag_events,
                    "lag_seconds": v.lag_seconds,
                    "events_per_second": v.events_per_second,
                    "progress": v.progress,
                    "eta_seconds": v.eta_seconds,
                    "last_event_at": output::time(&v.last_event_at),
                    "failure": v.failure.as_ref().map(|f| json!({
                        "position": position_json(&f.position),
                        "error": f.error,
                    })),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "projections": projections })
}

fn status_table(response: &pb::ListProjectionsResponse) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "VERSION",
        "ACTIVE",
        "STATE",
        "CHECKPOINT",
        "HEAD",
        "LAG",
        "LAG (S)",
        "EVENTS/S",
        "LAST ERROR",
    ])
    .right(&[1, 4, 5, 6, 7, 8]);
    for p in &response.projections {
        for v in &p.versions {
            let mut state = state_name(v.state).replace('_', " ");
            let moving = [pb::ProjectionState::CatchingUp as i32, pb::ProjectionState::Rebuilding as i32];
            if moving.contains(&v.state) {
                state = format!("{state} {:.0}%", v.progress * 100.0);
            }
            if v.state == pb::ProjectionState::Outdated as i32 {
                state = format!("{state} (schema {}, now {})", v.schema, p.schema);
            }
            let error = v.failure.as_ref().map_or_else(
                || "-".to_string(),
                |f| format!("at position {}: {}", position_text(&f.position), f.error),
            );
            table.row(vec![
                p.name.clone(),
                v.version.to_string(),
                if v.active { "yes" } else { "no" }.into(),
                state,
                position_text(&v.checkpoint),
                position_text(&p.head),
                v.lag_events.to_string(),
                format!("{:.1}", v.lag_seconds),
                format!("{:.1}", v.events_per_second),
                error,
            ]);
        }
    }
    table
}

async fn status(backend: &mut Backend, as_json: bool) -> Result<(), Failure> {
    let response = backend.status().await?;
    if as_json {
        emit!("{}", status_json(&response));
        return Ok(());
    }
    emit!("{}", status_table(&response).render());
    if let Some(dir) = backend.offline_dir() {
        emit!(
            "(read offline from {}: no projection runs in this process, so each state is \"stopped\")",
            dir.display()
        );
    }
    Ok(())
}

fn seconds_text(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

fn progress_bar(building: &[(String, u32)]) -> ProgressBar {
    let style = ProgressStyle::with_template("{spinner} {prefix} [{bar:32}] {pos}/{len} events  {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let names: Vec<String> = building.iter().map(|(name, version)| format!("{name} v{version}")).collect();
    let bar = ProgressBar::new(0).with_style(style).with_prefix(format!("rebuilding {}", names.join(", ")));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// How far one rebuilt version is, from `status`.
struct Progress {
    active: bool,
    applied: u64,
    lag: u64,
    events_per_second: f64,
    eta_seconds: Option<f64>,
}

/// Finds version `version` of `name` in a status answer; an error when it
/// is gone or has failed.
fn progress(response: &pb::ListProjectionsResponse, name: &str, version: u32) -> Result<Progress, Failure> {
    let projection = response
        .projections
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Failure::Local(format!("projection {name} is no longer listed")))?;
    let Some(v) = projection.versions.iter().find(|v| v.version == version) else {
        return Err(Failure::Local(format!(
            "version {version} of {name} is gone: another rebuild replaced it; see `projections status`"
        )));
    };
    if let Some(f) = v.failure.as_ref().filter(|_| !v.active) {
        return Err(Failure::Local(format!(
            "the rebuild of {name} (version {version}) stopped at position {}: {}; fix the cause, then run \
             `referral-engine projections retry {name}`",
            position_text(&f.position),
            f.error
        )));
    }
    Ok(Progress {
        active: v.active,
        applied: v.events_applied,
        lag: v.lag_events,
        events_per_second: v.events_per_second,
        eta_seconds: v.eta_seconds,
    })
}

async fn rebuild(backend: &mut Backend, names: &[String], no_wait: bool, as_json: bool) -> Result<(), Failure> {
    let started = Instant::now();
    let versions = backend.rebuild(names, as_json).await?;
    let building: Vec<(String, u32)> = names.iter().cloned().zip(versions).collect();
    // One name prints one object, as it always has; several print a list.
    let print_json = |objects: Vec<Value>| {
        if objects.len() == 1 {
            emit!("{}", objects[0]);
        } else {
            emit!("{}", Value::Array(objects));
        }
    };
    if no_wait {
        if as_json {
            print_json(building.iter().map(|(n, v)| json!({"name": n, "version": v, "active": false})).collect());
        } else {
            for (name, version) in &building {
                emit!(
                    "rebuilding {name}: version {version} started; follow it with `referral-engine projections status`"
                );
            }
        }
        return Ok(());
    }
    let bar = (!as_json && std::io::stdout().is_terminal()).then(|| progress_bar(&building));
    // Per projection: events applied, and seconds until its version was active.
    let mut done: Vec<Option<(u64, f64)>> = vec![None; building.len()];
    let waited = async {
        loop {
            let response = backend.status().await?;
            let (mut applied, mut total, mut rate, mut eta) = (0, 0, 0.0, None::<f64>);
            for ((name, version), finished) in building.iter().zip(done.iter_mut()) {
                let p = progress(&response, name, *version)?;
                if p.active && finished.is_none() {
                    *finished = Some((p.applied, started.elapsed().as_secs_f64()));
                }
                applied += p.applied;
                total += p.applied + if p.active { 0 } else { p.lag };
                rate += p.events_per_second;
                if let Some(e) = p.eta_seconds.filter(|_| !p.active) {
                    eta = Some(eta.map_or(e, |longest: f64| longest.max(e)));
                }
            }
            if done.iter().all(Option::is_some) {
                return Ok::<(), Failure>(());
            }
            if let Some(bar) = &bar {
                bar.set_length(total);
                bar.set_position(applied);
                let eta = eta.map_or_else(|| "-".into(), seconds_text);
                bar.set_message(format!("{rate:.0} events/s, ETA {eta}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    waited?;
    let mut objects = Vec::new();
    for ((name, version), finished) in building.iter().zip(&done) {
        let (events, seconds) = finished.unwrap_or_default();
        let rate = if seconds > 0.0 { events as f64 / seconds } else { 0.0 };
        if as_json {
            objects.push(json!({"name": name, "version": version, "active": true, "events": events, "seconds": seconds, "events_per_second": rate}));
        } else {
            emit!(
                "rebuilt {name}: version {version} is active; {events} events in {seconds:.1} s ({rate:.0} events/s)"
            );
        }
    }
    if as_json {
        print_json(objects);
    }
    Ok(())
}

async fn retry(backend: &mut Backend, name: &str, as_json: bool) -> Result<(), Failure> {
    // What failed, to say so; the retry itself decides whether anything had.
    let failures: Vec<String> = backend
        .status()
        .await?
        .projections
        .iter()
        .filter(|p| p.name == name)
        .flat_map(|p| p.versions.iter())
        .filter_map(|v| {
            v.failure
                .as_ref()
                .map(|f| format!("version {} at position {}: {}", v.version, position_text(&f.position), f.error))
        })
        .collect();
    let was_failed = backend.retry(name).await?;
    if as_json {
        emit!("{}", json!({"name": name, "was_failed": was_failed}));
        return Ok(());
    }
    if !was_failed {
        emit!("{name} was not failed; nothing to retry");
        return Ok(());
    }
    emit!("{name} was failed; it resumes from the event it failed on");
    for failure in &failures {
        emit!("  cleared: {failure}");
    }
    if let Some(dir) = backend.offline_dir() {
        emit!("(offline: the server resumes it when it next starts on {})", dir.display());
    }
    Ok(())
}

async fn abandon(backend: &mut Backend, name: &str, as_json: bool) -> Result<(), Failure> {
    let abandoned = backend.abandon(name).await?;
    if as_json {
        emit!("{}", json!({"name": name, "abandoned": abandoned.is_some(), "version": abandoned}));
    } else if let Some(version) = abandoned {
        emit!("abandoned the rebuild of {name}: version {version} and its tables are gone; the active version answers");
    } else {
        emit!("{name} has no rebuild in progress; nothing to abandon");
    }
    Ok(())
}
