//! `referrals.v1.ProjectionAdmin`: projection status, rebuilds and retries,
//! for operators.

use referral_commands::Role;
use referral_projections::{Projector, RunState};
use tonic::{Request, Response, Status};

use super::auth::{caller, require_role};
use super::convert::{position_to_pb, timestamp_to_pb};
use super::pb;
use super::pb::projection_admin_server::ProjectionAdmin;
use super::queries_service::view_status;

const ADMIN_ROLES: &[Role] = &[Role::Operator];

pub struct AdminService {
    projector: Projector,
}

impl AdminService {
    pub fn new(projector: Projector) -> Self {
        AdminService { projector }
    }
}

pub fn state_to_pb(s: RunState) -> pb::ProjectionState {
    match s {
        RunState::CatchingUp => pb::ProjectionState::CatchingUp,
        RunState::Live => pb::ProjectionState::Live,
        RunState::Rebuilding => pb::ProjectionState::Rebuilding,
        RunState::Failed => pb::ProjectionState::Failed,
        RunState::Stopped => pb::ProjectionState::Stopped,
        RunState::Outdated => pb::ProjectionState::Outdated,
    }
}

/// Every projection's status as the API reports it.
pub async fn projections_to_pb(projector: &Projector) -> Result<pb::ListProjectionsResponse, Status> {
    let status = projector.status().await.map_err(view_status)?;
    let projections = status
        .into_iter()
        .map(|p| pb::Projection {
            name: p.name,
            schema: p.schema,
            head: p.head.map(position_to_pb),
            versions: p
                .versions
                .into_iter()
                .map(|v| pb::ProjectionVersion {
                    version: v.version,
                    active: v.active,
                    state: state_to_pb(v.state) as i32,
                    checkpoint: v.checkpoint.map(position_to_pb),
                    events_applied: v.events_applied,
                    lag_events: v.lag_events,
                    lag_seconds: v.lag_seconds,
                    events_per_second: v.events_per_second,
                    progress: v.progress,
                    eta_seconds: v.eta_seconds,
                    failure: v
                        .failure
                        .map(|(at, error)| pb::ProjectionFailure { position: Some(position_to_pb(at)), error }),
                    last_event_at: v.last_event_at.map(timestamp_to_pb),
                    schema: v.schema,
                })
                .collect(),
        })
        .collect();
    Ok(pb::ListProjectionsResponse { projections })
}

#[tonic::async_trait]
impl ProjectionAdmin for AdminService {
    async fn list_projections(
        &self,
        request: Request<pb::ListProjectionsRequest>,
    ) -> Result<Response<pb::ListProjectionsResponse>, Status> {
        require_role(&caller(&request)?, ADMIN_ROLES, "listing projections")?;
        Ok(Response::new(projections_to_pb(&self.projector).await?))
    }

    async fn rebuild_projection(
        &self,
        request: Request<pb::RebuildProjectionRequest>,
    ) -> Result<Response<pb::RebuildProjectionResponse>, Status> {
        require_role(&caller(&request)?, ADMIN_ROLES, "rebuilding a projection")?;
        let request = request.get_ref();
        let names: Vec<&str> =
            std::iter::once(request.name.as_str()).chain(request.together_with.iter().map(String::as_str)).collect();
        let versions = self.projector.rebuild_together(&names).await.map_err(view_status)?;
        Ok(Response::new(pb::RebuildProjectionResponse {
            version: versions[0],
            together_with_versions: versions[1..].to_vec(),
        }))
    }

    async fn retry_projection(
        &self,
        request: Request<pb::RetryProjectionRequest>,
    ) -> Result<Response<pb::RetryProjectionResponse>, Status> {
        require_role(&caller(&request)?, ADMIN_ROLES, "retrying a projection")?;
        let was_failed = self.projector.retry(&request.get_ref().name).await.map_err(view_status)?;
        Ok(Response::new(pb::RetryProjectionResponse { was_failed }))
    }

    async fn abandon_rebuild(
        &self,
        request: Request<pb::AbandonRebuildRequest>,
    ) -> Result<Response<pb::AbandonRebuildResponse>, Status> {
        require_role(&caller(&request)?, ADMIN_ROLES, "abandoning a rebuild")?;
        let abandoned = self.projector.abandon(&request.get_ref().name).await.map_err(view_status)?;
        Ok(Response::new(pb::AbandonRebuildResponse {
            abandoned: abandoned.is_some(),
            version: abandoned.unwrap_or(0),
        }))
    }
}
