//! Synthetic referral histories for the read-side benchmarks: many partners
//! (a few large, many small) with one to three regional profiles each, and
//! referrals that go through the lifecycles a partner programme sees:
//!
//! * about 12 % declined within hours or days, 10 % left to expire after 14 days;
//! * the rest accepted (some after the 24-hour window), given contacts and
//!   engagement edits over the following weeks, and then won (about half),
//!   lost (a third) or still open.
//!
//! Customers vary in industry, size band and country; requirements name
//! products, services and keywords; values are in the region's currency.
//! Every history is one the domain's deciders would accept (answers before
//! the expiry, purchase dates ahead, only changed fields in edits, distinct
//! contacts), so the projections apply all of it.
//!
//! Two ways to draw them:
//!
//! * [`Workload::next_event`]: one global, time-ordered log: referrals
//!   arrive every 30 simulated seconds and their steps interleave with
//!   everyone else's, as they would in the store;
//! * [`Workload::whole_referral`]: one referral's events up to a cut-off
//!   instant, in one piece (to fill views quickly).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use referral_domain::codec::{DomainEvent, EventMetadata, CURRENT_SCHEMA_VERSION};
use referral_domain::eventlog::{StreamName, StreamRevision};
use referral_domain::ids::{LocationId, PartnerId, ReferralId, RegionId, RfiId};
use referral_domain::profile::{Expertise, Location, PartnerEvent, ProfileRegistered, ProfileStatus, RegionProfile};
use referral_domain::referral::{
    Consent, ContactAdded, Customer, Engagement, EngagementUpdated, ReferralAccepted, ReferralDeclined, ReferralEvent,
    ReferralExpired, ReferralLost, ReferralReceived, ReferralWon, Requirements, Source,
};
use referral_domain::values::{Contact, Currency, Money, Reason, ReasonCode, SizeBand};
use uuid::Uuid;

/// Regions, their locations and the currency deals there are quoted in.
pub(crate) const REGIONS: [(&str, &[&str], &str, &str); 7] = [
    ("emea", &["london", "paris", "madrid", "milan", "warsaw"], "EUR", "FR"),
    ("dach", &["berlin", "munich", "vienna", "zurich", "hamburg"], "EUR", "DE"),
    ("nordics", &["stockholm", "oslo", "copenhagen", "helsinki"], "SEK", "SE"),
    ("na-east", &["new-york", "boston", "toronto", "atlanta"], "USD", "US"),
    ("na-west", &["seattle", "san-francisco", "denver", "vancouver"], "USD", "US"),
    ("apac", &["singapore", "sydney", "tokyo", "bangalore"], "JPY", "JP"),
    ("latam", &["sao-paulo", "mexico-city", "bogota"], "USD", "BR"),
];

const PARTNER_WORDS: [&str; 16] = [
    "contoso",
    "northwind",
    "tailspin",
    "wingtip",
    "litware",
    "proseware",
    "woodgrove",
    "fabrikam",
    "adatum",
    "lucerne",
    "trey",
    "coho",
    "alpine",
    "margie",
    "fourth-coffee",
    "wide-world",
];
const PARTNER_KINDS: [&str; 6] = ["consulting", "systems", "digital", "partners", "solutions", "group"];
const COMPANY_WORDS: [&str; 20] = [
    "Fabrikam",
    "Contoso",
    "Northwind",
    "Tailspin",
    "Wingtip",
    "Litware",
    "Proseware",
    "Woodgrove",
    "Adatum",
    "Lucerne",
    "Trey",
    "Coho",
    "Alpine",
    "Blue Yonder",
    "Relecloud",
    "Humongous",
    "Graphic Design",
    "VanArsdel",
    "Munson",
    "Bellows",
];
const COMPANY_KINDS: [&str; 10] =
    ["AG", "GmbH", "Ltd", "Inc", "Logistics", "Foods", "Health", "Energy", "Retail Group", "Bank"];
