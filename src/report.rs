//! The only way the core talks to the user.
//!
//! The library never prints: it reports steps, progress and warnings through [`Reporter`]. The
//! binary shows them with indicatif on a terminal and as plain lines in CI logs; tests record
//! them.

/// Receives what the core is doing.
pub trait Reporter: Sync {
    /// A step begins (`reading tree`, `compressing`).
    fn step(&self, name: &str);
    /// Progress of the current step: `done` of `total` units.
    fn progress(&self, done: u64, total: u64);
    /// The current step ended.
    fn step_done(&self);
    /// Something the user should know, that does not stop the work.
    fn warn(&self, message: &str);
    /// What the current step is waiting for (another apt's lock), as it happens.
    fn note(&self, message: &str);
}

/// Reports nothing (the executor's unit tests).
#[cfg(test)]
pub struct Silent;

#[cfg(test)]
impl Reporter for Silent {
    fn step(&self, _: &str) {}
    fn progress(&self, _: u64, _: u64) {}
    fn step_done(&self) {}
    fn warn(&self, _: &str) {}
    fn note(&self, _: &str) {}
}
