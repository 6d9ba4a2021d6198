//! msgxc core: the versioned event vocabulary, the JetStream event log, live notices and
//! delivery. Depends on no store; the read side plugs in through the `projections` crate.
//!
//! Layout:
//! - `events`: every event kind and its payload (the public contract), `schema`: their JSON Schema
//! - `experiment`: variants, holdout and the deterministic assignment of recipients to them
//! - `log`: the event stream `MSGXC_EVENTS` (append with dedup ids, schedules, ordered reads), `subject`: its subjects
//! - `links`: tracked links in e-mail and SMS bodies (signed tokens for the gateway's redirect)
//! - `local`: IANA time zones and quiet-hours windows (users' local time)
//! - `live`: live notices over core NATS, `presence`: who has a live connection (KV, watched)
//! - `dispatch`: the work queue and its lanes (`queue`), the dispatcher (`worker`), provider pacing (`throttle`), frequency caps (`caps`), its metrics (`metrics`)
//! - `channels`: the provider clients (APNs, FCM, Web Push, SMS, e-mail, MQTT)
//! - `stage`: stage-based messaging (seed 002): its records, cron-like schedules, the scheduler
//! - `natsd`: finding, starting and supervising a local nats-server
//! - `trace`: W3C trace context from a request through its event, the fold and the dispatch tasks (off unless enabled)

pub mod channels;
pub mod dispatch;
pub mod events;
pub mod experiment;
pub mod links;
pub mod live;
pub mod local;
pub mod log;
pub mod natsd;
pub mod presence;
pub mod schema;
pub mod stage;
pub mod subject;
pub mod trace;

pub use events::{Actor, Envelope, Event};
pub use log::{Appended, EventLog, LogError, LogSettings, Start, Stored};
