//! `referrals.v1.ReferralQueries`: the views, scoped to the caller.
//!
//! A partner token reads only its own partner's referrals and history: lists
//! are filtered to its partner, and asking for another partner's referral or
//! history is refused with PERMISSION_DENIED (as commands are).

use std::sync::Arc;
use std::time::Duration;

use referral_commands::{Actor, Clock, Role};
use referral_domain::error::Violations;
use referral_domain::eventlog::Position;
use referral_domain::ids::{PartnerId, ReferralId};
use referral_domain::referral::Status as ReferralStatus;
use referral_domain::values::{Currency, Money, ReasonCode};
use referral_projections::history::{Counts, PartnerHistory, ReasonCount};
use referral_projections::referrals::{List, ListFilter, Order, Page, ReferralRow};
use referral_projections::{history, referrals, timeline, Halt, Projector, ViewError, Views};
use tonic::{Request, Response, Status};

use super::auth::{caller, require_role};
use super::convert::{self, finish, position_to_pb, timestamp_to_pb};
use super::errors::invalid;
use super::pb;
use super::pb::referral_queries_server::ReferralQueries;

const QUERY_ROLES: &[Role] = &[Role::Partner, Role::Intake, Role::Operator, Role::Analyst];

/// The longest a query waits for a view to reach its `min_position`.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting query checks that its view has not stopped.
const WAIT_SLICE: Duration = Duration::from_millis(250);

pub struct QueriesService {
    views: Views,
    projector: Projector,
    clock: Arc<dyn Clock>,
}

impl QueriesService {
    pub fn new(views: Views, projector: Projector, clock: Arc<dyn Clock>) -> Self {
        QueriesService { views, projector, clock }
    }

    /// Waits until `projection` has applied `min` (read your writes).
    async fn wait(&self, projection: &str, min: Option<&pb::LogPosition>) -> Result<(), Status> {
        let Some(min) = min else { return Ok(()) };
        let min = Position { commit: min.commit, prepare: min.prepare };
        if self.projector.checkpoint(projection).is_some_and(|at| at.commit >= min.commit) {
            return Ok(());
        }
        // Behind: a view that will not move on by itself is said so at once,
        // and one that stops while the query waits, within a slice.
        let as_of =
            |checkpoint: Option<Position>| checkpoint.map(|p| p.to_string()).unwrap_or_else(|| "the start".into());
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            match self.projector.halted(projection).await.map_err(view_status)? {
                Some(Halt::Failed { checkpoint, at, error }) => {
                    return Err(Status::failed_precondition(format!(
                        "the {projection} view cannot reach position {min}: it stopped at position {at} on an event \
                         it could not apply ({error}) and answers as of position {} until an operator retries it \
                         (`referral-engine projections retry {projection}`); query without min_position to read it \
                         as it is",
                        as_of(checkpoint)
                    )))
                }
                Some(Halt::Outdated { checkpoint, .. }) => {
                    return Err(Status::unavailable(format!(
                        "the {projection} view is being rebuilt for this build's schema and answers as of position \
                         {} until the rebuild is swapped in, so it cannot reach position {min} yet; try again later, \
                         or query without min_position to read it as it is",
                        as_of(checkpoint)
                    )))
                }
                None => {}
            }
            let slice = WAIT_SLICE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match self.projector.wait_for(projection, min, slice).await {
                Ok(()) => return Ok(()),
                Err(at) if tokio::time::Instant::now() >= deadline => {
                    return Err(Status::unavailable(format!(
                        "the {projection} view has not reached position {min} within {} s (it is at {}); try again",
                        MAX_WAIT.as_secs(),
                        as_of(at)
                    )))
                }
                Err(_) => {}
            }
        }
    }

    async fn list(
        &self,
        request: Request<pb::ListReferralsRequest>,
        which: List,
    ) -> Result<Response<pb::ListReferralsResponse>, Status> {
        let actor = authorized(&request, "listing referrals")?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let partner = scope(&actor, &r.partner_id, &mut v)?;
        let from = convert::timestamp("from_time", r.from_time.as_ref(), &mut v);
        let to = convert::timestamp("to_time", r.to_time.as_ref(), &mut v);
        let mut outcomes = Vec::new();
        for (i, o) in r.outcomes.iter().enumerate() {
            match pb::Substatus::try_from(*o) {
                Ok(pb::Substatus::Declined) => outcomes.push(ReferralStatus::Declined),
                Ok(pb::Substatus::Expired) => outcomes.push(ReferralStatus::Expired),
                Ok(pb::Substatus::Won) => outcomes.push(ReferralStatus::Won),
                Ok(pb::Substatus::Lost) => outcomes.push(ReferralStatus::Lost),
                _ => v.add(format!("outcomes[{i}]"), "must be DECLINED, EXPIRED, WON or LOST"),
            }
        }
        if !outcomes.is_empty() && which != List::Archive {
            v.add("outcomes", "filters the archive only");
        }
        let order = match pb::ListOrder::try_from(r.order) {
            Ok(pb::ListOrder::Unspecified | pb::ListOrder::Newest) => Order::Newest,
            Ok(pb::ListOrder::MostUrgent) => Order::MostUrgent,
            Err(_) => {
                v.add("order", format!("{} is not a list order", r.order));
                Order::Newest
            }
        };
        let page_size = page_size(r.page_size, &mut v);
        finish(v).map_err(|list| invalid(&list))?;
        let filter = ListFilter {
            partner,
            region: non_empty(r.region),
            location: non_empty(r.location),
            outcomes,
            from,
            to,
            order,
        };
        self.wait(referrals::NAME, r.min_position.as_ref()).await?;
        let page = self.views.list(which, filter, page_size, r.page_token).await.map_err(view_status)?;
        Ok(Response::new(self.referral_page(page)))
    }

    /// The referral's row once the view has reached `min`, if `actor` may see it.
    async fn visible_referral(
        &self,
        actor: &Actor,
        id: ReferralId,
        min: Option<&pb::LogPosition>,
    ) -> Result<ReferralRow, Status> {
        self.wait(referrals::NAME, min).await?;
        let row = self
            .views
            .referral(id.to_string())
            .await
            .map_err(view_status)?
            .ok_or_else(|| Status::not_found(format!("referral {id} is not in the views")))?;
        check_access(actor, &row.referral.partner, &id.to_string())?;
        Ok(row)
    }

    fn referral_page(&self, page: Page<ReferralRow>) -> pb::ListReferralsResponse {
        let now = self.clock.now();
        pb::ListReferralsResponse {
            referrals: page
                .rows
                .iter()
                .map(|row| convert::referral_to_pb(&row.referral, row.revision.0, Some(row.position), now))
                .collect(),
            next_page_token: page.next_page_token,
        }
    }
}

