//! Leaf utilities that every floor may use and that use no other part of triad: atomic file
//! writes, fetching packaged data into the cache, what the machine has, did-you-mean for names,
//! progress bars.

pub mod atomic;
pub mod machine;
pub mod names;
pub mod packages;
pub mod progress;
