//! Queries over the views. Each query reads the active version of its
//! projection in one read transaction, so a rebuild's swap is never seen
//! half-way: a query answers wholly from the old version or wholly from the
//! new one.

use chrono::{DateTime, Utc};

use crate::db::{self, ViewDb};
use crate::deadlines::{self, Deadline};
use crate::history::{self, PartnerHistory};
use crate::projection::Version;
use crate::referrals::{self, List, ListFilter, Page, ReferralRow};
use crate::timeline::{self, TimelineEntry};
use crate::ViewError;

/// The query side of the view databases. Cheap to clone.
#[derive(Clone)]
pub struct Views {
    db: ViewDb,
}

impl Views {
    pub fn new(db: ViewDb) -> Views {
        Views { db }
    }

    async fn read<T: Send + 'static>(
        &self,
        projection: &'static str,
        query: impl FnOnce(&rusqlite::Connection, Version) -> Result<T, ViewError> + Send + 'static,
    ) -> Result<T, ViewError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            db.read(projection, |tx| {
                let version = db::active_version(tx, projection)?.ok_or(ViewError::NotReady(projection))?;
                query(tx, Version(version))
            })
        })
        .await
        .map_err(|e| ViewError::Storage(format!("query task failed: {e}")))?
    }

    /// A page of the inbox, active list or archive.
    pub async fn list(
        &self,
        which: List,
        filter: ListFilter,
        page_size: u32,
        page_token: String,
    ) -> Result<Page<ReferralRow>, ViewError> {
        self.read(referrals::NAME, move |c, v| referrals::list(c, v, which, &filter, page_size, &page_token)).await
    }

    /// One referral's view.
    pub async fn referral(&self, referral: String) -> Result<Option<ReferralRow>, ViewError> {
        self.read(referrals::NAME, move |c, v| referrals::get(c, v, &referral)).await
    }

    /// A page of one referral's timeline, oldest event first.
    pub async fn timeline(
        &self,
        referral: String,
        page_size: u32,
        page_token: String,
    ) -> Result<Page<TimelineEntry>, ViewError> {
        self.read(timeline::NAME, move |c, v| timeline::page(c, v, &referral, page_size, &page_token)).await
    }

    /// A partner's accept/decline history, overall or for one region.
    pub async fn history(&self, partner: String, region: Option<String>) -> Result<PartnerHistory, ViewError> {
        self.read(history::NAME, move |c, v| history::partner_history(c, v, &partner, region)).await
    }

    /// Referrals due to expire at `now`, earliest first.
    pub async fn due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Deadline>, ViewError> {
        self.read(deadlines::NAME, move |c, v| deadlines::due(c, v, now, limit)).await
    }
}
