//! Load, decide, append, retry.
//!
//! Every command goes through the same loop: read the aggregate's stream,
//! fold it into state, let the pure decider answer, and append what it
//! decided with the stream's revision as the expected revision. If another
//! writer got there first the store answers "wrong expected version" and the
//! loop starts over from a fresh read, a bounded number of times.
//!
//! Idempotency: event ids are derived from the command id (UUID v5), so a
//! retried command finds its own events in the stream and returns the
//! original result without deciding again; if two copies race, the store's
//! idempotent append answers the loser with the original result too.

use std::sync::Arc;
use std::time::Duration;

use referral_domain::clock::ExpiryPolicy;
use referral_domain::eventlog::{
    AppendResult, CurrentRevision, Direction, EventData, EventStore, ExpectedRevision, Position, RecordedEvent,
    StoreError, StreamName, StreamRevision, StreamStart,
};
use referral_domain::ids::{CommandId, LocationId, PartnerId, ReferralId, RegionId, RfiId};
use referral_domain::profile::{self, PartnerCommand, PartnerState};
use referral_domain::referral::{
    self, Consent, CustomerInput, ReceiveReferral, Referral, ReferralAction, ReferralCommand, ReferralEvent,
    ReferralState, RequirementsInput, Source,
};
use referral_domain::{DomainError, Now};
use serde::Serialize;
use uuid::Uuid;

use crate::cache::{self, Events, StreamCache, StreamEvent};
use crate::clock::Clock;
use crate::context::{Actor, CommandContext};
use referral_domain::codec::{self, CodecError, DomainEvent, EventMetadata, CURRENT_SCHEMA_VERSION};

/// How many times a command is retried after losing a race.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Most partners one RFI may be sent to.
pub const MAX_RFI_TARGETS: usize = 50;
/// Events read per page when loading a stream.
const LOAD_PAGE: usize = 4096;
/// How old a cached partner profile may be when an RFI is checked against
/// it (see [`CommandHandler::with_profile_max_age`]).
pub const DEFAULT_PROFILE_MAX_AGE: Duration = Duration::from_secs(1);

/// Where a load takes a stream from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFrom {
    /// A read from the store.
    Store,
    /// The cache when it has the stream, else the store.
    Cache,
    /// The cache when the store confirmed its entry less than this long
    /// ago, else the store.
    CacheWithin(Duration),
    /// The cache when it has the stream; else the stream is assumed not to
    /// exist, without a read, for an append that expects no stream.
    CacheOrAssumeNew,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("stream {stream} kept changing underneath the command; gave up after {attempts} attempts")]
    Conflict { stream: StreamName, attempts: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored event cannot be read: {0}")]
    Codec(#[from] CodecError),
}

/// What a command wrote to one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Written {
    pub stream: StreamName,
    /// How many events the command wrote (0 when it changed nothing).
    pub events: usize,
    /// The stream's revision after the command.
    pub revision: Option<StreamRevision>,
    /// The `$all` position of the command's last event; `None` when nothing was written.
    pub position: Option<Position>,
    /// True when this is a retry of a command that was already applied.
    pub replayed: bool,
}

/// An aggregate's state as read from its stream.
#[derive(Debug, Clone)]
pub struct Loaded<S> {
    pub state: S,
    pub revision: CurrentRevision,
    /// The `$all` position of the stream's last event.
    pub position: Option<Position>,
    /// Set when the stream already holds the events of the command being run.
    pub already_applied: Option<Written>,
    /// The type of the first event the command being run recorded, when it
    /// was already applied.
    pub applied_event_type: Option<String>,
    /// The state came from the handler's cache rather than a fresh read.
    pub from_cache: bool,
}

/// One partner (and region) an RFI is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RfiTarget {
    pub partner: PartnerId,
    pub region: RegionId,
    pub location: Option<LocationId>,
}

