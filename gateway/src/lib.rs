//! msgxc HTTP/WebSocket face: authenticates JWTs, validates requests, appends events to the
//! log and answers reads from the projections; it never writes a read model itself.
//!
//! - `auth`: JWT verification and the caller's identity and roles
//! - `compat`: the seed systems' answer shapes (`MSGXC_COMPAT`)
//! - `error`: the `{"error":{"code","message"}}` answers
//! - `extract`: request extractors (JSON bodies within the size limit, callers)
//! - `jwks`: verification keys from an issuer's JSON Web Key Set, read again as they rotate
//! - `metrics`: Prometheus metrics of requests, appends, projector lag and connections
//! - `openapi`: the OpenAPI 3.1 document of `/api/v1` (from the handlers' types) and its page
//! - `hub`: live frames routed from the event stream to this gateway's connections
//! - `queue`: a connection's bounded frame queue
//! - `rate`: per-sender rate limits
//! - `routes`: the HTTP, WebSocket and SSE handlers
//! - `serve`: the accept loop, with header, idle and HTTP/2 ping timeouts
//! - `state`: configuration and the state every handler shares

pub mod auth;
pub mod compat;
pub mod error;
pub mod extract;
pub mod hub;
pub mod jwks;
pub mod metrics;
pub mod openapi;
pub mod queue;
pub mod rate;
pub mod routes;
pub mod serve;
pub mod state;

pub use routes::router;
pub use state::{AppState, GatewayConfig};
