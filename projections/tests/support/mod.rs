//! Shared by the projection suites: a log written through the domain's own
//! deciders (so every history is one the engine could have written), turned
//! into the events projections see, and helpers over the view database.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use referral_domain::clock::{ExpiryPolicy, Now};
use referral_domain::codec::{self, DomainEvent, EventMetadata, CURRENT_SCHEMA_VERSION};
use referral_domain::eventlog::{Position, RecordedEvent, StreamName, StreamRevision};
use referral_domain::ids::{LocationId, PartnerId, ReferralId, RegionId, RfiId};
use referral_domain::profile::{self, LocationInput, PartnerAction, PartnerCommand, PartnerState, ProfileInput};
use referral_domain::referral::{
    self, AcceptReferral, Consent, CustomerInput, MoneyInput, ReceiveReferral, Referral, ReferralAction,
    ReferralCommand, ReferralEvent, ReferralState, RequirementsInput, Source, UpdateEngagement,
};
use referral_domain::values::{ContactInput, ReasonCode, SizeBand};
use referral_domain::DomainError;
use referral_projections::db::{self, ViewDb};
use referral_projections::runner;
use referral_projections::{ProjectedEvent, Projection, Version};
use rusqlite::types::Value;
use rusqlite::Connection;
use uuid::Uuid;

pub fn ts(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().expect("a valid UTC time")
}

/// Where every log starts.
pub fn t0() -> DateTime<Utc> {
    ts(2026, 11, 2, 9, 0, 0)
}

/// An RFI for one partner, with the features history breaks figures down by.
#[derive(Debug, Clone)]
pub struct Rfi {
    pub rfi: String,
    pub partner: String,
    pub region: String,
    pub location: Option<String>,
    pub industry: Option<String>,
    pub size: SizeBand,
    pub products: Vec<String>,
    pub services: Vec<String>,
    pub keywords: Vec<String>,
    pub direct_contact: bool,
    /// When the RFI was received; the log's present when `None`.
    pub received_at: Option<DateTime<Utc>>,
}

impl Rfi {
    pub fn new(rfi: &str, partner: &str, region: &str) -> Rfi {
        Rfi {
            rfi: rfi.into(),
            partner: partner.into(),
            region: region.into(),
            location: None,
            industry: Some("manufacturing".into()),
            size: SizeBand::S51To250,
            products: vec!["erp".into()],
            services: vec![],
            keywords: vec!["cloud".into()],
            direct_contact: false,
            received_at: None,
        }
    }
}

pub fn eur(units: i64) -> MoneyInput {
    MoneyInput { currency_code: "EUR".into(), units, nanos: 0 }
}

pub fn money(code: &str, units: i64) -> MoneyInput {
    MoneyInput { currency_code: code.into(), units, nanos: 0 }
}

/// A global log: partner and referral streams, revisions per stream,
/// positions 1, 2, 3... and the domain state of every aggregate.
pub struct Log {
    pub now: DateTime<Utc>,
    pub events: Vec<Arc<ProjectedEvent>>,
    revisions: HashMap<String, u64>,
    pub partners: BTreeMap<String, PartnerState>,
    pub referrals: BTreeMap<ReferralId, Referral>,
    /// Every referral event of each referral, in order.
    pub streams: BTreeMap<ReferralId, Vec<ReferralEvent>>,
    commands: u64,
}