/// A customer's RFI, to be turned into one referral per target partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitRfi {
    pub rfi: RfiId,
    pub targets: Vec<RfiTarget>,
    pub customer: CustomerInput,
    pub requirements: RequirementsInput,
    pub consent: Consent,
    pub direct_contact_requested: bool,
    pub source: Source,
    /// When the RFI was received; the engine's clock when absent.
    pub received_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The referral an RFI created for one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubmittedReferral {
    pub referral: ReferralId,
    pub partner: PartnerId,
    pub region: RegionId,
    pub written: Written,
}

/// The write side's entry point.
#[derive(Clone)]
pub struct CommandHandler {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    expiry: ExpiryPolicy,
    max_attempts: u32,
    cache: Arc<StreamCache>,
    profile_max_age: Duration,
}

impl CommandHandler {
    pub fn new(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>) -> Self {
        CommandHandler {
            store,
            clock,
            expiry: ExpiryPolicy::default(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            cache: Arc::new(StreamCache::new(cache::DEFAULT_CAPACITY)),
            profile_max_age: DEFAULT_PROFILE_MAX_AGE,
        }
    }

    /// How old a cached partner profile may be when an RFI is checked
    /// against it. A profile this process changed is current in its cache;
    /// a change made through another engine instance on the same store
    /// reaches RFIs checked here at most this much later. A refusal is
    /// always re-checked against a fresh read. Zero reads the profile for
    /// every RFI.
    pub fn with_profile_max_age(mut self, max_age: Duration) -> Self {
        self.profile_max_age = max_age;
        self
    }

    /// How many streams the handler keeps decoded in memory (0 turns the
    /// cache off: every command reads its stream).
    pub fn with_cache_capacity(mut self, streams: usize) -> Self {
        self.cache = Arc::new(StreamCache::new(streams));
        self
    }

    pub fn with_expiry(mut self, expiry: ExpiryPolicy) -> Self {
        self.expiry = expiry;
        self
    }

    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn now(&self) -> Now {
        self.clock.now()
    }

    /// Reads a whole stream. A stream that does not exist reads as empty.
    async fn read_all_of(&self, stream: &StreamName) -> Result<Vec<RecordedEvent>, CommandError> {
        let mut events = Vec::new();
        let mut from = StreamStart::Start;
        loop {
            let page = match self.store.read_stream(stream, Direction::Forwards, from, LOAD_PAGE).await {
                Ok(page) => page,
                Err(StoreError::StreamNotFound(_)) => return Ok(events),
                Err(e) => return Err(e.into()),
            };
            let full = page.len() == LOAD_PAGE;
            if let Some(last) = page.last() {
                from = StreamStart::Revision(last.revision.next());
            }
            events.extend(page);
            if !full {
                return Ok(events);
            }
        }
    }

    /// A stream's events, decoded, from where `from` says, and whether they
    /// came from the cache (or were assumed) rather than a read.
    async fn events_of(&self, stream: &StreamName, from: ReadFrom) -> Result<(Events, bool), CommandError> {
        let cached = match from {
            ReadFrom::Store => None,
            ReadFrom::Cache | ReadFrom::CacheOrAssumeNew => self.cache.get(stream),
            ReadFrom::CacheWithin(max_age) => self.cache.get_within(stream, max_age),
        };
        if let Some(events) = cached {
            return Ok((events, true));
        }
        if from == ReadFrom::CacheOrAssumeNew {
            return Ok((Arc::new(Vec::new()), true));
        }
        let recorded = self.read_all_of(stream).await?;
        let mut events = Vec::with_capacity(recorded.len());
        for r in &recorded {
            events.push(StreamEvent {
                id: r.id,
                event_type: r.event_type.clone(),
                revision: r.revision,
                position: Some(r.position),
                event: codec::decode(r)?,
            });
        }
        let events = Arc::new(events);
        self.cache.put(stream, events.clone());
        Ok((events, false))
    }

    async fn load<S: Default>(
        &self,
        stream: &StreamName,
        command: Option<&CommandId>,
        from: ReadFrom,
        fold: impl Fn(S, DomainEvent) -> S,
    ) -> Result<Loaded<S>, CommandError> {
        let (events, from_cache) = self.events_of(stream, from).await?;
        let first_id = command.map(|c| c.event_id(stream, 0));
        let mut applied: Option<(usize, usize)> = None;
        let mut state = S::default();
        for (i, recorded) in events.iter().enumerate() {
            if Some(recorded.id) == first_id {
                applied = Some((i, i));
            }
            if let (Some((start, end)), Some(command)) = (applied.as_mut(), command) {
                if *end + 1 == i && recorded.id == command.event_id(stream, i - *start) {
                    *end = i;
                }
            }
            state = fold(state, recorded.event.clone());
        }
        let revision = events.last().map_or(CurrentRevision::NoStream, |e| CurrentRevision::Current(e.revision));
        let applied_event_type = applied.map(|(start, _)| events[start].event_type.clone());
        let already_applied = applied.map(|(start, end)| Written {
            stream: stream.clone(),
            events: end - start + 1,
            revision: Some(events[end].revision),
            position: events[end].position,
            replayed: true,
        });
        let position = events.iter().rev().find_map(|e| e.position);
        Ok(Loaded { state, revision, position, already_applied, applied_event_type, from_cache })
    }

    /// Reads a referral's current state.
    pub async fn load_referral(
        &self,
        id: ReferralId,
        command: Option<&CommandId>,
    ) -> Result<Loaded<ReferralState>, CommandError> {
        self.load_referral_from(id, command, ReadFrom::Store).await
    }

    async fn load_referral_from(
        &self,
        id: ReferralId,
        command: Option<&CommandId>,
        from: ReadFrom,
    ) -> Result<Loaded<ReferralState>, CommandError> {
        self.load(&id.stream(), command, from, |state, event| match event {
            DomainEvent::Referral(e) => referral::evolve(state, &e),
            DomainEvent::Partner(_) => state,
        })
        .await
    }

    /// Reads a partner's profiles.
    pub async fn load_partner(
        &self,
        id: &PartnerId,
        command: Option<&CommandId>,
    ) -> Result<Loaded<PartnerState>, CommandError> {
        self.load_partner_from(id, command, ReadFrom::Store).await
    }

    async fn load_partner_from(
        &self,
        id: &PartnerId,
        command: Option<&CommandId>,
        from: ReadFrom,
    ) -> Result<Loaded<PartnerState>, CommandError> {
        self.load(&id.stream(), command, from, |state, event| match event {
            DomainEvent::Partner(e) => profile::evolve(state, &e),
            DomainEvent::Referral(_) => state,
        })
        .await
    }

    /// A referral as the caller may see it: refused for another partner's referral.
    pub async fn get_referral(&self, actor: &Actor, id: ReferralId) -> Result<(Referral, Loaded<()>), CommandError> {
        let loaded = self.load_referral(id, None).await?;
        let Some(referral) = loaded.state.0 else {
            return Err(DomainError::ReferralNotFound(id).into());
        };
        check_access(actor, &referral)?;
        let meta = Loaded {
            state: (),
            revision: loaded.revision,
            position: loaded.position,
            already_applied: None,
            applied_event_type: None,
            from_cache: false,
        };
        Ok((referral, meta))
    }

    fn metadata(&self, ctx: &CommandContext, now: Now) -> EventMetadata {
        EventMetadata {
            correlation_id: ctx.correlation_id.clone(),
            causation_id: ctx.causation_id.clone(),
            command_id: ctx.command_id.as_str().to_string(),
            actor: ctx.actor.to_string(),
            schema_version: CURRENT_SCHEMA_VERSION,
            occurred_at: now.at(),
        }
    }

    /// Appends decided events with deterministic ids. `Ok(None)` means another
    /// writer changed the stream first.
    async fn append(
        &self,
        ctx: &CommandContext,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<DomainEvent>,
        now: Now,
    ) -> Result<Option<Written>, CommandError> {
        let metadata = self.metadata(ctx, now);
        let count = events.len();
        let data: Vec<EventData> = events
            .iter()
            .enumerate()
            .map(|(i, e)| codec::encode(ctx.command_id.event_id(stream, i), e, &metadata))
            .collect();
        let ids_and_types: Vec<(Uuid, String)> = data.iter().map(|d| (d.id, d.event_type.clone())).collect();
        match self.store.append(stream, expected, data).await {
            Ok(result) => {
                self.remember_append(stream, expected, result, ids_and_types, events);
                Ok(Some(Written {
                    stream: stream.clone(),
                    events: count,
                    revision: Some(result.next_expected_revision),
                    position: Some(result.position),
                    replayed: false,
                }))
            }
            Err(StoreError::WrongExpectedVersion { .. }) => {
                self.cache.forget(stream);
                Ok(None)
            }
            Err(e) => {
                self.cache.forget(stream);
                Err(e.into())
            }
        }
    }

    /// Adds an append's events to the cached stream it was decided on.
    fn remember_append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        result: AppendResult,
        ids_and_types: Vec<(Uuid, String)>,
        events: Vec<DomainEvent>,
    ) {
        let before = match expected {
            ExpectedRevision::Exact(r) => Some(r),
            ExpectedRevision::NoStream => None,
            ExpectedRevision::Any | ExpectedRevision::StreamExists => return self.cache.forget(stream),
        };
        let count = events.len() as u64;
        let first = result.next_expected_revision.0 + 1 - count;
        let appended = ids_and_types
            .into_iter()
            .zip(events)
            .enumerate()
            .map(|(i, ((id, event_type), event))| {
                let revision = StreamRevision(first + i as u64);
                let position = (revision == result.next_expected_revision).then_some(result.position);
                StreamEvent { id, event_type, revision, position, event }
            })
            .collect();
        self.cache.extend(stream, before, appended);
    }