const INDUSTRIES: [&str; 12] = [
    "manufacturing",
    "retail",
    "healthcare",
    "financial-services",
    "public-sector",
    "education",
    "energy",
    "logistics",
    "media",
    "telecommunications",
    "hospitality",
    "agriculture",
];
const PRODUCTS: [&str; 12] = [
    "erp",
    "crm",
    "analytics",
    "collaboration",
    "security",
    "cloud-infrastructure",
    "devops",
    "ai-services",
    "data-platform",
    "iot",
    "supply-chain",
    "hr",
];
const SERVICES: [&str; 8] =
    ["migration", "implementation", "managed-services", "training", "advisory", "integration", "support", "licensing"];
const KEYWORDS: [&str; 30] = [
    "cloud",
    "hybrid",
    "sap",
    "kubernetes",
    "zero-trust",
    "gdpr",
    "finance",
    "reporting",
    "dashboards",
    "automation",
    "chatbot",
    "copilot",
    "data-lake",
    "warehouse",
    "backup",
    "disaster-recovery",
    "identity",
    "teams",
    "intranet",
    "e-commerce",
    "pos",
    "field-service",
    "scheduling",
    "payroll",
    "edge",
    "sensors",
    "forecasting",
    "compliance",
    "modernisation",
    "licensing",
];
const FIRST_NAMES: [&str; 12] =
    ["Jonas", "Ines", "Maria", "Ahmed", "Li", "Sofia", "Lukas", "Emma", "Noah", "Aiko", "Carlos", "Fatima"];
const LAST_NAMES: [&str; 12] =
    ["Weber", "Berg", "Rossi", "Khan", "Wang", "Novak", "Müller", "Dubois", "Smith", "Tanaka", "Silva", "Haddad"];

/// The key of a partner stream in [`Generated::key`]; referral keys are their ordinals.
const PARTNER_KEY: u64 = 1 << 63;

/// One generated event and where it goes.
pub(crate) struct Generated {
    /// Identifies the stream within this workload (cheaper to compare than its name).
    pub key: u64,
    pub stream: StreamName,
    /// This event's revision in its stream.
    pub revision: StreamRevision,
    pub event: DomainEvent,
    pub metadata: EventMetadata,
    /// When it happened (the simulated clock).
    pub at: DateTime<Utc>,
}

pub(crate) struct PartnerSpec {
    pub id: PartnerId,
    pub company: String,
    /// Indexes into [`REGIONS`], and the locations of each profile.
    pub regions: Vec<(usize, Vec<&'static str>)>,
}

/// What happens to a referral after it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Accept,
    Decline,
    Expire,
    AddContact,
    Update,
    Win,
    Lose,
}

/// A referral whose history is still being written.
struct Open {
    id: ReferralId,
    stream: StreamName,
    partner: usize,
    /// Revision of the last event written.
    revision: u64,
    received_at: DateTime<Utc>,
    currency: Currency,
    /// Estimated value in minor units, once accepted.
    value: i64,
    purchase_in_days: i64,
    label: String,
    contacts: u32,
    edits: u32,
    /// The remaining steps, in time order.
    steps: VecDeque<(DateTime<Utc>, Step)>,
}

impl Open {
    /// At least 30 days after receipt, so never in the past when the
    /// partner accepts (within 80 hours) or edits (within two weeks).
    fn purchase_date(&self) -> chrono::NaiveDate {
        (self.received_at + Duration::days(self.purchase_in_days)).date_naive()
    }
}

