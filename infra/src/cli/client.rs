//! Client subcommands: one per gRPC command, plus `get-referral`.

use std::process::ExitCode;

use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Subcommand};
use referral_domain::values::{Money, ReasonCode, SizeBand};
use tonic::transport::Channel;

use super::output;
use crate::grpc::auth::{BearerToken, CommandsClient};
use crate::grpc::convert::{date_to_pb, money_to_pb, reason_to_pb, size_band_to_pb, timestamp_to_pb};
use crate::grpc::pb;

/// How to reach the server.
#[derive(Args, Clone)]
pub struct Connection {
    /// The server's gRPC address.
    #[arg(long, env = "REFERRAL_ENGINE_SERVER", default_value = "http://127.0.0.1:50051", global = true)]
    pub(super) server: String,
    /// The API token (see `referral-engine token add`).
    #[arg(long, env = "REFERRAL_ENGINE_TOKEN", hide_env_values = true, global = true)]
    pub(super) token: Option<String>,
    /// Print the response as JSON.
    #[arg(long, global = true)]
    pub(super) json: bool,
}

/// A command's idempotency key.
#[derive(Args, Clone)]
pub struct RequestId {
    /// Client-chosen request id; reuse it to retry safely. A new UUID by default.
    #[arg(long)]
    request_id: Option<String>,
}

impl RequestId {
    fn get(&self) -> String {
        self.request_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Register a partner's business profile for one region.
    RegisterProfile(RegisterProfile),
    /// Change a region profile (only the options given).
    UpdateProfile(UpdateProfile),
    /// Pause a region profile: no new referrals.
    PauseProfile(ProfileRef),
    /// Resume a paused region profile.
    ResumeProfile(ProfileRef),
    /// Submit a customer's RFI to one or more partners.
    SubmitRfi(SubmitRfi),
    /// Accept a New referral.
    Accept(Accept),
    /// Decline a New referral.
    Decline(Reasoned),
    /// Add a contact to an Active referral.
    AddContact(AddContact),
    /// Edit an Active referral's engagement (only the options given).
    UpdateEngagement(UpdateEngagementArgs),
    /// Report an Active referral won.
    Won(Won),
    /// Report an Active referral lost.
    Lost(Reasoned),
    /// Show a referral's current state.
    GetReferral {
        referral_id: String,
        #[command(flatten)]
        conn: Connection,
    },
}

#[derive(Args)]
pub struct RegisterProfile {
    #[arg(long)]
    partner: String,
    #[arg(long)]
    region: String,
    #[arg(long)]
    company_name: String,
    #[arg(long, default_value = "")]
    description: String,
    /// A location as ID=NAME; 1 to 5 of them.
    #[arg(long = "location", value_parser = parse_location)]
    locations: Vec<(String, String)>,
    /// A location's contact as LOCATION,NAME,EMAIL[,PHONE]; repeatable.
    #[arg(long = "location-contact")]
    location_contacts: Vec<String>,
    #[arg(long = "industry")]
    industries: Vec<String>,
    #[arg(long = "product")]
    products: Vec<String>,
    #[arg(long = "service")]
    services: Vec<String>,
    #[arg(long = "solution")]
    solutions: Vec<String>,
    /// A customer size the partner takes (1-9, 10-50, 51-250, 251-1000, 1001-5000,
    /// 5001-10000, 10001-20000, 20000+); all when none is given.
    #[arg(long = "size", value_parser = SizeBand::parse)]
    sizes: Vec<SizeBand>,
    #[command(flatten)]
    id: RequestId,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args)]
pub struct UpdateProfile {
    #[arg(long)]
    partner: String,
    #[arg(long)]
    region: String,
    #[arg(long)]
    company_name: Option<String>,
    /// An empty string clears the description.
    #[arg(long)]
    description: Option<String>,
    /// Replaces all locations: ID=NAME, repeatable.
    #[arg(long = "location", value_parser = parse_location)]
    locations: Vec<(String, String)>,
    /// Replaces the target sizes; repeatable.
    #[arg(long = "size", value_parser = SizeBand::parse)]
    sizes: Vec<SizeBand>,
    #[command(flatten)]
    id: RequestId,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args)]