    /// Runs a referral command: load, check access, decide, append, retry.
    pub async fn execute_referral(
        &self,
        ctx: &CommandContext,
        command: ReferralCommand,
    ) -> Result<Written, CommandError> {
        let stream = command.referral.stream();
        let mut from = ReadFrom::Cache;
        for _ in 0..self.max_attempts {
            let loaded = self.load_referral_from(command.referral, Some(&ctx.command_id), from).await?;
            // Access first: a replay must not tell another partner anything.
            if let Some(referral) = &loaded.state.0 {
                check_access(&ctx.actor, referral)?;
            }
            if let Some(written) = loaded.already_applied {
                check_same_command(&ctx.command_id, command.action.event_type(), loaded.applied_event_type.as_deref())?;
                return Ok(written);
            }
            let now = self.clock.now();
            let events = match referral::decide(&loaded.state, command.clone(), now) {
                Ok(events) => events,
                // A refusal must be about the stream as it is, not as cached.
                Err(_) if loaded.from_cache => {
                    from = ReadFrom::Store;
                    continue;
                }
                Err(refused) => return Err(refused.into()),
            };
            if events.is_empty() {
                return Ok(unchanged(&stream, &loaded));
            }
            let events = events.into_iter().map(DomainEvent::Referral).collect();
            if let Some(written) = self.append(ctx, &stream, loaded.revision.as_expected(), events, now).await? {
                return Ok(written);
            }
        }
        Err(CommandError::Conflict { stream, attempts: self.max_attempts })
    }

