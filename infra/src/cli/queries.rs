//! Read-side client subcommands (`ReferralQueries`): the inbox, active and
//! archive lists, one referral's view and timeline, and a partner's history.
//! Readable tables by default, JSON with `--json`.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::client::{self, Connection};
use super::output::{self, emit, Failure};
use super::table::{self, Table};
use crate::grpc::auth::QueriesClient;
use crate::grpc::convert::timestamp_to_pb;
use crate::grpc::pb;

#[derive(Subcommand)]
pub enum QueryCommand {
    /// List New referrals waiting for an answer (from the views).
    Inbox(ListArgs),
    /// List accepted engagements (from the views).
    Active(ListArgs),
    /// List won, lost, declined and expired referrals (from the views).
    Archive(ArchiveArgs),
    /// Show one referral as the views hold it, with its deadlines and alert computed now.
    Referral(ReferralArgs),
    /// Show every event of one referral, oldest first.
    Timeline(TimelineArgs),
    /// Show a partner's accept/decline history, overall or for one region.
    History(HistoryArgs),
}

/// A closed referral's outcome, to filter the archive by.
#[derive(Clone, Copy, ValueEnum)]
pub enum Outcome {
    Won,
    Lost,
    Declined,
    Expired,
}

impl Outcome {
    fn to_pb(self) -> pb::Substatus {
        match self {
            Outcome::Won => pb::Substatus::Won,
            Outcome::Lost => pb::Substatus::Lost,
            Outcome::Declined => pb::Substatus::Declined,
            Outcome::Expired => pb::Substatus::Expired,
        }
    }
}

/// The order of a list.
#[derive(Clone, Copy, ValueEnum)]
pub enum Order {
    /// Most recent first (received, accepted or closed).
    Newest,
    /// Oldest first; in the inbox the earliest response deadline first, so overdue referrals lead.
    Urgent,
}

#[derive(Args)]
pub struct ListArgs {
    /// Whose referrals. A partner token sees only its own; other roles see every partner's when omitted.
    #[arg(long)]
    partner: Option<String>,
    /// Only referrals for this region.
    #[arg(long)]
    region: Option<String>,
    /// Only referrals for this location within the region.
    #[arg(long)]
    location: Option<String>,
    /// Only referrals whose list date (received, accepted or closed) is at or after this instant (RFC 3339).
    #[arg(long)]
    from: Option<DateTime<Utc>>,
    /// ... and before this instant (RFC 3339).
    #[arg(long)]
    to: Option<DateTime<Utc>>,
    #[arg(long, value_enum, default_value_t = Order::Newest)]
    order: Order,
    /// Referrals per page (the server's default is 50, its maximum 500).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=500))]
    page_size: Option<i32>,
    /// Continue from a previous page (same filters and order).
    #[arg(long)]
    page_token: Option<String>,
    /// Fetch every page and print them as one list.
    #[arg(long)]
    all_pages: bool,
    /// Wait until the view has applied this log position (a command's position: read your writes).
    #[arg(long)]
    min_position: Option<u64>,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args)]
pub struct ArchiveArgs {
    /// Only these outcomes; repeatable. All by default.
    #[arg(long = "outcome", value_enum)]
    outcomes: Vec<Outcome>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(Args)]
pub struct ReferralArgs {
    referral_id: String,
    /// Wait until the view has applied this log position.
    #[arg(long)]
    min_position: Option<u64>,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args)]
pub struct TimelineArgs {
    referral_id: String,
    /// Events per page (the server's default is 50, its maximum 500).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=500))]
    page_size: Option<i32>,
    #[arg(long)]
    page_token: Option<String>,
    /// Fetch every page.
    #[arg(long)]
    all_pages: bool,
    /// Wait until the view has applied this log position.
    #[arg(long)]
    min_position: Option<u64>,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args)]