pub(crate) struct Workload {
    rng: StdRng,
    pub partners: Vec<PartnerSpec>,
    /// Cumulative weights for picking a partner (a few large, a long tail).
    cumulative: Vec<f64>,
    referrals: u64,
    // The time-ordered log.
    clock: DateTime<Utc>,
    next_arrival: DateTime<Utc>,
    open: HashMap<u64, Open>,
    due: BinaryHeap<Reverse<(i64, u64)>>,
    registrations: VecDeque<Generated>,
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

/// `count` distinct items of `items`, in their order.
fn some<T: Copy>(rng: &mut StdRng, items: &[T], count: usize) -> Vec<T> {
    let mut chosen: Vec<usize> = Vec::with_capacity(count);
    while chosen.len() < count.min(items.len()) {
        let i = rng.gen_range(0..items.len());
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }
    chosen.sort_unstable();
    chosen.into_iter().map(|i| items[i]).collect()
}

fn hours(rng: &mut StdRng, from: f64, to: f64) -> Duration {
    Duration::seconds((rng.gen_range(from..to) * 3600.0) as i64)
}

fn id<T>(parsed: Result<T, String>) -> T {
    // Every id below is built from the constants above, which are valid slugs.
    parsed.expect("generated ids are valid")
}

fn metadata(actor: String, at: DateTime<Utc>) -> EventMetadata {
    let command = Uuid::new_v4().to_string();
    EventMetadata {
        correlation_id: command.clone(),
        causation_id: command.clone(),
        command_id: command,
        actor,
        schema_version: CURRENT_SCHEMA_VERSION,
        occurred_at: at,
    }
}

impl Workload {
    /// A workload over `partners` partners whose log starts at `start`.
    pub fn new(seed: u64, partners: usize, start: DateTime<Utc>) -> Workload {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut specs = Vec::with_capacity(partners);
        for i in 0..partners {
            let word = PARTNER_WORDS[i % PARTNER_WORDS.len()];
            let kind = PARTNER_KINDS[(i / PARTNER_WORDS.len()) % PARTNER_KINDS.len()];
            let region_count = 1 + usize::from(rng.gen_bool(0.4)) + usize::from(rng.gen_bool(0.2));
            let regions = some(&mut rng, &(0..REGIONS.len()).collect::<Vec<_>>(), region_count)
                .into_iter()
                .map(|r| {
                    let n = rng.gen_range(1..=3);
                    (r, some(&mut rng, REGIONS[r].1, n))
                })
                .collect();
            specs.push(PartnerSpec {
                id: id(PartnerId::parse(&format!("{word}-{kind}-{i}"))),
                company: format!("{} {} {i}", word.replace('-', " "), kind),
                regions,
            });
        }
        // Zipf-like: the largest partners get a few per cent of the referrals each.
        let mut total = 0.0;
        let cumulative = (0..partners)
            .map(|i| {
                total += 1.0 / (i as f64 + 10.0);
                total
            })
            .collect();
        let mut workload = Workload {
            rng,
            partners: specs,
            cumulative,
            referrals: 0,
            clock: start,
            next_arrival: start + Duration::hours(1),
            open: HashMap::new(),
            due: BinaryHeap::new(),
            registrations: VecDeque::new(),
        };
        workload.registrations = workload.registrations_at(start);
        workload
    }

    /// A partner, large ones more often.
    pub fn pick_partner(&self, rng_draw: f64) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        self.cumulative.partition_point(|c| *c < rng_draw * total).min(self.partners.len().saturating_sub(1))
    }

    /// Referrals begun so far.
    pub fn referrals(&self) -> u64 {
        self.referrals
    }

    fn registrations_at(&mut self, at: DateTime<Utc>) -> VecDeque<Generated> {
        let mut out = VecDeque::new();
        for (p, spec) in self.partners.iter().enumerate() {
            for (revision, (region, locations)) in spec.regions.iter().enumerate() {
                let (name, _, _, _) = REGIONS[*region];
                let profile = RegionProfile {
                    company_name: spec.company.clone(),
                    description: Some(format!(
                        "{} helps {} customers with {} and {}.",
                        spec.company,
                        name,
                        PRODUCTS[(p + revision) % PRODUCTS.len()],
                        SERVICES[p % SERVICES.len()]
                    )),
                    locations: locations
                        .iter()
                        .map(|l| Location {
                            id: id(LocationId::parse(l)),
                            name: l.replace('-', " "),
                            contacts: vec![Contact {
                                name: format!("Desk {l}"),
                                email: format!("{l}@{}.example", spec.id),
                                phone: None,
                            }],
                        })
                        .collect(),
                    expertise: Expertise {
                        industries: vec![INDUSTRIES[p % INDUSTRIES.len()].to_string()],
                        products: vec![PRODUCTS[p % PRODUCTS.len()].to_string()],
                        services: vec![SERVICES[(p / 3) % SERVICES.len()].to_string()],
                        solutions: vec![KEYWORDS[p % KEYWORDS.len()].to_string()],
                    },
                    target_sizes: SizeBand::ALL.to_vec(),
                    status: ProfileStatus::Active,
                };
                let event = DomainEvent::Partner(PartnerEvent::ProfileRegistered(ProfileRegistered {
                    partner: spec.id.clone(),
                    region: id(RegionId::parse(name)),
                    profile,
                    registered_at: at,
                }));
                out.push_back(Generated {
                    key: PARTNER_KEY | p as u64,
                    stream: spec.id.stream(),
                    revision: StreamRevision(revision as u64),
                    event,
                    metadata: metadata(format!("operator/onboarding-{}", p % 7), at),
                    at,
                });
            }
        }
        out
    }

