//! How client responses and failures are printed: readable text, or JSON.

use serde_json::{json, Value};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use referral_domain::error::Violations;

use crate::grpc::pb;

/// Prints a line to stdout; a closed pipe (`| head`) ends the output quietly.
macro_rules! emit {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
use crate::grpc::pb::google::r#type as gtype;
pub(super) use emit;

pub enum Response {
    Command(&'static str, pb::CommandResult),
    Submitted(pb::SubmitRfiResponse),
    Referral(Box<pb::Referral>),
}

pub enum Failure {
    /// Refused before anything was sent.
    Local(String),
    /// The server's answer.
    Rpc(Status),
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Rpc(s)
    }
}

fn result_json(r: &pb::CommandResult) -> Value {
    json!({
        "stream": r.stream,
        "events_written": r.events_written,
        "stream_revision": r.stream_revision,
        "position": r.position.as_ref().map(|p| json!({"commit": p.commit, "prepare": p.prepare})),
        "replayed": r.replayed,
    })
}

fn result_text(verb: &str, r: &pb::CommandResult) -> String {
    let position = r.position.as_ref().map(|p| format!(", log position {}", p.commit)).unwrap_or_default();
    let revision = r.stream_revision.map(|v| format!(" at revision {v}")).unwrap_or_default();
    let replay = if r.replayed { " (already applied; nothing new written)" } else { "" };
    format!("{verb}: {} event(s) written to {}{revision}{position}{replay}", r.events_written, r.stream)
}

pub(super) fn money(m: &Option<gtype::Money>) -> Value {
    match m {
        Some(m) => json!({"currency_code": m.currency_code, "units": m.units, "nanos": m.nanos}),
        None => Value::Null,
    }
}

pub(super) fn money_text(m: &Option<gtype::Money>) -> String {
    match m {
        Some(m) if m.nanos == 0 => format!("{} {}", m.units, m.currency_code),
        Some(m) => {
            let frac = format!("{:09}", m.nanos.unsigned_abs());
            format!("{}.{} {}", m.units, frac.trim_end_matches('0'), m.currency_code)
        }
        None => "-".into(),
    }
}

pub(super) fn date(d: &Option<gtype::Date>) -> Value {
    d.as_ref().map_or(Value::Null, |d| json!(format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)))
}