pub struct HistoryArgs {
    /// The partner; a partner token may leave it out (its own). Required for other roles.
    #[arg(long)]
    partner: Option<String>,
    /// One region's profile; the partner's whole history by default.
    #[arg(long)]
    region: Option<String>,
    /// Wait until the view has applied this log position.
    #[arg(long)]
    min_position: Option<u64>,
    #[command(flatten)]
    conn: Connection,
}

fn conn_of(command: &QueryCommand) -> &Connection {
    match command {
        QueryCommand::Inbox(a) | QueryCommand::Active(a) => &a.conn,
        QueryCommand::Archive(a) => &a.list.conn,
        QueryCommand::Referral(a) => &a.conn,
        QueryCommand::Timeline(a) => &a.conn,
        QueryCommand::History(a) => &a.conn,
    }
}

/// Runs one query subcommand and prints its result.
pub async fn run(command: QueryCommand) -> ExitCode {
    let conn = conn_of(&command).clone();
    let result = async {
        let (channel, bearer) = client::open(&conn).await.map_err(Failure::Local)?;
        let mut client = bearer.queries_client(channel);
        call(&mut client, command, conn.json).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            output::print_failure(&failure, conn.json);
            ExitCode::FAILURE
        }
    }
}

fn position(min: Option<u64>) -> Option<pb::LogPosition> {
    min.map(|commit| pb::LogPosition { commit, prepare: commit })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Inbox,
    Active,
    Archive,
}

async fn call(client: &mut QueriesClient, command: QueryCommand, as_json: bool) -> Result<(), Failure> {
    match command {
        QueryCommand::Inbox(a) => list(client, Which::Inbox, a, vec![], as_json).await,
        QueryCommand::Active(a) => list(client, Which::Active, a, vec![], as_json).await,
        QueryCommand::Archive(a) => list(client, Which::Archive, a.list, a.outcomes, as_json).await,
        QueryCommand::Referral(a) => {
            let request =
                pb::GetReferralViewRequest { referral_id: a.referral_id, min_position: position(a.min_position) };
            let referral = client.get_referral_view(request).await?.into_inner();
            output::print(&output::Response::Referral(Box::new(referral)), as_json);
            Ok(())
        }
        QueryCommand::Timeline(a) => timeline(client, a, as_json).await,
        QueryCommand::History(a) => {
            let request = pb::GetPartnerHistoryRequest {
                partner_id: a.partner.unwrap_or_default(),
                region: a.region.unwrap_or_default(),
                min_position: position(a.min_position),
            };
            let history = client.get_partner_history(request).await?.into_inner();
            if as_json {
                emit!("{}", history_json(&history));
            } else {
                emit!("{}", history_text(&history));
            }
            Ok(())
        }
    }
}

async fn list(
    client: &mut QueriesClient,
    which: Which,
    a: ListArgs,
    outcomes: Vec<Outcome>,
    as_json: bool,
) -> Result<(), Failure> {
    let mut request = pb::ListReferralsRequest {
        partner_id: a.partner.unwrap_or_default(),
        region: a.region.unwrap_or_default(),
        location: a.location.unwrap_or_default(),
        outcomes: outcomes.iter().map(|o| o.to_pb() as i32).collect(),
        from_time: a.from.map(timestamp_to_pb),
        to_time: a.to.map(timestamp_to_pb),
        order: match a.order {
            Order::Newest => pb::ListOrder::Newest,
            Order::Urgent => pb::ListOrder::MostUrgent,
        } as i32,
        page_size: a.page_size.unwrap_or(0),
        page_token: a.page_token.unwrap_or_default(),
        min_position: position(a.min_position),
    };
    let mut referrals = Vec::new();
    let next_page_token = loop {
        let page = match which {
            Which::Inbox => client.list_inbox(request.clone()).await?,
            Which::Active => client.list_active(request.clone()).await?,
            Which::Archive => client.list_archive(request.clone()).await?,
        }
        .into_inner();
        referrals.extend(page.referrals);
        if !a.all_pages || page.next_page_token.is_empty() {
            break page.next_page_token;
        }
        request.page_token = page.next_page_token;
        // The first page has waited for the position; later pages need not.
        request.min_position = None;
    };
    if as_json {
        let list: Vec<Value> = referrals.iter().map(output::referral_json).collect();
        emit!("{}", json!({ "referrals": list, "next_page_token": next_page_token }));
        return Ok(());
    }
    if referrals.is_empty() {
        emit!("no referrals");
    } else {
        emit!("{}", referrals_table(which, &referrals).render());
        emit!("{} referral(s)", referrals.len());
    }
    if !next_page_token.is_empty() {
        emit!("next page: --page-token {next_page_token}");
    }
    Ok(())
}

