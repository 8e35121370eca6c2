//! Moving windows an apply worker keeps in its shared-memory slot, and the lag history ring.
//!
//! [`RateRing`]: one bucket per second of the last minute (transactions, rows and bytes received
//! that second), written where the worker publishes its counters; a rate over the last `w`
//! seconds is the sum of the `w` *complete* seconds before the current one, divided by `w`.
//! Buckets carry their second, so a bucket left over from an earlier minute counts as empty: an
//! idle or stopped worker's rates fall to 0 without it writing anything.
//!
//! [`LagRing`]: the last [`LAG_SAMPLES`] one-per-second samples of a subscription's lag, oldest
//! overwritten first.

/// Buckets in a [`RateRing`]: the current second and the 60 complete ones before it fit.
pub const RATE_BUCKETS: usize = 64;
/// The longest window [`RateRing::rates`] answers, in seconds.
pub const MAX_WINDOW: i64 = 60;

/// What was counted during one second (`sec`: whole seconds on the worker's clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Bucket {
    pub sec: i64,
    pub txns: i64,
    pub rows: i64,
    pub bytes: i64,
}

/// Per-second buckets of the last minute.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct RateRing {
    pub buckets: [Bucket; RATE_BUCKETS],
}

impl Default for RateRing {
    fn default() -> Self {
        RateRing { buckets: [Bucket::default(); RATE_BUCKETS] }
    }
}

/// Rates per second over one window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub txns: f64,
    pub rows: f64,
    pub bytes: f64,
}

impl RateRing {
    fn slot(sec: i64) -> usize {
        sec.rem_euclid(RATE_BUCKETS as i64) as usize
    }

    /// Adds what was counted at second `sec` (a bucket of an older second is reused).
    pub fn add(&mut self, sec: i64, txns: i64, rows: i64, bytes: i64) {
        if txns == 0 && rows == 0 && bytes == 0 {
            return;
        }
        let b = &mut self.buckets[Self::slot(sec)];
        if b.sec != sec {
            *b = Bucket { sec, ..Bucket::default() };
        }
        b.txns += txns;
        b.rows += rows;
        b.bytes += bytes;
    }

    /// What second `sec` counted (zero when its bucket holds another second).
    pub fn at(&self, sec: i64) -> Bucket {
        let b = self.buckets[Self::slot(sec)];
        if b.sec == sec {
            b
        } else {
            Bucket { sec, ..Bucket::default() }
        }
    }

    /// Rates over the `window` complete seconds before second `now_sec` (1 ≤ window ≤ 60).
    pub fn rates(&self, now_sec: i64, window: i64) -> Rates {
        let window = window.clamp(1, MAX_WINDOW);
        let mut sum = Bucket::default();
        for sec in now_sec - window..now_sec {
            let b = self.at(sec);
            sum.txns += b.txns;
            sum.rows += b.rows;
            sum.bytes += b.bytes;
        }
        let w = window as f64;
        Rates { txns: sum.txns as f64 / w, rows: sum.rows as f64 / w, bytes: sum.bytes as f64 / w }
    }
}

/// Samples in a [`LagRing`]: one an hour at one per second.
pub const LAG_SAMPLES: usize = 3600;

/// One second of a subscription's lag: when (`TimestampTz` µs), bytes not applied yet, the age
/// of the oldest transaction not applied yet (ms), and rows applied in the second before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LagSample {
    pub at: i64,
    pub lag_bytes: i64,
    pub apply_lag_ms: u32,
    pub rows: u32,
}

/// The last hour of samples of one subscription; `subid` 0 = unused.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct LagRing {
    pub subid: i32,
    /// Samples written so far (the next goes to `written % LAG_SAMPLES`).
    pub written: u32,
    /// The second of the last sample (one per second at most).
    pub last_sec: i64,
    pub samples: [LagSample; LAG_SAMPLES],
}

impl LagRing {
    /// Forgets every sample and gives the ring to `subid`.
    pub fn reset(&mut self, subid: i32) {
        self.subid = subid;
        self.written = 0;
        self.last_sec = 0;
    }

