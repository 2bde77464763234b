//! distkeras-plus parameter server core.
//!
//! Plain Rust: the centre variable and its update rules, the wire protocol, the TCP server and
//! the client. The `python` feature adds the thin PyO3 layer in `python/` (the `_core` module).

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
