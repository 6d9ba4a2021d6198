//! msgxc core: the versioned event vocabulary, the JetStream event log and live notices.
//! Depends on no store; the read side plugs in through the `projections` crate.

pub mod channels;
pub mod dispatch;
pub mod events;
pub mod live;
pub mod log;
pub mod natsd;
pub mod presence;
pub mod schema;
pub mod subject;

pub use events::{Actor, Envelope, Event};
pub use log::{Appended, EventLog, LogError, LogSettings, Start, Stored};