impl Log {
    pub fn new(now: DateTime<Utc>) -> Log {
        Log {
            now,
            events: Vec::new(),
            revisions: HashMap::new(),
            partners: BTreeMap::new(),
            referrals: BTreeMap::new(),
            streams: BTreeMap::new(),
            commands: 0,
        }
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Moves the present to `at` (never backwards).
    pub fn at(&mut self, at: DateTime<Utc>) {
        assert!(at >= self.now, "the log's clock only moves forward ({at} < {})", self.now);
        self.now = at;
    }

    pub fn last_position(&self) -> Position {
        self.events.last().map(|e| e.position).expect("a non-empty log")
    }

    pub fn referral(&self, id: ReferralId) -> &Referral {
        &self.referrals[&id]
    }

    fn metadata(&mut self, actor: String) -> EventMetadata {
        self.commands += 1;
        let id = format!("cmd-{}", self.commands);
        EventMetadata {
            correlation_id: format!("corr-{}", self.commands),
            causation_id: id.clone(),
            command_id: id,
            actor,
            schema_version: CURRENT_SCHEMA_VERSION,
            occurred_at: self.now,
        }
    }

    fn record(&mut self, stream: StreamName, events: Vec<DomainEvent>, metadata: &EventMetadata) {
        for event in events {
            let data = codec::encode(Uuid::new_v4(), &event, metadata);
            let revision = self.revisions.entry(stream.as_str().to_string()).or_insert(0);
            let position = Position::at(self.events.len() as u64 + 1);
            let recorded = RecordedEvent {
                stream: stream.clone(),
                revision: StreamRevision(*revision),
                position,
                id: data.id,
                event_type: data.event_type,
                data: data.data,
                metadata: data.metadata,
                created: self.now,
            };
            *revision += 1;
            self.events.push(Arc::new(ProjectedEvent::decode(recorded).expect("a freshly encoded event decodes")));
        }
    }

    /// Registers a profile for `partner` in `region` with these locations.
    pub fn register(&mut self, partner: &str, region: &str, locations: &[&str]) {
        let id = PartnerId::parse(partner).expect("partner id");
        let state = self.partners.get(partner).cloned().unwrap_or_default();
        let command = PartnerCommand {
            partner: id.clone(),
            action: PartnerAction::RegisterProfile(ProfileInput {
                region: region.into(),
                company_name: format!("{partner} GmbH"),
                description: "Cloud and ERP projects.".into(),
                locations: locations
                    .iter()
                    .map(|l| LocationInput { id: l.to_string(), name: l.to_uppercase(), contacts: vec![] })
                    .collect(),
                expertise: Default::default(),
                target_sizes: vec![],
            }),
        };
        let events = profile::decide(&state, command, Now(self.now)).expect("profile registered");
        let state = events.iter().fold(state, profile::evolve);
        self.partners.insert(partner.to_string(), state);
        let metadata = self.metadata("intake/marketplace".into());
        self.record(id.stream(), events.into_iter().map(DomainEvent::Partner).collect(), &metadata);
    }

    /// Decides `action` on referral `id` now and records what it decided.
    pub fn try_run(&mut self, id: ReferralId, action: ReferralAction) -> Result<Vec<ReferralEvent>, DomainError> {
        let state = ReferralState(self.referrals.get(&id).cloned());
        let actor = match (&action, &state.0) {
            (ReferralAction::Receive(_), _) => "intake/marketplace".to_string(),
            (ReferralAction::Expire, _) => "system/expiry".to_string(),
            (_, Some(r)) => format!("partner:{}/alice", r.partner),
            (_, None) => "partner/unknown".to_string(),
        };
        let events = referral::decide(&state, ReferralCommand { referral: id, action }, Now(self.now))?;
        let state = events.iter().fold(state, referral::evolve);
        if let Some(r) = state.0 {
            self.referrals.insert(id, r);
        }
        self.streams.entry(id).or_default().extend(events.iter().cloned());
        let metadata = self.metadata(actor);
        self.record(id.stream(), events.iter().cloned().map(DomainEvent::Referral).collect(), &metadata);
        Ok(events)
    }

    #[track_caller]
    pub fn run(&mut self, id: ReferralId, action: ReferralAction) -> Vec<ReferralEvent> {
        match self.try_run(id, action.clone()) {
            Ok(events) => events,
            Err(e) => panic!("{} refused at {}: {e}", action.describe(), self.now),
        }
    }

    /// Receives an RFI for one partner; the referral's id.
    #[track_caller]
    pub fn receive(&mut self, rfi: &Rfi) -> ReferralId {
        let (partner, region) = (PartnerId::parse(&rfi.partner).unwrap(), RegionId::parse(&rfi.region).unwrap());
        let id = ReferralId::for_rfi(&RfiId::parse(&rfi.rfi).unwrap(), &partner, &region);
        let partner_state = self.partners.get(&rfi.partner).cloned().unwrap_or_default();
        let action = ReferralAction::Receive(Box::new(ReceiveReferral {
            rfi: RfiId::parse(&rfi.rfi).unwrap(),
            partner,
            region,
            location: rfi.location.as_deref().map(|l| LocationId::parse(l).unwrap()),
            customer: CustomerInput {
                company_name: format!("Customer of {}", rfi.rfi),
                industry: rfi.industry.clone().unwrap_or_default(),
                size_band: Some(rfi.size),
                country: "DE".into(),
                contact: ContactInput::new("Jonas Weber", "jonas@customer.example", "+49 30 1234567"),
            },
            requirements: RequirementsInput {
                description: format!("Requirements of {}", rfi.rfi),
                products: rfi.products.clone(),
                services: rfi.services.clone(),
                keywords: rfi.keywords.clone(),
            },
            consent: Consent { contact: true, share_details: true },
            direct_contact_requested: rfi.direct_contact,
            source: Source::PartnerSearch,
            received_at: rfi.received_at.unwrap_or(self.now),
            expiry: ExpiryPolicy::default(),
            partner_state,
        }));
        self.run(id, action);
        id
    }

    pub fn accept_with(&mut self, id: ReferralId, value: MoneyInput, contacts: &[&str]) -> Vec<ReferralEvent> {
        let today = self.now.date_naive();
        self.run(
            id,
            ReferralAction::Accept(AcceptReferral {
                engagement_name: format!("Deal {}", &id.to_string()[..8]),
                estimated_value: value,
                estimated_purchase_date: Some(today + Duration::days(30)),
                notes: "Wants a phased rollout.".into(),
                crm_id: "CRM-1".into(),
                campaign_id: String::new(),
                contacts: contacts.iter().map(|email| ContactInput::new("Team Member", email, "")).collect(),
            }),
        )
    }

    pub fn accept(&mut self, id: ReferralId) -> Vec<ReferralEvent> {
        self.accept_with(id, eur(10_000), &[])
    }

    pub fn decline(&mut self, id: ReferralId, reason: ReasonCode) -> Vec<ReferralEvent> {
        let notes = if reason == ReasonCode::Other { "no capacity" } else { "" };
        self.run(id, ReferralAction::Decline { reason: Some(reason), notes: notes.into() })
    }

    pub fn expire(&mut self, id: ReferralId) -> Vec<ReferralEvent> {
        self.run(id, ReferralAction::Expire)
    }

    pub fn add_contact(&mut self, id: ReferralId, email: &str) -> Vec<ReferralEvent> {
        self.run(id, ReferralAction::AddContact(ContactInput::new("Team Member", email, "")))
    }

    pub fn update(&mut self, id: ReferralId, update: UpdateEngagement) -> Vec<ReferralEvent> {
        self.run(id, ReferralAction::UpdateEngagement(update))
    }

    pub fn won(&mut self, id: ReferralId, value: MoneyInput, closed_on: NaiveDate) -> Vec<ReferralEvent> {
        self.run(id, ReferralAction::MarkWon { final_value: value, closed_on: Some(closed_on) })
    }

    pub fn lost(&mut self, id: ReferralId, reason: ReasonCode) -> Vec<ReferralEvent> {
        let notes = if reason == ReasonCode::Other { "went quiet" } else { "" };
        self.run(id, ReferralAction::MarkLost { reason: Some(reason), notes: notes.into() })
    }
}

/// Registers `version` of `projection` and creates its tables.
pub fn register_version(conn: &Connection, projection: &dyn Projection, version: u32, active: bool) {
    db::insert_version(conn, projection.name(), version, projection.schema(), active).expect("register version");
    projection.create(conn, Version(version)).expect("create tables");
    referral_projections::projection::create_indexes(conn, projection, Version(version)).expect("create indexes");
}

/// A view database at `path` with version 1 of every projection, active, and
/// `events` applied to each in one batch.
pub fn build_views(path: &Path, events: &[Arc<ProjectedEvent>]) -> ViewDb {
    let db = ViewDb::open(path).expect("open views");
    for p in referral_projections::all_projections() {
        let conn = db.connect(p.name()).expect("connect");
        register_version(&conn, p.as_ref(), 1, true);
        if !events.is_empty() {
            runner::commit(&db, p.as_ref(), Version(1), events).expect("commit");
        }
    }
    db
}

/// One connection that sees every projection's tables: an in-memory main
/// database with each projection's file attached under the projection's
/// name. Table names are unique across projections, so unqualified names
/// find their file; the registries must be read through `db.connect(name)`.
pub fn all_views(db: &ViewDb) -> Connection {
    let conn = Connection::open_in_memory().expect("open");
    for p in referral_projections::all_projections() {
        db.file(p.name()).expect("open the projection's file");
        let path = db.path_of(p.name());
        conn.execute("ATTACH DATABASE ?1 AS ?2", rusqlite::params![path.to_string_lossy(), p.name()]).expect("attach");
    }
    conn
}

/// Every row of `table`, ordered by all its columns.
pub fn table_rows(conn: &Connection, table: &str) -> Vec<Vec<Value>> {
    let columns: usize = conn
        .query_row(&format!("SELECT COUNT(*) FROM pragma_table_info('{table}')"), [], |r| r.get::<_, i64>(0))
        .expect("table info") as usize;
    assert!(columns > 0, "table {table} does not exist");
    let order: Vec<String> = (1..=columns).map(|i| i.to_string()).collect();
    let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY {}", order.join(", "))).expect("select");
    let rows = stmt
        .query_map([], |row| (0..columns).map(|i| row.get::<_, Value>(i)).collect::<Result<Vec<_>, _>>())
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    rows
}

/// The names of the tables in the view database.
pub fn table_names(conn: &Connection) -> Vec<String> {
    let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").unwrap();
    let names = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    names
}

/// A temporary directory for view databases: in memory-backed `/dev/shm`
/// where there is one. Views are disposable (they are rebuilt from the log)
/// and these tests are about what the files hold, not about fsync, which on
/// a busy disk would make every reopen cost tens of milliseconds.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("temporary directory")
}