    /// Starts a referral received at `at`: its `ReferralReceived` and the plan of what follows.
    fn begin(&mut self, at: DateTime<Utc>) -> (Open, Generated) {
        let ordinal = self.referrals;
        self.referrals += 1;
        let draw = self.rng.gen::<f64>();
        let partner = self.pick_partner(draw);
        let rng = &mut self.rng;
        let spec = &self.partners[partner];
        let (region_index, locations) = pick(rng, &spec.regions).clone();
        let (region_name, _, currency_code, country) = REGIONS[region_index];
        let region = id(RegionId::parse(region_name));
        let location = rng.gen_bool(0.6).then(|| id(LocationId::parse(pick::<&str>(rng, locations.as_slice()))));
        let rfi = id(RfiId::parse(&format!("rfi-{ordinal}")));
        let referral = ReferralId::for_rfi(&rfi, &spec.id, &region);
        let company = format!("{} {}", pick(rng, &COMPANY_WORDS), pick(rng, &COMPANY_KINDS));
        let (first, last) = (*pick(rng, &FIRST_NAMES), *pick(rng, &LAST_NAMES));
        let domain = company.to_lowercase().replace(' ', "-");
        let counts = (rng.gen_range(1..=2), rng.gen_range(1..=2), rng.gen_range(1..=4));
        let products: Vec<String> = some(rng, &PRODUCTS, counts.0).into_iter().map(String::from).collect();
        let services: Vec<String> = some(rng, &SERVICES, counts.1).into_iter().map(String::from).collect();
        let keywords: Vec<String> = some(rng, &KEYWORDS, counts.2).into_iter().map(String::from).collect();
        let industry = rng.gen_bool(0.9).then(|| pick(rng, &INDUSTRIES).to_string());
        let description = format!(
            "{company} wants help with {} ({}) for about {} users; {} Budget is planned for next year.",
            products.join(" and "),
            services.join(", "),
            rng.gen_range(20..5000),
            if rng.gen_bool(0.5) {
                "they run an on-premises system today and want to move within twelve months."
            } else {
                "a pilot in one department should start this quarter."
            }
        );
        let received = ReferralReceived {
            referral,
            rfi,
            partner: spec.id.clone(),
            region,
            location,
            customer: Customer {
                company_name: company.clone(),
                industry,
                size_band: *pick(rng, &SizeBand::ALL),
                country: Some(country.to_string()),
                contact: Contact {
                    name: format!("{first} {last}"),
                    email: format!("{}.{}@{domain}.example", first.to_lowercase(), ordinal),
                    phone: rng.gen_bool(0.7).then(|| format!("+49 30 {:07}", rng.gen_range(0..10_000_000))),
                },
            },
            requirements: Requirements { description, products: products.clone(), services, keywords },
            consent: Consent { contact: true, share_details: true },
            direct_contact_requested: rng.gen_bool(0.3),
            source: *pick(rng, &[Source::MarketingCampaign, Source::SalesAgent, Source::PartnerSearch, Source::Other]),
            received_at: at,
            expires_at: at + referral_domain::clock::DEFAULT_EXPIRY,
        };
        // The plan: an answer within hours or days (some after the 24-hour
        // window, all before the expiry), or the expiry itself.
        let mut steps = VecDeque::new();
        let fate = rng.gen::<f64>();
        if fate < 0.12 {
            steps.push_back((at + hours(rng, 0.1, 72.0), Step::Decline));
        } else if fate < 0.22 {
            steps.push_back((received.expires_at, Step::Expire));
        } else {
            let accepted = at + hours(rng, 0.1, 80.0);
            steps.push_back((accepted, Step::Accept));
            let close = accepted + hours(rng, 240.0, 2_200.0);
            let mut later = Vec::new();
            for _ in 0..rng.gen_range(0..=2) {
                later.push((accepted + hours(rng, 0.5, 120.0), Step::AddContact));
            }
            for _ in 0..rng.gen_range(0..=3) {
                later.push((accepted + hours(rng, 24.0, 230.0), Step::Update));
            }
            later.sort_by_key(|(t, _)| *t);
            steps.extend(later);
            let outcome = rng.gen::<f64>();
            if outcome < 0.5 {
                steps.push_back((close, Step::Win));
            } else if outcome < 0.85 {
                steps.push_back((close, Step::Lose));
            } // else: still being worked on
        }
        let currency = id(Currency::parse(currency_code));
        let open = Open {
            id: referral,
            stream: referral.stream(),
            partner,
            revision: 0,
            received_at: at,
            currency,
            value: 0,
            purchase_in_days: rng.gen_range(30..150),
            label: format!("{} {}", company, products[0]),
            contacts: 0,
            edits: 0,
            steps,
        };
        let generated = Generated {
            key: ordinal,
            stream: open.stream.clone(),
            revision: StreamRevision(0),
            event: DomainEvent::Referral(ReferralEvent::Received(Box::new(received))),
            metadata: metadata(format!("intake/marketplace-{}", ordinal % 3), at),
            at,
        };
        (open, generated)
    }