    /// Runs a partner-profile command.
    pub async fn execute_partner(
        &self,
        ctx: &CommandContext,
        command: PartnerCommand,
    ) -> Result<Written, CommandError> {
        if !ctx.actor.may_access_partner(&command.partner) {
            return Err(CommandError::PermissionDenied(format!(
                "{} may not change partner {}'s profiles",
                ctx.actor, command.partner
            )));
        }
        let stream = command.partner.stream();
        let mut from = ReadFrom::Cache;
        for _ in 0..self.max_attempts {
            let loaded = self.load_partner_from(&command.partner, Some(&ctx.command_id), from).await?;
            if let Some(written) = loaded.already_applied {
                return Ok(written);
            }
            let now = self.clock.now();
            let events = match profile::decide(&loaded.state, command.clone(), now) {
                Ok(events) => events,
                Err(_) if loaded.from_cache => {
                    from = ReadFrom::Store;
                    continue;
                }
                Err(refused) => return Err(refused.into()),
            };
            if events.is_empty() {
                return Ok(unchanged(&stream, &loaded));
            }
            let events = events.into_iter().map(DomainEvent::Partner).collect();
            if let Some(written) = self.append(ctx, &stream, loaded.revision.as_expected(), events, now).await? {
                return Ok(written);
            }
        }
        Err(CommandError::Conflict { stream, attempts: self.max_attempts })
    }