pub struct ProfileRef {
    #[arg(long)]
    partner: String,
    #[arg(long)]
    region: String,
    #[command(flatten)]
    id: RequestId,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args)]
pub struct SubmitRfi {
    /// The RFI's id; a new one by default.
    #[arg(long)]
    rfi_id: Option<String>,
    /// A target as PARTNER:REGION[:LOCATION]; repeatable.
    #[arg(long = "to", required = true)]
    targets: Vec<String>,
    /// The customer's company name.
    #[arg(long)]
    company: String,
    #[arg(long, default_value = "")]
    industry: String,
    /// Company size band, e.g. 51-250.
    #[arg(long, value_parser = SizeBand::parse)]
    size: SizeBand,
    #[arg(long, default_value = "")]
    country: String,
    #[arg(long)]
    contact_name: String,
    #[arg(long)]
    contact_email: String,
    #[arg(long, default_value = "")]
    contact_phone: String,
    /// What the customer needs.
    #[arg(long)]
    requirements: String,
    #[arg(long = "product")]
    products: Vec<String>,
    #[arg(long = "service")]
    services: Vec<String>,
    #[arg(long = "keyword")]
    keywords: Vec<String>,
    /// The customer consents to being contacted and to sharing their details.
    #[arg(long)]
    consent: bool,
    /// The customer asked to be contacted directly (hot alert for 72 hours).
    #[arg(long)]
    direct_contact: bool,
    /// marketing-campaign, sales-agent, partner-search or other.
    #[arg(long, default_value = "partner-search")]
    source: String,
    /// When the RFI was received (RFC 3339); now by default.
    #[arg(long)]
    received_at: Option<DateTime<Utc>>,
    #[command(flatten)]
    id: RequestId,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args)]
pub struct Accept {
    referral_id: String,
    /// The engagement's name.
    #[arg(long)]
    name: String,
    /// Estimated deal value, a decimal amount such as 12500.00.
    #[arg(long)]
    value: String,
    /// ISO 4217 currency code.
    #[arg(long)]
    currency: String,
    /// Estimated purchase date, YYYY-MM-DD.
    #[arg(long)]
    purchase_date: NaiveDate,
    /// What the customer needs.
    #[arg(long)]
    notes: String,
    #[arg(long, default_value = "")]
    crm_id: String,
    #[arg(long, default_value = "")]
    campaign_id: String,
    /// An extra contact as NAME,EMAIL[,PHONE]; repeatable.
    #[arg(long = "contact")]
    contacts: Vec<String>,
    #[command(flatten)]
    id: RequestId,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args)]
pub struct Reasoned {
    referral_id: String,
    /// budget_not_adequate, customer_did_not_respond, customer_chose_another_vendor,
    /// customer_requirement_not_met, not_a_real_customer, timeline_too_short,
    /// abuse_spam_phishing or other.
    #[arg(long, value_parser = ReasonCode::parse)]
    reason: ReasonCode,
    /// Required when the reason is "other".
    #[arg(long, default_value = "")]
    notes: String,
    #[command(flatten)]
    id: RequestId,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args)]
pub struct AddContact {
    referral_id: String,
    #[arg(long)]
    name: String,
    #[arg(long)]
    email: String,
    #[arg(long, default_value = "")]
    phone: String,
    #[command(flatten)]
    id: RequestId,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args)]
