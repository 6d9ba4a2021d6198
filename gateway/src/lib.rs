//! msgxc HTTP/WebSocket face: authenticates JWTs, validates requests, appends events to the
//! log and answers reads from the projections; it never writes a read model itself.

pub mod auth;
pub mod error;
pub mod extract;
pub mod hub;
pub mod rate;
pub mod routes;
pub mod state;

pub use routes::router;
pub use state::{AppState, GatewayConfig};