/// An instant as `2026-11-24 09:00Z`, or "-".
fn short_time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%MZ").to_string())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn region_of(r: &pb::Referral) -> String {
    if r.location.is_empty() {
        r.region.clone()
    } else {
        format!("{}/{}", r.region, r.location)
    }
}

fn referrals_table(which: Which, referrals: &[pb::Referral]) -> Table {
    let mut table = match which {
        Which::Inbox => Table::new(&[
            "ID",
            "PARTNER",
            "REGION",
            "CUSTOMER",
            "RECEIVED",
            "RESPONSE DUE",
            "OVERDUE",
            "EXPIRES",
            "ALERT",
        ]),
        Which::Active => Table::new(&[
            "ID",
            "PARTNER",
            "REGION",
            "CUSTOMER",
            "ENGAGEMENT",
            "VALUE",
            "PURCHASE DATE",
            "ACCEPTED",
            "LAST CHANGE",
        ])
        .right(&[5]),
        Which::Archive => {
            Table::new(&["ID", "PARTNER", "REGION", "CUSTOMER", "OUTCOME", "CLOSED", "REASON / FINAL VALUE"])
        }
    };
    for r in referrals {
        let j = output::referral_json(r);
        let mut row = vec![
            r.referral_id.clone(),
            r.partner_id.clone(),
            region_of(r),
            r.customer.as_ref().map(|c| c.company_name.clone()).unwrap_or_default(),
        ];
        match which {
            Which::Inbox => row.extend([
                short_time(&r.received_at),
                short_time(&r.response_due_at),
                if r.overdue { "yes" } else { "no" }.into(),
                short_time(&r.expires_at),
                text(&j["contact_alert"]),
            ]),
            Which::Active => {
                let g = r.engagement.clone().unwrap_or_default();
                row.extend([
                    g.name,
                    output::money_text(&g.estimated_value),
                    text(&output::date(&g.estimated_purchase_date)),
                    short_time(&r.accepted_at),
                    short_time(&r.last_changed_at),
                ])
            }
            Which::Archive => {
                let o = r.outcome.clone().unwrap_or_default();
                let detail = if o.final_value.is_some() {
                    format!("{} (closed on {})", output::money_text(&o.final_value), text(&output::date(&o.closed_on)))
                } else {
                    let reason = &j["outcome"]["reason"];
                    match (reason.is_null(), o.reason_notes.is_empty()) {
                        (true, _) => "-".into(),
                        (false, true) => text(reason),
                        (false, false) => format!("{}: {}", text(reason), table::shorten(&o.reason_notes, 60)),
                    }
                };
                row.extend([text(&j["substatus"]), short_time(&o.closed_at), detail])
            }
        }
        table.row(row);
    }
    table
}