    /// The command that makes `referral`, for one target of an RFI.
    fn receive(
        &self,
        rfi: &SubmitRfi,
        target: &RfiTarget,
        referral: ReferralId,
        received_at: chrono::DateTime<chrono::Utc>,
        partner_state: PartnerState,
    ) -> ReferralCommand {
        ReferralCommand {
            referral,
            action: ReferralAction::Receive(Box::new(ReceiveReferral {
                rfi: rfi.rfi.clone(),
                partner: target.partner.clone(),
                region: target.region.clone(),
                location: target.location.clone(),
                customer: rfi.customer.clone(),
                requirements: rfi.requirements.clone(),
                consent: rfi.consent,
                direct_contact_requested: rfi.direct_contact_requested,
                source: rfi.source,
                received_at,
                expiry: self.expiry,
                partner_state,
            })),
        }
    }

    /// Turns an RFI into one referral per target. Every target is checked
    /// before anything is written, so a refused target refuses the whole RFI.
    /// Referral ids are derived from the RFI, partner and region, and event ids
    /// from the command id, so a retry after a partial failure completes the
    /// rest without writing anything twice.
    pub async fn submit_rfi(
        &self,
        ctx: &CommandContext,
        rfi: SubmitRfi,
    ) -> Result<Vec<SubmittedReferral>, CommandError> {
        if rfi.targets.is_empty() {
            return Err(DomainError::invalid("targets", "at least one partner is required").into());
        }
        if rfi.targets.len() > MAX_RFI_TARGETS {
            return Err(DomainError::invalid(
                "targets",
                format!("has {} partners; one RFI goes to at most {MAX_RFI_TARGETS}", rfi.targets.len()),
            )
            .into());
        }
        for (i, t) in rfi.targets.iter().enumerate() {
            if rfi.targets[..i].iter().any(|o| o.partner == t.partner && o.region == t.region) {
                return Err(DomainError::invalid(
                    format!("targets[{i}]"),
                    format!("partner {} in region {} appears twice", t.partner, t.region),
                )
                .into());
            }
        }
        let now = self.clock.now();
        let received_at = rfi.received_at.unwrap_or(now.at());
        struct Planned {
            target: RfiTarget,
            referral: ReferralId,
            expected: ExpectedRevision,
            events: Vec<ReferralEvent>,
            done: Option<Written>,
        }
        let mut plan = Vec::with_capacity(rfi.targets.len());
        // With one target nothing can be half-written, so its referral's
        // stream (new, unless this is a retry) is not read first: the append
        // expects no stream, and a conflict is sorted out by reading it then.
        // With several, every stream is read so that none is written if one
        // is refused.
        let first_read = if rfi.targets.len() == 1 { ReadFrom::CacheOrAssumeNew } else { ReadFrom::Store };
        for (i, target) in rfi.targets.iter().enumerate() {
            let referral = ReferralId::for_rfi(&rfi.rfi, &target.partner, &target.region);
            let (mut referral_from, mut partner_from) = (first_read, ReadFrom::CacheWithin(self.profile_max_age));
            let planned = loop {
                let loaded = self.load_referral_from(referral, Some(&ctx.command_id), referral_from).await?;
                if let Some(done) = loaded.already_applied {
                    break Planned {
                        target: target.clone(),
                        referral,
                        expected: ExpectedRevision::Any,
                        events: vec![],
                        done: Some(done),
                    };
                }
                let partner = self.load_partner_from(&target.partner, None, partner_from).await?;
                let command = self.receive(&rfi, target, referral, received_at, partner.state);
                match referral::decide(&loaded.state, command, now) {
                    Ok(events) => {
                        break Planned {
                            target: target.clone(),
                            referral,
                            expected: loaded.revision.as_expected(),
                            events,
                            done: None,
                        }
                    }
                    // A refusal must be about the streams as they are.
                    Err(_) if loaded.from_cache || partner.from_cache => {
                        (referral_from, partner_from) = (ReadFrom::Store, ReadFrom::Store);
                    }
                    Err(refused) => return Err(for_target(i, target, refused).into()),
                }
            };
            plan.push(planned);
        }
        let mut out = Vec::with_capacity(plan.len());
        for p in plan {
            let written = match p.done {
                Some(done) => done,
                None => {
                    let stream = p.referral.stream();
                    let events = p.events.into_iter().map(DomainEvent::Referral).collect();
                    match self.append(ctx, &stream, p.expected, events, now).await? {
                        Some(w) => w,
                        None => {
                            // Someone else created the referral between the check and
                            // the append: report what the stream says now.
                            let loaded = self.load_referral(p.referral, Some(&ctx.command_id)).await?;
                            match loaded.already_applied {
                                Some(w) => w,
                                None => {
                                    return Err(DomainError::AlreadyExists(format!(
                                        "referral {} for RFI {} to partner {} already exists",
                                        p.referral, rfi.rfi, p.target.partner
                                    ))
                                    .into())
                                }
                            }
                        }
                    }
                }
            };
            out.push(SubmittedReferral {
                referral: p.referral,
                partner: p.target.partner,
                region: p.target.region,
                written,
            });
        }
        Ok(out)
    }
}

