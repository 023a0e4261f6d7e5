//! `referrals.v1.ReferralCommands`: requests in, commands through the
//! handler, results or refusals out.

use referral_commands::handler::Written;
use referral_commands::{Actor, CommandContext, CommandHandler, Role};
use referral_domain::error::Violations;
use referral_domain::ids::CommandId;
use referral_domain::profile::{PartnerAction, PartnerCommand};
use referral_domain::referral::{AcceptReferral, ReferralAction, ReferralCommand, UpdateEngagement};
use tonic::{Request, Response, Status};

use super::auth::{caller, require_role};
use super::convert::{self, finish};
use super::errors::{invalid, to_status};
use super::pb;
use super::pb::referral_commands_server::ReferralCommands;

const PROFILE_ROLES: &[Role] = &[Role::Intake, Role::Operator];
const REFERRAL_ROLES: &[Role] = &[Role::Partner, Role::Operator];

pub struct CommandsService {
    handler: CommandHandler,
}

impl CommandsService {
    pub fn new(handler: CommandHandler) -> Self {
        CommandsService { handler }
    }
}

fn written_to_pb(w: Written) -> pb::CommandResult {
    pb::CommandResult {
        stream: w.stream.to_string(),
        events_written: u32::try_from(w.events).unwrap_or(u32::MAX),
        stream_revision: w.revision.map(|r| r.0),
        position: w.position.map(convert::position_to_pb),
        replayed: w.replayed,
    }
}