pub struct UpdateEngagementArgs {
    referral_id: String,
    #[arg(long)]
    name: Option<String>,
    /// New estimated value (needs --currency).
    #[arg(long, requires = "currency")]
    value: Option<String>,
    #[arg(long, requires = "value")]
    currency: Option<String>,
    #[arg(long)]
    purchase_date: Option<NaiveDate>,
    #[arg(long)]
    notes: Option<String>,
    /// An empty string clears it.
    #[arg(long)]
    crm_id: Option<String>,
    /// An empty string clears it.
    #[arg(long)]
    campaign_id: Option<String>,
    #[command(flatten)]
    id: RequestId,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args)]
pub struct Won {
    referral_id: String,
    /// Final deal value, e.g. 11800.00.
    #[arg(long)]
    value: String,
    #[arg(long)]
    currency: String,
    /// When the deal closed, YYYY-MM-DD.
    #[arg(long)]
    closed_on: NaiveDate,
    #[command(flatten)]
    id: RequestId,
    #[command(flatten)]
    conn: Connection,
}

fn parse_location(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(id, name)| (id.to_string(), name.to_string()))
        .ok_or_else(|| format!("{text:?} is not ID=NAME"))
}

fn parse_contact(text: &str) -> Result<pb::Contact, String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    match parts.as_slice() {
        [name, email] => Ok(pb::Contact { name: name.to_string(), email: email.to_string(), phone: String::new() }),
        [name, email, phone] => {
            Ok(pb::Contact { name: name.to_string(), email: email.to_string(), phone: phone.to_string() })
        }
        _ => Err(format!("{text:?} is not NAME,EMAIL[,PHONE]")),
    }
}

fn money(value: &str, currency: &str) -> Result<pb::google::r#type::Money, String> {
    Money::parse_decimal(currency, value).map(|m| money_to_pb(&m)).map_err(|e| format!("--value/--currency: {e}"))
}

fn source(text: &str) -> Result<pb::Source, String> {
    match text {
        "marketing-campaign" => Ok(pb::Source::MarketingCampaign),
        "sales-agent" => Ok(pb::Source::SalesAgent),
        "partner-search" => Ok(pb::Source::PartnerSearch),
        "other" => Ok(pb::Source::Other),
        _ => Err(format!("--source {text:?}: use marketing-campaign, sales-agent, partner-search or other")),
    }
}

type Client = CommandsClient;

async fn connect(conn: &Connection) -> Result<Client, String> {
    let (channel, bearer) = open(conn).await?;
    Ok(bearer.client(channel))
}

/// A connection to the server and the token to send on it, for a client of any service.
pub(super) async fn open(conn: &Connection) -> Result<(Channel, BearerToken), String> {
    let token = conn
        .token
        .clone()
        .ok_or("no token: pass --token or set REFERRAL_ENGINE_TOKEN (see `referral-engine token add`)")?;
    let bearer = BearerToken::new(&token)?;
    let channel = Channel::from_shared(conn.server.clone())
        .map_err(|e| format!("--server {}: {e}", conn.server))?
        .connect()
        .await
        .map_err(|e| format!("cannot reach {}: {e}", conn.server))?;
    Ok((channel, bearer))
}

fn conn_of(command: &ClientCommand) -> &Connection {
    match command {
        ClientCommand::RegisterProfile(a) => &a.conn,
        ClientCommand::UpdateProfile(a) => &a.conn,
        ClientCommand::PauseProfile(a) | ClientCommand::ResumeProfile(a) => &a.conn,
        ClientCommand::SubmitRfi(a) => &a.conn,
        ClientCommand::Accept(a) => &a.conn,
        ClientCommand::Decline(a) | ClientCommand::Lost(a) => &a.conn,
        ClientCommand::AddContact(a) => &a.conn,
        ClientCommand::UpdateEngagement(a) => &a.conn,
        ClientCommand::Won(a) => &a.conn,
        ClientCommand::GetReferral { conn, .. } => conn,
    }
}

