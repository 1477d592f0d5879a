//! Where a forward pass's time goes, phase by phase: wall time kept in the KV cache the forward
//! runs on, once asked to ([`crate::KvCache::start_profile`]), so that each sequence is timed
//! on its own and a forward without profiling reads no clock.

use std::ops::AddAssign;
use std::time::{Duration, Instant};

/// Wall time of the forward passes on one cache, by phase, summed over layers and calls. The
/// phases run one after another on the thread driving the forward (each parallel inside), so
/// they add up; what they leave out of a call's time (embedding, residual adds, the final norm,
/// the tensors' handling between phases) is the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardProfile {
    /// The query, key, value and output projections, with the norms and activation
    /// quantization inside them.
    pub attention_projections: Duration,
    /// RoPE of the queries, and the keys (rotated) and values written into the cache.
    pub rope_and_cache: Duration,
    /// Scores and weighted sums over the cached positions.
    pub attention: Duration,
    /// The feed-forward block: its norm, gate and up, activation, sub-norm and down.
    pub feed_forward: Duration,
    /// The LM head.
    pub head: Duration,
}

impl ForwardProfile {
    /// Every phase with its name (as `bench --profile` prints them), in the order a layer
    /// runs them.
    pub fn phases(&self) -> [(&'static str, Duration); 5] {
        [
            ("attention_projections", self.attention_projections),
            ("rope_and_cache", self.rope_and_cache),
            ("attention", self.attention),
            ("feed_forward", self.feed_forward),
            ("head", self.head),
        ]
    }

    /// The sum of the phases.
    pub fn total(&self) -> Duration {
        self.phases().iter().map(|(_, time)| *time).sum()
    }
}

impl AddAssign for ForwardProfile {
    fn add_assign(&mut self, other: Self) {
        self.attention_projections += other.attention_projections;
        self.rope_and_cache += other.rope_and_cache;
        self.attention += other.attention;
        self.feed_forward += other.feed_forward;
        self.head += other.head;
    }
}

/// A clock for consecutive phases, read only when `profile` is kept: each lap adds the time
/// since the previous one (or the start) to one phase.
pub(crate) struct Laps(Option<Instant>);

impl Laps {
    /// Starts timing if `profile` is kept.
    pub(crate) fn start(profile: &Option<ForwardProfile>) -> Self {
        Self(profile.is_some().then(Instant::now))
    }

    /// Adds the time since the last lap to the phase `phase` picks out of `profile`.
    pub(crate) fn lap(
        &mut self,
        profile: &mut Option<ForwardProfile>,
        phase: fn(&mut ForwardProfile) -> &mut Duration,
    ) {
        if let (Some(last), Some(profile)) = (&mut self.0, profile) {
            let now = Instant::now();
            *phase(profile) += now - *last;
            *last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_add_to_their_phase_only_when_a_profile_is_kept() {
        let mut off = None;
        let mut laps = Laps::start(&off);
        laps.lap(&mut off, |p| &mut p.attention);
        assert_eq!(off, None);

        let mut on = Some(ForwardProfile::default());
        let mut laps = Laps::start(&on);
        std::thread::sleep(Duration::from_millis(2));
        laps.lap(&mut on, |p| &mut p.attention);
        laps.lap(&mut on, |p| &mut p.head);
        let profile = on.unwrap();
        assert!(profile.attention >= Duration::from_millis(2), "{profile:?}");
        assert_eq!(profile.total(), profile.attention + profile.head);

        let mut sum = profile;
        sum += profile;
        assert_eq!(sum.total(), 2 * profile.total());
    }
}