async fn timeline(client: &mut QueriesClient, a: TimelineArgs, as_json: bool) -> Result<(), Failure> {
    let mut request = pb::GetTimelineRequest {
        referral_id: a.referral_id,
        page_size: a.page_size.unwrap_or(0),
        page_token: a.page_token.unwrap_or_default(),
        min_position: position(a.min_position),
    };
    let mut events = Vec::new();
    let (referral_id, next_page_token) = loop {
        let page = client.get_timeline(request.clone()).await?.into_inner();
        events.extend(page.events);
        if !a.all_pages || page.next_page_token.is_empty() {
            break (page.referral_id, page.next_page_token);
        }
        request.page_token = page.next_page_token;
        request.min_position = None;
    };
    if as_json {
        let list: Vec<Value> = events
            .iter()
            .map(|e| {
                json!({
                    "stream_revision": e.stream_revision,
                    "position": e.position.as_ref().map(|p| json!({"commit": p.commit, "prepare": p.prepare})),
                    "event_type": e.event_type,
                    "occurred_at": output::time(&e.occurred_at),
                    "recorded_at": output::time(&e.recorded_at),
                    "actor": e.actor,
                    "request_id": e.request_id,
                    "correlation_id": e.correlation_id,
                    "data": serde_json::from_str::<Value>(&e.data_json).unwrap_or_else(|_| json!(e.data_json)),
                })
            })
            .collect();
        emit!("{}", json!({"referral_id": referral_id, "events": list, "next_page_token": next_page_token}));
        return Ok(());
    }
    emit!("timeline of referral {referral_id}");
    let mut table = Table::new(&["REV", "TIME", "EVENT", "ACTOR"]).right(&[0]);
    for e in &events {
        table.row(vec![
            e.stream_revision.to_string(),
            text(&output::time(&e.occurred_at)),
            e.event_type.clone(),
            e.actor.clone(),
        ]);
    }
    if table.is_empty() {
        emit!("no events");
    } else {
        emit!("{}", table.render());
    }
    if !next_page_token.is_empty() {
        emit!("next page: --page-token {next_page_token}");
    }
    Ok(())
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn rate_json(r: Option<f64>) -> Value {
    r.map_or(Value::Null, |r| json!(r))
}

fn counts_json(c: Option<pb::OutcomeCounts>) -> Value {
    let c = c.unwrap_or_default();
    json!({
        "received": c.received,
        "accepted": c.accepted,
        "declined": c.declined,
        "expired": c.expired,
        "won": c.won,
        "lost": c.lost,
        "acceptance_rate": rate_json(c.acceptance_rate),
        "win_rate": rate_json(c.win_rate),
    })
}

fn reason_name(code: i32) -> String {
    text(&output::enum_name(pb::ReasonCode::try_from(code).ok().map(|c| c.as_str_name()), "REASON_CODE_"))
}

fn reasons_json(list: &[pb::ReasonCount]) -> Value {
    json!(list.iter().map(|r| json!({"reason": reason_name(r.reason), "count": r.count})).collect::<Vec<_>>())
}

fn reasons_text(list: &[pb::ReasonCount]) -> String {
    if list.is_empty() {
        return "-".into();
    }
    list.iter().map(|r| format!("{} {}", reason_name(r.reason), r.count)).collect::<Vec<_>>().join(", ")
}

fn seconds(d: &Option<prost_types::Duration>) -> Option<i64> {
    d.as_ref().map(|d| d.seconds)
}

/// A duration as `1d 2h`, `3h 5m`, `4m 10s` or `12s`.
fn duration_text(seconds: Option<i64>) -> String {
    let Some(s) = seconds else { return "-".into() };
    let (d, h, m, s) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn history_json(h: &pb::PartnerHistory) -> Value {
    let times = h.response_times.unwrap_or_default();
    json!({
        "partner_id": h.partner_id,
        "region": if h.region.is_empty() { Value::Null } else { json!(h.region) },
        "counts": counts_json(h.counts),
        "decline_reasons": reasons_json(&h.decline_reasons),
        "loss_reasons": reasons_json(&h.loss_reasons),
        "response_times": {
            "responded": times.responded,
            "median_seconds": seconds(&times.median),
            "p90_seconds": seconds(&times.p90),
        },
        "by_feature": h.by_feature.iter().map(|f| json!({
            "kind": f.kind,
            "value": f.value,
            "counts": counts_json(f.counts),
        })).collect::<Vec<_>>(),
        "deal_totals": h.deal_totals.iter().map(|t| json!({
            "total": output::money(&t.total),
            "deals": t.deals,
        })).collect::<Vec<_>>(),
        "recent_deals": h.recent_deals.iter().map(|d| json!({
            "referral_id": d.referral_id,
            "region": d.region,
            "final_value": output::money(&d.final_value),
            "closed_on": output::date(&d.closed_on),
            "reported_at": output::time(&d.reported_at),
        })).collect::<Vec<_>>(),
    })
}

fn history_text(h: &pb::PartnerHistory) -> String {
    let c = h.counts.unwrap_or_default();
    let times = h.response_times.unwrap_or_default();
    let scope = if h.region.is_empty() { "all regions".to_string() } else { format!("region {}", h.region) };
    let totals = if h.deal_totals.is_empty() {
        "-".to_string()
    } else {
        h.deal_totals
            .iter()
            .map(|t| {
                format!("{} ({} deal{})", output::money_text(&t.total), t.deals, if t.deals == 1 { "" } else { "s" })
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines = vec![
        format!("history of partner {} ({scope})", h.partner_id),
        format!(
            "referrals        received {}, accepted {}, declined {}, expired {}, won {}, lost {}",
            c.received, c.accepted, c.declined, c.expired, c.won, c.lost
        ),
        format!("acceptance rate  {}", rate(c.acceptance_rate)),
        format!("win rate         {}", rate(c.win_rate)),
        format!(
            "response time    {} answered; median {}, p90 {}",
            times.responded,
            duration_text(seconds(&times.median)),
            duration_text(seconds(&times.p90))
        ),
        format!("decline reasons  {}", reasons_text(&h.decline_reasons)),
        format!("loss reasons     {}", reasons_text(&h.loss_reasons)),
        format!("won deals        {totals}"),
    ];
    if !h.by_feature.is_empty() {
        let mut table = Table::new(&[
            "KIND",
            "VALUE",
            "RECEIVED",
            "ACCEPTED",
            "DECLINED",
            "EXPIRED",
            "WON",
            "LOST",
            "ACCEPTANCE",
            "WIN RATE",
        ])
        .right(&[2, 3, 4, 5, 6, 7, 8, 9]);
        for f in &h.by_feature {
            let c = f.counts.unwrap_or_default();
            table.row(vec![
                f.kind.clone(),
                f.value.clone(),
                c.received.to_string(),
                c.accepted.to_string(),
                c.declined.to_string(),
                c.expired.to_string(),
                c.won.to_string(),
                c.lost.to_string(),
                rate(c.acceptance_rate),
                rate(c.win_rate),
            ]);
        }
        lines.push(String::new());
        lines.push("by feature".into());
        lines.push(table.render());
    }
    if !h.recent_deals.is_empty() {
        let mut table = Table::new(&["REFERRAL", "REGION", "FINAL VALUE", "CLOSED ON", "REPORTED"]).right(&[2]);
        for d in &h.recent_deals {
            table.row(vec![
                d.referral_id.clone(),
                d.region.clone(),
                output::money_text(&d.final_value),
                text(&output::date(&d.closed_on)),
                short_time(&d.reported_at),
            ]);
        }
        lines.push(String::new());
        lines.push("recent deals".into());
        lines.push(table.render());
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_text(None), "-");
        assert_eq!(duration_text(Some(12)), "12s");
        assert_eq!(duration_text(Some(250)), "4m 10s");
        assert_eq!(duration_text(Some(3 * 3600 + 5 * 60 + 9)), "3h 5m");
        assert_eq!(duration_text(Some(26 * 3600)), "1d 2h");
    }
}
