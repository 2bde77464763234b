//! The PyO3 layer: thin wrappers over the pure-Rust core, one error mapping, one GIL-release helper.

mod objects;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

use crate::error::Error;

create_exception!(
    distkeras_plus._core,
    DkError,
    PyException,
    "Base class of every distkeras-plus parameter-server error."
);
create_exception!(
    distkeras_plus._core,
    AuthenticationError,
    DkError,
    "A peer could not prove it holds the run's secret."
);
create_exception!(
    distkeras_plus._core,
    LayoutMismatchError,
    DkError,
    "Worker and server hold weights of different shapes."
);
create_exception!(
    distkeras_plus._core,
    ProtocolError,
    DkError,
    "Bytes on the wire that do not follow the protocol."
);
create_exception!(
    distkeras_plus._core,
    CommitRejectedError,
    DkError,
    "The server refused a commit; nothing was applied."
);
create_exception!(
    distkeras_plus._core,
    ServerClosedError,
    DkError,
    "The parameter server closed or the connection was lost."
);

/// The one mapping from core errors to Python exceptions.
fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::Authentication(_) => AuthenticationError::new_err(msg),
        Error::LayoutMismatch(_) => LayoutMismatchError::new_err(msg),
        Error::Protocol(_) => ProtocolError::new_err(msg),
        Error::Rejected(_) => CommitRejectedError::new_err(msg),
        Error::Closed(_) => ServerClosedError::new_err(msg),
        Error::InvalidArgument(_) => PyValueError::new_err(msg),
        Error::Io(e) => e.into(),
    }
}

/// Runs `f` with the GIL released: every call that waits on a socket, a lock or a big copy goes
/// through here, so other Python threads (and Spark's) keep running.
fn released<T: Send, F: Send + FnOnce() -> crate::Result<T>>(py: Python<'_>, f: F) -> PyResult<T> {
    py.detach(f).map_err(to_py)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("DkError", py.get_type::<DkError>())?;
    m.add("AuthenticationError", py.get_type::<AuthenticationError>())?;
    m.add("LayoutMismatchError", py.get_type::<LayoutMismatchError>())?;
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    m.add("CommitRejectedError", py.get_type::<CommitRejectedError>())?;
    m.add("ServerClosedError", py.get_type::<ServerClosedError>())?;
    m.add("RULES", crate::rules::RULE_NAMES)?;
    m.add("CODECS", crate::codec::CODECS)?;
    m.add("PROTOCOL_VERSION", crate::protocol::VERSION)?;
    m.add_class::<objects::PyLayout>()?;
    m.add_class::<objects::PyCentre>()?;
    m.add_class::<objects::PyServer>()?;
    m.add_class::<objects::PyClient>()?;
    m.add_class::<objects::PyCodec>()?;
    Ok(())
}
