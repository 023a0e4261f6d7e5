//! The expiry scheduler: expires referrals still New when their time is up.
//!
//! It asks a source of deadlines (the `deadlines` projection, in the engine)
//! which referrals are due by the handler's clock, and sends each an ordinary
//! expire command. The command id is derived from the referral
//! (`expire-<referral id>`), so its event id is too: two schedulers on one
//! store, or one scheduler retrying after a crash, write one `ReferralExpired`
//! between them. The decision stays with the domain: a referral that was
//! answered in the meantime refuses the command and nothing is written.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use referral_domain::ids::{CommandId, ReferralId};
use referral_domain::referral::{ReferralAction, ReferralCommand};
use referral_domain::DomainError;
use tokio::sync::watch;

use crate::context::{Actor, CommandContext};
use crate::handler::{CommandError, CommandHandler};

/// Referrals whose expiry is due.
#[async_trait]
pub trait DueReferrals: Send + Sync + 'static {
    /// Referrals still New (as far as the source knows) whose expiry is at or
    /// before `now`, earliest first, at most `limit`.
    async fn due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<ReferralId>, String>;
}

/// What one pass of the scheduler did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiryPass {
    /// Referrals expired by this pass (or found already expired by the same command).
    pub expired: usize,
    /// Referrals that were no longer New when the command arrived.
    pub skipped: usize,
    /// Commands that failed for another reason; they are tried again next pass.
    pub failed: usize,
}

/// The name the scheduler's events carry as their actor.
pub const SCHEDULER: &str = "expiry-scheduler";

/// Expires due referrals, pass after pass.
#[derive(Clone)]
pub struct ExpiryScheduler {
    handler: CommandHandler,
    due: Arc<dyn DueReferrals>,
    interval: Duration,
    batch: u32,
}

impl ExpiryScheduler {
    pub fn new(handler: CommandHandler, due: Arc<dyn DueReferrals>) -> Self {
        ExpiryScheduler { handler, due, interval: Duration::from_secs(1), batch: 500 }
    }

    /// Time between passes (default one second).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The command id of a referral's expiry: the same on every engine instance.
    pub fn command_id(referral: ReferralId) -> CommandId {
        CommandId::parse(&format!("expire-{referral}")).expect("a UUID makes a valid command id")
    }

    /// One pass: expire whatever is due now.
    pub async fn run_once(&self) -> Result<ExpiryPass, String> {
        let now = self.handler.now();
        let due = self.due.due(now.at(), self.batch).await?;
        let mut pass = ExpiryPass::default();
        for referral in due {
            let ctx = CommandContext::new(Self::command_id(referral), Actor::system(SCHEDULER));
            let command = ReferralCommand { referral, action: ReferralAction::Expire };
            match self.handler.execute_referral(&ctx, command).await {
                Ok(_) => pass.expired += 1,
                // Answered (or expired by another instance under another id)
                // before the command arrived: nothing to do.
                Err(CommandError::Domain(
                    DomainError::Closed { .. } | DomainError::NotAllowed { .. } | DomainError::Precondition(_),
                )) => pass.skipped += 1,
                Err(e) => {
                    tracing::warn!(%referral, error = %e, "cannot expire referral; will try again");
                    pass.failed += 1;
                }
            }
        }
        if pass.expired > 0 || pass.failed > 0 {
            tracing::info!(expired = pass.expired, skipped = pass.skipped, failed = pass.failed, "expiry pass");
        }
        Ok(pass)
    }

    /// Runs passes until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow_and_update() {
                return;
            }
            if let Err(e) = self.run_once().await {
                tracing::warn!(error = %e, "expiry pass failed; will try again");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}