/// Runs one client subcommand and prints its result.
pub async fn run(command: ClientCommand) -> ExitCode {
    let conn = conn_of(&command).clone();
    let result = async {
        let mut client = connect(&conn).await.map_err(output::Failure::Local)?;
        call(&mut client, command).await
    }
    .await;
    match result {
        Ok(response) => {
            output::print(&response, conn.json);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            output::print_failure(&failure, conn.json);
            ExitCode::FAILURE
        }
    }
}

async fn call(client: &mut Client, command: ClientCommand) -> Result<output::Response, output::Failure> {
    use output::Response as R;
    let local = output::Failure::Local;
    Ok(match command {
        ClientCommand::RegisterProfile(a) => {
            let mut locations: Vec<pb::Location> = a
                .locations
                .iter()
                .map(|(id, name)| pb::Location { id: id.clone(), name: name.clone(), contacts: vec![] })
                .collect();
            for text in &a.location_contacts {
                let (loc, rest) = text
                    .split_once(',')
                    .ok_or_else(|| local(format!("--location-contact {text:?} is not LOCATION,NAME,EMAIL[,PHONE]")))?;
                let contact = parse_contact(rest).map_err(local)?;
                let location = locations
                    .iter_mut()
                    .find(|l| l.id == loc)
                    .ok_or_else(|| local(format!("--location-contact names unknown location {loc:?}")))?;
                location.contacts.push(contact);
            }
            let request = pb::RegisterPartnerProfileRequest {
                request_id: a.id.get(),
                partner_id: a.partner,
                region: a.region,
                company_name: a.company_name,
                description: a.description,
                locations,
                expertise: Some(pb::Expertise {
                    industries: a.industries,
                    products: a.products,
                    services: a.services,
                    solutions: a.solutions,
                }),
                target_sizes: a.sizes.into_iter().map(|s| size_band_to_pb(s) as i32).collect(),
            };
            R::Command("registered profile", client.register_partner_profile(request).await?.into_inner())
        }
        ClientCommand::UpdateProfile(a) => {
            let request = pb::UpdatePartnerProfileRequest {
                request_id: a.id.get(),
                partner_id: a.partner,
                region: a.region,
                company_name: a.company_name,
                description: a.description,
                replace_locations: !a.locations.is_empty(),
                locations: a
                    .locations
                    .iter()
                    .map(|(id, name)| pb::Location { id: id.clone(), name: name.clone(), contacts: vec![] })
                    .collect(),
                expertise: None,
                replace_target_sizes: !a.sizes.is_empty(),
                target_sizes: a.sizes.into_iter().map(|s| size_band_to_pb(s) as i32).collect(),
            };
            R::Command("updated profile", client.update_partner_profile(request).await?.into_inner())
        }
        ClientCommand::PauseProfile(a) => {
            let request =
                pb::SetPartnerProfileStatusRequest { request_id: a.id.get(), partner_id: a.partner, region: a.region };
            R::Command("paused profile", client.pause_partner_profile(request).await?.into_inner())
        }
        ClientCommand::ResumeProfile(a) => {
            let request =
                pb::SetPartnerProfileStatusRequest { request_id: a.id.get(), partner_id: a.partner, region: a.region };
            R::Command("resumed profile", client.resume_partner_profile(request).await?.into_inner())
        }
        ClientCommand::SubmitRfi(a) => {
            let targets = a
                .targets
                .iter()
                .map(|t| {
                    let parts: Vec<&str> = t.split(':').collect();
                    match parts.as_slice() {
                        [p, r] => Ok(pb::RfiTarget {
                            partner_id: p.to_string(),
                            region: r.to_string(),
                            location: String::new(),
                        }),
                        [p, r, l] => Ok(pb::RfiTarget {
                            partner_id: p.to_string(),
                            region: r.to_string(),
                            location: l.to_string(),
                        }),
                        _ => Err(local(format!("--to {t:?} is not PARTNER:REGION[:LOCATION]"))),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let request = pb::SubmitRfiRequest {
                request_id: a.id.get(),
                rfi_id: a.rfi_id.unwrap_or_else(|| format!("rfi-{}", uuid::Uuid::new_v4().simple())),
                targets,
                customer: Some(pb::Customer {
                    company_name: a.company,
                    industry: a.industry,
                    size_band: size_band_to_pb(a.size) as i32,
                    country: a.country,
                    contact: Some(pb::Contact { name: a.contact_name, email: a.contact_email, phone: a.contact_phone }),
                }),
                requirements: Some(pb::Requirements {
                    description: a.requirements,
                    products: a.products,
                    services: a.services,
                    keywords: a.keywords,
                }),
                consent: Some(pb::Consent { contact: a.consent, share_details: a.consent }),
                direct_contact_requested: a.direct_contact,
                source: source(&a.source).map_err(local)? as i32,
                received_at: a.received_at.map(timestamp_to_pb),
            };
            R::Submitted(client.submit_rfi(request).await?.into_inner())
        }
        ClientCommand::Accept(a) => {
            let contacts = a.contacts.iter().map(|c| parse_contact(c)).collect::<Result<Vec<_>, _>>().map_err(local)?;
            let request = pb::AcceptReferralRequest {
                request_id: a.id.get(),
                referral_id: a.referral_id,
                engagement_name: a.name,
                estimated_value: Some(money(&a.value, &a.currency).map_err(local)?),
                estimated_purchase_date: Some(date_to_pb(a.purchase_date)),
                notes: a.notes,
                crm_id: a.crm_id,
                campaign_id: a.campaign_id,
                contacts,
            };
            R::Command("accepted", client.accept_referral(request).await?.into_inner())
        }
        ClientCommand::Decline(a) => {
            let request = pb::DeclineReferralRequest {
                request_id: a.id.get(),
                referral_id: a.referral_id,
                reason: reason_to_pb(a.reason) as i32,
                notes: a.notes,
            };
            R::Command("declined", client.decline_referral(request).await?.into_inner())
        }
        ClientCommand::AddContact(a) => {
            let request = pb::AddContactRequest {
                request_id: a.id.get(),
                referral_id: a.referral_id,
                contact: Some(pb::Contact { name: a.name, email: a.email, phone: a.phone }),
            };
            R::Command("added contact", client.add_contact(request).await?.into_inner())
        }
        ClientCommand::UpdateEngagement(a) => {
            let estimated_value = match (&a.value, &a.currency) {
                (Some(v), Some(c)) => Some(money(v, c).map_err(local)?),
                _ => None,
            };
            let request = pb::UpdateEngagementRequest {
                request_id: a.id.get(),
                referral_id: a.referral_id,
                engagement_name: a.name,
                estimated_value,
                estimated_purchase_date: a.purchase_date.map(date_to_pb),
                notes: a.notes,
                crm_id: a.crm_id,
                campaign_id: a.campaign_id,
            };
            R::Command("updated engagement", client.update_engagement(request).await?.into_inner())
        }
        ClientCommand::Won(a) => {
            let request = pb::MarkWonRequest {
                request_id: a.id.get(),
                referral_id: a.referral_id,
                final_value: Some(money(&a.value, &a.currency).map_err(local)?),
                closed_on: Some(date_to_pb(a.closed_on)),
            };
            R::Command("marked won", client.mark_won(request).await?.into_inner())
        }
        ClientCommand::Lost(a) => {
            let request = pb::MarkLostRequest {
                request_id: a.id.get(),
                referral_id: a.referral_id,
                reason: reason_to_pb(a.reason) as i32,
                notes: a.notes,
            };
            R::Command("marked lost", client.mark_lost(request).await?.into_inner())
        }
        ClientCommand::GetReferral { referral_id, .. } => {
            R::Referral(Box::new(client.get_referral(pb::GetReferralRequest { referral_id }).await?.into_inner()))
        }
    })
}