fn authorized<T>(request: &Request<T>, what: &str) -> Result<Actor, Status> {
    let actor = caller(request)?;
    require_role(&actor, QUERY_ROLES, what)?;
    Ok(actor)
}

fn non_empty(text: String) -> Option<String> {
    (!text.trim().is_empty()).then_some(text)
}

fn page_size(requested: i32, v: &mut Violations) -> u32 {
    u32::try_from(requested).unwrap_or_else(|_| {
        v.add("page_size", "must not be negative");
        0
    })
}

/// The partner a query is about: a partner token's own partner, or (for
/// other roles) the one asked for, if any.
fn scope(actor: &Actor, requested: &str, v: &mut Violations) -> Result<Option<String>, Status> {
    let requested = requested.trim();
    if actor.role == Role::Partner {
        let own = actor.partner.as_ref().map(|p| p.as_str().to_string()).unwrap_or_default();
        if !requested.is_empty() && requested != own {
            return Err(Status::permission_denied(format!(
                "this token is bound to partner {own}; it cannot read partner {requested}'s referrals"
            )));
        }
        return Ok(Some(own));
    }
    if requested.is_empty() {
        return Ok(None);
    }
    Ok(v.check("partner_id", PartnerId::parse(requested)).map(|p| p.as_str().to_string()))
}

/// May `actor` see a referral of `partner`? Otherwise PERMISSION_DENIED, as commands answer.
fn check_access(actor: &Actor, partner: &PartnerId, referral: &str) -> Result<(), Status> {
    if actor.may_access_partner(partner) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!("referral {referral} belongs to another partner")))
    }
}

pub fn view_status(e: ViewError) -> Status {
    match e {
        ViewError::InvalidArgument { field, reason } => {
            invalid(&[referral_domain::FieldViolation { field: field.to_string(), description: reason }])
        }
        e @ ViewError::UnknownProjection { .. } => Status::not_found(e.to_string()),
        e @ ViewError::RebuildInProgress { .. } => Status::failed_precondition(e.to_string()),
        e @ ViewError::NotReady(_) => Status::unavailable(e.to_string()),
        e @ ViewError::Store(_) => Status::unavailable(e.to_string()),
        e @ ViewError::Storage(_) => {
            tracing::error!(error = %e, "view database failed");
            Status::internal(e.to_string())
        }
    }
}

fn counts_to_pb(c: &Counts) -> pb::OutcomeCounts {
    pb::OutcomeCounts {
        received: c.received,
        accepted: c.accepted,
        declined: c.declined,
        expired: c.expired,
        won: c.won,
        lost: c.lost,
        acceptance_rate: c.acceptance_rate(),
        win_rate: c.win_rate(),
    }
}

fn reasons_to_pb(list: &[ReasonCount]) -> Vec<pb::ReasonCount> {
    list.iter()
        .map(|r| pb::ReasonCount {
            reason: ReasonCode::ALL
                .iter()
                .find(|c| c.as_str() == r.reason)
                .map(|c| convert::reason_to_pb(*c) as i32)
                .unwrap_or(0),
            count: r.count,
        })
        .collect()
}

fn money(currency: &str, minor_units: i64) -> Option<pb::google::r#type::Money> {
    let currency = Currency::parse(currency).ok()?;
    Some(convert::money_to_pb(&Money { currency, minor_units }))
}