pub(super) fn time(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map_or(Value::Null, |t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
}

pub(super) fn enum_name(name: Option<&str>, prefix: &str) -> Value {
    name.map_or(Value::Null, |n| json!(n.trim_start_matches(prefix).to_ascii_lowercase()))
}

fn contact(c: &pb::Contact) -> Value {
    json!({"name": c.name, "email": c.email, "phone": c.phone})
}

/// A referral as JSON with readable enum names.
pub fn referral_json(r: &pb::Referral) -> Value {
    let customer = r.customer.clone().unwrap_or_default();
    let requirements = r.requirements.clone().unwrap_or_default();
    json!({
        "referral_id": r.referral_id,
        "rfi_id": r.rfi_id,
        "partner_id": r.partner_id,
        "region": r.region,
        "location": r.location,
        "status": enum_name(pb::Status::try_from(r.status).ok().map(|s| s.as_str_name()), "STATUS_"),
        "substatus": enum_name(pb::Substatus::try_from(r.substatus).ok().map(|s| s.as_str_name()), "SUBSTATUS_"),
        "customer": {
            "company_name": customer.company_name,
            "industry": customer.industry,
            "size_band": crate::grpc::convert::size_band("size_band", customer.size_band, &mut Violations::new())
                .map(|s| s.as_str()),
            "country": customer.country,
            "contact": customer.contact.as_ref().map(contact),
        },
        "requirements": {
            "description": requirements.description,
            "products": requirements.products,
            "services": requirements.services,
            "keywords": requirements.keywords,
        },
        "direct_contact_requested": r.direct_contact_requested,
        "received_at": time(&r.received_at),
        "response_due_at": time(&r.response_due_at),
        "overdue": r.overdue,
        "expires_at": time(&r.expires_at),
        "contact_alert": enum_name(pb::ContactAlert::try_from(r.contact_alert).ok().map(|s| s.as_str_name()), "CONTACT_ALERT_"),
        "accepted_at": time(&r.accepted_at),
        "engagement": r.engagement.as_ref().map(|g| json!({
            "name": g.name,
            "estimated_value": money(&g.estimated_value),
            "estimated_purchase_date": date(&g.estimated_purchase_date),
            "notes": g.notes,
            "crm_id": g.crm_id,
            "campaign_id": g.campaign_id,
        })),
        "contacts": r.contacts.iter().map(contact).collect::<Vec<_>>(),
        "outcome": r.outcome.as_ref().map(|o| json!({
            "closed_at": time(&o.closed_at),
            "reason": enum_name(pb::ReasonCode::try_from(o.reason).ok().filter(|c| *c != pb::ReasonCode::Unspecified).map(|s| s.as_str_name()), "REASON_CODE_"),
            "reason_notes": o.reason_notes,
            "final_value": money(&o.final_value),
            "closed_on": date(&o.closed_on),
        })),
        "last_changed_at": time(&r.last_changed_at),
        "stream_revision": r.stream_revision,
    })
}

fn referral_text(r: &pb::Referral) -> String {
    let j = referral_json(r);
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut lines = vec![
        format!("referral        {}", r.referral_id),
        format!("status          {} / {}", s(&j["status"]), s(&j["substatus"])),
        format!(
            "partner         {} (region {}{})",
            r.partner_id,
            r.region,
            if r.location.is_empty() { String::new() } else { format!(", location {}", r.location) }
        ),
        format!("rfi             {}", r.rfi_id),
        format!("customer        {} ({} employees)", s(&j["customer"]["company_name"]), s(&j["customer"]["size_band"])),
        format!("received        {}", s(&j["received_at"])),
        format!("response due    {}{}", s(&j["response_due_at"]), if r.overdue { " (overdue)" } else { "" }),
        format!("expires         {}", s(&j["expires_at"])),
        format!("contact alert   {}", s(&j["contact_alert"])),
    ];
    if let Some(g) = &r.engagement {
        lines.push(format!("engagement      {}", g.name));
        lines.push(format!("  value         {}", money_text(&g.estimated_value)));
        lines.push(format!("  purchase date {}", s(&date(&g.estimated_purchase_date))));
        lines.push(format!("  notes         {}", g.notes));
        if !g.crm_id.is_empty() {
            lines.push(format!("  crm id        {}", g.crm_id));
        }
    }
    for c in &r.contacts {
        lines.push(format!(
            "contact         {} <{}>{}",
            c.name,
            c.email,
            if c.phone.is_empty() { String::new() } else { format!(" {}", c.phone) }
        ));
    }
    if let Some(o) = &r.outcome {
        lines.push(format!("closed          {}", s(&time(&o.closed_at))));
        if o.final_value.is_some() {
            lines.push(format!("  final value   {}", money_text(&o.final_value)));
            lines.push(format!("  closed on     {}", s(&date(&o.closed_on))));
        }
        let reason = &j["outcome"]["reason"];
        if !reason.is_null() {
            lines.push(format!("  reason        {}", s(reason)));
        }
        if !o.reason_notes.is_empty() {
            lines.push(format!("  notes         {}", o.reason_notes));
        }
    }
    lines.push(format!("stream revision {}", r.stream_revision));
    lines.join("\n")
}

pub fn print(response: &Response, as_json: bool) {
    match response {
        Response::Command(verb, r) => {
            if as_json {
                emit!("{}", result_json(r));
            } else {
                emit!("{}", result_text(verb, r));
            }
        }
        Response::Submitted(s) => {
            if as_json {
                let list: Vec<Value> = s
                    .referrals
                    .iter()
                    .map(|r| {
                        json!({
                            "referral_id": r.referral_id,
                            "partner_id": r.partner_id,
                            "region": r.region,
                            "result": r.result.as_ref().map(result_json),
                        })
                    })
                    .collect();
                emit!("{}", json!({ "referrals": list }));
            } else {
                for r in &s.referrals {
                    let replay = r.result.as_ref().is_some_and(|x| x.replayed);
                    emit!(
                        "referral {} for partner {} (region {}){}",
                        r.referral_id,
                        r.partner_id,
                        r.region,
                        if replay { " (already submitted)" } else { "" }
                    );
                }
            }
        }
        Response::Referral(r) => {
            if as_json {
                emit!("{}", referral_json(r));
            } else {
                emit!("{}", referral_text(r));
            }
        }
    }
}

pub fn print_failure(failure: &Failure, as_json: bool) {
    match failure {
        Failure::Local(message) => {
            if as_json {
                emit!("{}", json!({"error": {"code": "local", "message": message}}));
            } else {
                eprintln!("error: {message}");
            }
        }
        Failure::Rpc(status) => {
            let violations: Vec<(String, String)> = status
                .get_details_bad_request()
                .map(|b| b.field_violations.into_iter().map(|v| (v.field, v.description)).collect())
                .unwrap_or_default();
            let code = code_name(status.code());
            if as_json {
                let fields: Vec<Value> =
                    violations.iter().map(|(f, d)| json!({"field": f, "description": d})).collect();
                emit!("{}", json!({"error": {"code": code, "message": status.message(), "field_violations": fields}}));
            } else {
                eprintln!("error ({code}): {}", status.message());
                for (field, description) in violations {
                    eprintln!("  {field}: {description}");
                }
            }
        }
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::Aborted => "ABORTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::Internal => "INTERNAL",
        _ => "ERROR",
    }
}
