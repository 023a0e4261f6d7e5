//! The clock the engine is given. Domain logic never reads time itself; the
//! command side asks a [`Clock`] once per command and passes the answer on.

use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use referral_domain::Now;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Now;
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        Now(Utc::now())
    }
}

/// A clock that only moves when told to: for tests, replays and simulations.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(start))
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().expect("clock lock poisoned") = at;
    }

    pub fn advance(&self, by: Duration) {
        let mut at = self.0.lock().expect("clock lock poisoned");
        *at += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Now {
        Now(*self.0.lock().expect("clock lock poisoned"))
    }
}