fn duration(seconds: Option<i64>) -> Option<prost_types::Duration> {
    seconds.map(|s| prost_types::Duration { seconds: s, nanos: 0 })
}

fn history_to_pb(h: PartnerHistory) -> pb::PartnerHistory {
    pb::PartnerHistory {
        partner_id: h.partner,
        region: h.region.unwrap_or_default(),
        counts: Some(counts_to_pb(&h.counts)),
        decline_reasons: reasons_to_pb(&h.decline_reasons),
        loss_reasons: reasons_to_pb(&h.loss_reasons),
        response_times: Some(pb::ResponseTimes {
            responded: h.response_times.responded,
            median: duration(h.response_times.median_seconds),
            p90: duration(h.response_times.p90_seconds),
        }),
        by_feature: h
            .by_feature
            .iter()
            .map(|f| pb::FeatureBreakdown {
                kind: f.kind.clone(),
                value: f.value.clone(),
                counts: Some(counts_to_pb(&f.counts)),
            })
            .collect(),
        deal_totals: h
            .deal_totals
            .iter()
            .map(|t| pb::DealTotal { total: money(&t.currency, t.minor_units), deals: t.deals })
            .collect(),
        recent_deals: h
            .recent_deals
            .iter()
            .map(|d| pb::Deal {
                referral_id: d.referral.clone(),
                region: d.region.clone(),
                final_value: money(&d.currency, d.minor_units),
                closed_on: Some(convert::date_to_pb(d.closed_on)),
                reported_at: Some(timestamp_to_pb(d.reported_at)),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl ReferralQueries for QueriesService {
    async fn list_inbox(
        &self,
        request: Request<pb::ListReferralsRequest>,
    ) -> Result<Response<pb::ListReferralsResponse>, Status> {
        self.list(request, List::Inbox).await
    }

    async fn list_active(
        &self,
        request: Request<pb::ListReferralsRequest>,
    ) -> Result<Response<pb::ListReferralsResponse>, Status> {
        self.list(request, List::Active).await
    }

    async fn list_archive(
        &self,
        request: Request<pb::ListReferralsRequest>,
    ) -> Result<Response<pb::ListReferralsResponse>, Status> {
        self.list(request, List::Archive).await
    }

    async fn get_referral_view(
        &self,
        request: Request<pb::GetReferralViewRequest>,
    ) -> Result<Response<pb::Referral>, Status> {
        let actor = authorized(&request, "reading a referral")?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let id = convert::referral_id(&r.referral_id, &mut v);
        finish(v).map_err(|list| invalid(&list))?;
        let id = id.ok_or_else(|| Status::invalid_argument("referral_id is required"))?;
        let row = self.visible_referral(&actor, id, r.min_position.as_ref()).await?;
        Ok(Response::new(convert::referral_to_pb(&row.referral, row.revision.0, Some(row.position), self.clock.now())))
    }

    async fn get_timeline(
        &self,
        request: Request<pb::GetTimelineRequest>,
    ) -> Result<Response<pb::GetTimelineResponse>, Status> {
        let actor = authorized(&request, "reading a timeline")?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let id = convert::referral_id(&r.referral_id, &mut v);
        let page_size = page_size(r.page_size, &mut v);
        finish(v).map_err(|list| invalid(&list))?;
        let id = id.ok_or_else(|| Status::invalid_argument("referral_id is required"))?;
        self.wait(timeline::NAME, r.min_position.as_ref()).await?;
        // A timeline is shown only to those who may see the referral.
        self.visible_referral(&actor, id, r.min_position.as_ref()).await?;
        let page = self.views.timeline(id.to_string(), page_size, r.page_token).await.map_err(view_status)?;
        Ok(Response::new(pb::GetTimelineResponse {
            referral_id: id.to_string(),
            events: page
                .rows
                .into_iter()
                .map(|e| pb::TimelineEvent {
                    stream_revision: e.revision.0,
                    position: Some(position_to_pb(e.position)),
                    event_type: e.event_type,
                    occurred_at: Some(timestamp_to_pb(e.occurred_at)),
                    recorded_at: Some(timestamp_to_pb(e.recorded_at)),
                    actor: e.actor,
                    request_id: e.command_id,
                    correlation_id: e.correlation_id,
                    data_json: e.data,
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_partner_history(
        &self,
        request: Request<pb::GetPartnerHistoryRequest>,
    ) -> Result<Response<pb::PartnerHistory>, Status> {
        let actor = authorized(&request, "reading a partner's history")?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let partner = scope(&actor, &r.partner_id, &mut v)?;
        if partner.is_none() && v.is_empty() {
            v.add("partner_id", "is required");
        }
        finish(v).map_err(|list| invalid(&list))?;
        let partner = partner.ok_or_else(|| Status::invalid_argument("partner_id is required"))?;
        self.wait(history::NAME, r.min_position.as_ref()).await?;
        let history = self.views.history(partner, non_empty(r.region)).await.map_err(view_status)?;
        Ok(Response::new(history_to_pb(history)))
    }
}