    /// The event of `open`'s next step, taken at `at`.
    fn step(&mut self, key: u64, open: &mut Open, step: Step, at: DateTime<Utc>) -> Generated {
        let rng = &mut self.rng;
        let partner = &self.partners[open.partner].id;
        let user = format!("partner:{partner}/user-{}", rng.gen_range(1..=4));
        let referral = open.id;
        let scale = 10i64.pow(u32::from(open.currency.exponent()));
        let reason = |rng: &mut StdRng| {
            let code = *pick(rng, &ReasonCode::ALL);
            Reason {
                code,
                notes: (code == ReasonCode::Other || rng.gen_bool(0.3)).then(|| "Discussed by phone.".into()),
            }
        };
        let (event, actor) = match step {
            Step::Accept => {
                open.value = rng.gen_range(5_000..2_000_000) * scale;
                let engagement = Engagement {
                    name: format!("{} engagement", open.label),
                    estimated_value: Money { currency: open.currency, minor_units: open.value },
                    estimated_purchase_date: open.purchase_date(),
                    notes: "Customer needs a phased rollout; first workshop to be scheduled.".into(),
                    crm_id: rng.gen_bool(0.6).then(|| format!("CRM-{}", rng.gen_range(10_000..999_999))),
                    campaign_id: rng.gen_bool(0.2).then(|| format!("CMP-{}", rng.gen_range(100..999))),
                };
                (ReferralEvent::Accepted(ReferralAccepted { referral, engagement, accepted_at: at }), user)
            }
            Step::Decline => {
                (ReferralEvent::Declined(ReferralDeclined { referral, reason: reason(rng), declined_at: at }), user)
            }
            Step::Expire => {
                (ReferralEvent::Expired(ReferralExpired { referral, expired_at: at }), "system/expiry-scheduler".into())
            }
            Step::AddContact => {
                open.contacts += 1;
                let (first, last) = (*pick(rng, &FIRST_NAMES), *pick(rng, &LAST_NAMES));
                let contact = Contact {
                    name: format!("{first} {last}"),
                    email: format!("{}.{}{}@{partner}.example", first.to_lowercase(), last.len(), open.contacts),
                    phone: rng.gen_bool(0.5).then(|| "+1 206 5550100".into()),
                };
                (ReferralEvent::ContactAdded(ContactAdded { referral, contact, added_at: at }), user)
            }
            Step::Update => {
                open.edits += 1;
                let change_value = rng.gen_bool(0.6);
                if change_value {
                    open.value += rng.gen_range(1..200) * 100 * scale;
                }
                let later_purchase = rng.gen_bool(0.3);
                if later_purchase {
                    open.purchase_in_days += 30;
                }
                let event = EngagementUpdated {
                    referral,
                    name: None,
                    estimated_value: change_value.then_some(Money { currency: open.currency, minor_units: open.value }),
                    estimated_purchase_date: later_purchase.then(|| open.purchase_date()),
                    notes: (!change_value || rng.gen_bool(0.5))
                        .then(|| format!("Update {}: workshop held, proposal sent.", open.edits)),
                    crm_id: None,
                    campaign_id: None,
                    updated_at: at,
                };
                (ReferralEvent::EngagementUpdated(event), user)
            }
            Step::Win => {
                let final_value =
                    Money { currency: open.currency, minor_units: open.value * rng.gen_range(80..=110) / 100 };
                let event = ReferralWon { referral, final_value, closed_on: at.date_naive(), reported_at: at };
                (ReferralEvent::Won(event), user)
            }
            Step::Lose => (ReferralEvent::Lost(ReferralLost { referral, reason: reason(rng), reported_at: at }), user),
        };
        open.revision += 1;
        Generated {
            key,
            stream: open.stream.clone(),
            revision: StreamRevision(open.revision),
            event: DomainEvent::Referral(event),
            metadata: metadata(actor, at),
            at,
        }
    }

