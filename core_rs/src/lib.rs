//! distkeras-plus parameter server core.
//!
//! Plain Rust: the centre variable and its update rules, the wire protocol, the TCP server and
//! the client. The `python` feature adds the thin PyO3 layer in `python/` (the `_core` module).
//!
//! The core owns its vocabulary, each part defined once next to what it describes: the update
//! rules in the `rules::RULES` table, the codec families and what each may do in `codec`, every
//! wire number in `protocol`, the stats schema in `stats`. The server's checks, error messages
//! and the Python module's exported constants are all computed from those.

pub mod centre;
pub mod client;
pub mod codec;
pub mod error;
pub mod layout;
pub mod protocol;
pub mod rules;
pub mod server;
pub mod stats;

#[cfg(feature = "python")]
mod python;

pub use centre::{Applied, Centre, Finite};
pub use client::{Client, ClientOptions};
pub use codec::Codec;
pub use error::{Error, Result};
pub use layout::Layout;
pub use rules::Rule;
pub use server::{Server, ServerConfig};
