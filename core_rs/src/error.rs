//! One error type for the whole crate; the PyO3 layer maps each variant to a Python exception.

use std::io;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer could not prove it holds the run's secret (or we could not prove it to the peer).
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// Both sides hold weights of different shapes.
    #[error("layout mismatch: {0}")]
    LayoutMismatch(String),
    /// Bytes on the wire that do not follow the protocol: bad magic, unknown op, wrong length.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A well-formed commit that the server refused (duplicate, non-finite values, ...); nothing was applied.
    #[error("commit rejected: {0}")]
    Rejected(String),
    /// The server is gone or shutting down.
    #[error("parameter server closed: {0}")]
    Closed(String),
    /// A caller passed something unusable (a bad rule name, a buffer of the wrong size, ...).
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn protocol(msg: impl Into<String>) -> Self {
        Error::Protocol(msg.into())
    }
    pub fn rejected(msg: impl Into<String>) -> Self {
        Error::Rejected(msg.into())
    }
}

/// `what` (a buffer the caller passed) must hold exactly as many values as `holder` has.
pub fn check_len(what: &str, got: usize, holder: &str, expected: usize) -> Result<()> {
    if got != expected {
        return Err(Error::invalid(format!(
            "{what} has {got} values, {holder} has {expected}"
        )));
    }
    Ok(())
}