fn metadata_text<T>(request: &Request<T>, key: &str) -> Option<String> {
    request.metadata().get(key).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The caller, checked against the roles the call needs.
fn authorized<T>(request: &Request<T>, roles: &[Role], what: &str) -> Result<Actor, Status> {
    let actor = caller(request)?;
    require_role(&actor, roles, what)?;
    Ok(actor)
}

/// The command's context; a missing or bad request id is a field violation.
fn context<T>(request: &Request<T>, actor: Actor, request_id: &str, v: &mut Violations) -> Option<CommandContext> {
    let id = v.check("request_id", CommandId::parse(request_id))?;
    Some(
        CommandContext::new(id, actor)
            .with_correlation(metadata_text(request, "x-correlation-id"), metadata_text(request, "x-causation-id")),
    )
}

fn check(v: Violations) -> Result<(), Status> {
    finish(v).map_err(|list| invalid(&list))
}

impl CommandsService {
    async fn referral_command<T>(
        &self,
        request: &Request<T>,
        what: &str,
        request_id: &str,
        referral_id: &str,
        build: impl FnOnce(&mut Violations) -> Option<ReferralAction>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let actor = authorized(request, REFERRAL_ROLES, what)?;
        let mut v = Violations::new();
        let ctx = context(request, actor, request_id, &mut v);
        let referral = convert::referral_id(referral_id, &mut v);
        let action = build(&mut v);
        check(v)?;
        let (Some(ctx), Some(referral), Some(action)) = (ctx, referral, action) else {
            return Err(Status::invalid_argument("invalid request"));
        };
        let written =
            self.handler.execute_referral(&ctx, ReferralCommand { referral, action }).await.map_err(to_status)?;
        Ok(Response::new(written_to_pb(written)))
    }

    async fn partner_command<T>(
        &self,
        request: &Request<T>,
        what: &str,
        request_id: &str,
        partner_id: &str,
        build: impl FnOnce(&mut Violations) -> PartnerAction,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let actor = authorized(request, PROFILE_ROLES, what)?;
        let mut v = Violations::new();
        let ctx = context(request, actor, request_id, &mut v);
        let partner = convert::partner_id("partner_id", partner_id, &mut v);
        let action = build(&mut v);
        check(v)?;
        let (Some(ctx), Some(partner)) = (ctx, partner) else {
            return Err(Status::invalid_argument("invalid request"));
        };
        let written =
            self.handler.execute_partner(&ctx, PartnerCommand { partner, action }).await.map_err(to_status)?;
        Ok(Response::new(written_to_pb(written)))
    }
}

#[tonic::async_trait]
impl ReferralCommands for CommandsService {
    async fn register_partner_profile(
        &self,
        request: Request<pb::RegisterPartnerProfileRequest>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let r = request.get_ref();
        self.partner_command(&request, "registering a partner profile", &r.request_id, &r.partner_id, |v| {
            PartnerAction::RegisterProfile(convert::register_profile(r, v))
        })
        .await
    }

    async fn update_partner_profile(
        &self,
        request: Request<pb::UpdatePartnerProfileRequest>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let r = request.get_ref();
        self.partner_command(&request, "updating a partner profile", &r.request_id, &r.partner_id, |v| {
            PartnerAction::UpdateProfile(convert::update_profile(r, v))
        })
        .await
    }

    async fn pause_partner_profile(
        &self,
        request: Request<pb::SetPartnerProfileStatusRequest>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let r = request.get_ref();
        self.partner_command(&request, "pausing a partner profile", &r.request_id, &r.partner_id, |_| {
            PartnerAction::PauseProfile { region: r.region.clone() }
        })
        .await
    }

    async fn resume_partner_profile(
        &self,
        request: Request<pb::SetPartnerProfileStatusRequest>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let r = request.get_ref();
        self.partner_command(&request, "resuming a partner profile", &r.request_id, &r.partner_id, |_| {
            PartnerAction::ResumeProfile { region: r.region.clone() }
        })
        .await
    }

    async fn submit_rfi(
        &self,
        request: Request<pb::SubmitRfiRequest>,
    ) -> Result<Response<pb::SubmitRfiResponse>, Status> {
        let actor = authorized(&request, PROFILE_ROLES, "submitting an RFI")?;
        let r = request.get_ref();
        let mut v = Violations::new();
        let ctx = context(&request, actor, &r.request_id, &mut v);
        let rfi = convert::submit_rfi(r, &mut v);
        check(v)?;
        let (Some(ctx), Some(rfi)) = (ctx, rfi) else {
            return Err(Status::invalid_argument("invalid request"));
        };
        let submitted = self.handler.submit_rfi(&ctx, rfi).await.map_err(to_status)?;
        let referrals = submitted
            .into_iter()
            .map(|s| pb::SubmittedReferral {
                referral_id: s.referral.to_string(),
                partner_id: s.partner.to_string(),
                region: s.region.to_string(),
                result: Some(written_to_pb(s.written)),
            })
            .collect();
        Ok(Response::new(pb::SubmitRfiResponse { referrals }))
    }

    async fn accept_referral(
        &self,
        request: Request<pb::AcceptReferralRequest>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let r = request.get_ref();
        self.referral_command(&request, "accepting a referral", &r.request_id, &r.referral_id, |v| {
            let estimated_value = convert::money("estimated_value", r.estimated_value.as_ref(), v)?;
            let estimated_purchase_date =
                convert::date("estimated_purchase_date", r.estimated_purchase_date.as_ref(), v);
            Some(ReferralAction::Accept(AcceptReferral {
                engagement_name: r.engagement_name.clone(),
                estimated_value,
                estimated_purchase_date,
                notes: r.notes.clone(),
                crm_id: r.crm_id.clone(),
                campaign_id: r.campaign_id.clone(),
                contacts: convert::contacts(&r.contacts),
            }))
        })
        .await
    }

    async fn decline_referral(
        &self,
        request: Request<pb::DeclineReferralRequest>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let r = request.get_ref();
        self.referral_command(&request, "declining a referral", &r.request_id, &r.referral_id, |v| {
            Some(ReferralAction::Decline { reason: convert::reason(r.reason, v), notes: r.notes.clone() })
        })
        .await
    }

    async fn add_contact(
        &self,
        request: Request<pb::AddContactRequest>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let r = request.get_ref();
        self.referral_command(&request, "adding a contact", &r.request_id, &r.referral_id, |v| {
            if r.contact.is_none() {
                v.add("contact", "is required");
                return None;
            }
            Some(ReferralAction::AddContact(convert::contact(r.contact.as_ref())))
        })
        .await
    }

    async fn update_engagement(
        &self,
        request: Request<pb::UpdateEngagementRequest>,
    ) -> Result<Response<pb::CommandResult>, Status> {
        let r = request.get_ref();
        self.referral_command(&request, "editing an engagement", &r.request_id, &r.referral_id, |v| {
            let estimated_value = match &r.estimated_value {
                Some(m) => Some(convert::money("estimated_value", Some(m), v)?),
                None => None,
            };
            Some(ReferralAction::UpdateEngagement(UpdateEngagement {
                name: r.engagement_name.clone(),
                estimated_value,
                estimated_purchase_date: convert::date(
                    "estimated_purchase_date",
                    r.estimated_purchase_date.as_ref(),
                    v,
                ),
                notes: r.notes.clone(),
                crm_id: r.crm_id.clone(),
                campaign_id: r.campaign_id.clone(),
            }))
        })
        .await
    }

    async fn mark_won(&self, request: Request<pb::MarkWonRequest>) -> Result<Response<pb::CommandResult>, Status> {
        let r = request.get_ref();
        self.referral_command(&request, "marking a referral won", &r.request_id, &r.referral_id, |v| {
            let final_value = convert::money("final_value", r.final_value.as_ref(), v)?;
            let closed_on = convert::date("closed_on", r.closed_on.as_ref(), v);
            Some(ReferralAction::MarkWon { final_value, closed_on })
        })
        .await
    }

    async fn mark_lost(&self, request: Request<pb::MarkLostRequest>) -> Result<Response<pb::CommandResult>, Status> {
        let r = request.get_ref();
        self.referral_command(&request, "marking a referral lost", &r.request_id, &r.referral_id, |v| {
            Some(ReferralAction::MarkLost { reason: convert::reason(r.reason, v), notes: r.notes.clone() })
        })
        .await
    }

    async fn get_referral(&self, request: Request<pb::GetReferralRequest>) -> Result<Response<pb::Referral>, Status> {
        let actor = caller(&request)?;
        let mut v = Violations::new();
        let id = convert::referral_id(&request.get_ref().referral_id, &mut v);
        check(v)?;
        let id = id.ok_or_else(|| Status::invalid_argument("referral_id is required"))?;
        let (referral, meta) = self.handler.get_referral(&actor, id).await.map_err(to_status)?;
        let revision = match meta.revision {
            referral_domain::eventlog::CurrentRevision::Current(r) => r.0,
            referral_domain::eventlog::CurrentRevision::NoStream => 0,
        };
        Ok(Response::new(convert::referral_to_pb(&referral, revision, meta.position, self.handler.now())))
    }
}