fn unchanged<S>(stream: &StreamName, loaded: &Loaded<S>) -> Written {
    let revision = match loaded.revision {
        CurrentRevision::NoStream => None,
        CurrentRevision::Current(r) => Some(r),
    };
    Written { stream: stream.clone(), events: 0, revision, position: None, replayed: false }
}

/// A request id names one command: reusing it for a different command is a
/// client error, not a replay.
fn check_same_command(id: &CommandId, expected: &str, recorded: Option<&str>) -> Result<(), CommandError> {
    match recorded {
        Some(recorded) if recorded != expected => Err(DomainError::invalid(
            "request_id",
            format!("{id} was already used for a different command (it recorded {recorded})"),
        )
        .into()),
        _ => Ok(()),
    }
}

fn check_access(actor: &Actor, referral: &Referral) -> Result<(), CommandError> {
    if actor.may_access_partner(&referral.partner) {
        Ok(())
    } else {
        Err(CommandError::PermissionDenied(format!(
            "referral {} belongs to another partner; {} may only act on its own referrals",
            referral.id, actor
        )))
    }
}

/// Names the target a refusal is about, for RFIs sent to several partners.
fn for_target(index: usize, target: &RfiTarget, error: DomainError) -> DomainError {
    let who = format!("targets[{index}] (partner {}, region {})", target.partner, target.region);
    match error {
        DomainError::Precondition(m) => DomainError::Precondition(format!("{who}: {m}")),
        DomainError::AlreadyExists(m) => DomainError::AlreadyExists(format!("{who}: {m}")),
        other => other,
    }
}