    /// Adds a sample taken at second `sec`, unless one was taken that second already.
    pub fn push(&mut self, sec: i64, sample: LagSample) -> bool {
        if self.written > 0 && sec <= self.last_sec {
            return false;
        }
        self.samples[self.written as usize % LAG_SAMPLES] = sample;
        // Wraps after 136 years of samples: keep the index in the same place modulo the ring.
        self.written = if self.written as usize >= 2 * LAG_SAMPLES {
            (self.written as usize - LAG_SAMPLES + 1) as u32
        } else {
            self.written + 1
        };
        self.last_sec = sec;
        true
    }

    /// The samples held, oldest first.
    pub fn oldest_first(&self) -> Vec<LagSample> {
        let n = (self.written as usize).min(LAG_SAMPLES);
        let next = self.written as usize % LAG_SAMPLES;
        (0..n).map(|i| self.samples[(next + LAG_SAMPLES - n + i) % LAG_SAMPLES]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_complete_seconds_only() {
        let mut r = RateRing::default();
        for sec in 100..120 {
            r.add(sec, 10, 100, 1000);
        }
        // At 120 the last 10 complete seconds are 110..=119.
        let x = r.rates(120, 10);
        assert_eq!(x, Rates { txns: 10.0, rows: 100.0, bytes: 1000.0 });
        // The current second (partial) is not in the window.
        r.add(120, 1000, 1000, 1000);
        assert_eq!(r.rates(120, 10).txns, 10.0);
        // Over a minute: 20 busy seconds out of 60.
        assert_eq!(r.rates(120, 60).rows, 100.0 * 20.0 / 60.0);
        // Several adds in one second sum up.
        r.add(121, 1, 2, 3);
        r.add(121, 1, 2, 3);
        assert_eq!(r.at(121), Bucket { sec: 121, txns: 2, rows: 4, bytes: 6 });
    }

    #[test]
    fn idle_rates_decay_to_zero_without_writes() {
        let mut r = RateRing::default();
        for sec in 0..60 {
            r.add(sec, 5, 5, 5);
        }
        assert_eq!(r.rates(60, 60).txns, 5.0);
        assert_eq!(r.rates(65, 10).txns, 5.0 * 5.0 / 10.0);
        assert_eq!(r.rates(70, 10), Rates::default());
        assert_eq!(r.rates(120, 60), Rates::default());
        // A bucket one ring-length later is not mistaken for the old second.
        assert_eq!(r.rates(60 + RATE_BUCKETS as i64, 1), Rates::default());
        // Empty adds do not claim a bucket.
        r.add(200, 0, 0, 0);
        assert_eq!(r.at(200 - RATE_BUCKETS as i64).sec, 200 - RATE_BUCKETS as i64);
    }

    fn ring() -> Box<LagRing> {
        Box::new(LagRing { subid: 1, written: 0, last_sec: 0, samples: [LagSample::default(); LAG_SAMPLES] })
    }

    #[test]
    fn lag_ring_keeps_the_last_hour_oldest_first() {
        let mut r = ring();
        assert!(r.oldest_first().is_empty());
        for sec in 1..=10 {
            assert!(r.push(sec, LagSample { at: sec, lag_bytes: sec * 10, apply_lag_ms: 0, rows: 0 }));
        }
        assert!(!r.push(10, LagSample::default()), "one sample per second");
        let s = r.oldest_first();
        assert_eq!(s.len(), 10);
        assert_eq!(s[0].at, 1);
        assert_eq!(s[9].lag_bytes, 100);
        for sec in 11..=(LAG_SAMPLES as i64 + 500) {
            r.push(sec, LagSample { at: sec, ..LagSample::default() });
        }
        let s = r.oldest_first();
        assert_eq!(s.len(), LAG_SAMPLES);
        assert_eq!(s[0].at, 501);
        assert_eq!(s[LAG_SAMPLES - 1].at, LAG_SAMPLES as i64 + 500);
        assert!(s.windows(2).all(|w| w[1].at == w[0].at + 1));
        r.reset(2);
        assert!(r.oldest_first().is_empty());
    }

    #[test]
    fn lag_ring_index_wraps_without_losing_order() {
        let mut r = ring();
        r.written = (2 * LAG_SAMPLES - 2) as u32;
        for sec in 1..=5 {
            r.push(sec, LagSample { at: sec, ..LagSample::default() });
        }
        let s = r.oldest_first();
        assert_eq!(s.len(), LAG_SAMPLES);
        assert_eq!(&s[LAG_SAMPLES - 5..].iter().map(|x| x.at).collect::<Vec<_>>(), &[1, 2, 3, 4, 5]);
    }
}