    /// The next event of the time-ordered log: partner registrations first,
    /// then arrivals and steps in the order they happen.
    pub fn next_event(&mut self) -> Generated {
        if let Some(registration) = self.registrations.pop_front() {
            return registration;
        }
        let next_due = self.due.peek().map(|Reverse((t, _))| *t);
        match next_due {
            Some(t) if t < self.next_arrival.timestamp_micros() => {
                let Reverse((t, key)) = self.due.pop().expect("peeked");
                let at = DateTime::from_timestamp_micros(t).unwrap_or(self.clock);
                self.clock = at;
                let mut open = self.open.remove(&key).expect("a due referral is open");
                let (_, step) = open.steps.pop_front().expect("a due referral has a step");
                let event = self.step(key, &mut open, step, at);
                if let Some((next, _)) = open.steps.front() {
                    self.due.push(Reverse((next.timestamp_micros(), key)));
                    self.open.insert(key, open);
                }
                event
            }
            _ => {
                let at = self.next_arrival;
                self.clock = at;
                // Arrivals every 30 s on average (exponential gaps).
                let gap = -30.0 * (1.0 - self.rng.gen::<f64>()).ln();
                self.next_arrival = at + Duration::milliseconds((gap * 1000.0) as i64 + 1);
                let (open, event) = self.begin(at);
                if let Some((next, _)) = open.steps.front() {
                    self.due.push(Reverse((next.timestamp_micros(), event.key)));
                    self.open.insert(event.key, open);
                }
                event
            }
        }
    }

    /// Referrals begun and not closed yet in the time-ordered log.
    pub fn open_referrals(&self) -> usize {
        self.open.len()
    }

    /// One referral received at `at`, with the events of its life that
    /// happened by `until`.
    pub fn whole_referral(&mut self, at: DateTime<Utc>, until: DateTime<Utc>) -> Vec<Generated> {
        let (mut open, received) = self.begin(at);
        let key = received.key;
        let mut out = vec![received];
        while let Some((t, step)) = open.steps.pop_front() {
            if t > until {
                break;
            }
            out.push(self.step(key, &mut open, step, t));
        }
        out
    }
}
