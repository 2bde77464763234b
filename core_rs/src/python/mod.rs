//! The PyO3 layer: thin wrappers over the pure-Rust core, one error mapping, one GIL-release helper.
//!
//! The module also exports the core's vocabulary as data (rule names and parameters, codec
//! families and what each may do, the stats schema, the shortest secret), read from the tables
//! that the core itself uses, so that Python never has to repeat it.

mod objects;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::error::Error;
use crate::{codec, protocol, rules, server, stats};

create_exception!(
    distkeras_plus._core,
    DkError,
    PyException,
    "The base class of every error a user can fix."
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

const INVALID_ARGUMENT_DOC: &str =
    "A caller passed something unusable (a bad rule name, a buffer of the wrong size, ...). \
     Also a ValueError.";

static INVALID_ARGUMENT: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// `InvalidArgumentError`, a subclass of both `DkError` and `ValueError` (so `except ValueError`
/// keeps working). `create_exception!` allows one base, so the class is made by calling `type`.
fn invalid_argument_error(py: Python<'_>) -> PyResult<&Py<PyType>> {
    INVALID_ARGUMENT.get_or_try_init(py, || {
        let bases = PyTuple::new(
            py,
            [py.get_type::<DkError>(), py.get_type::<PyValueError>()],
        )?;
        let namespace = PyDict::new(py);
        namespace.set_item("__module__", "distkeras_plus._core")?;
        namespace.set_item("__doc__", INVALID_ARGUMENT_DOC)?;
        let class = py
            .get_type::<PyType>()
            .call1(("InvalidArgumentError", bases, namespace))?;
        Ok(class.cast_into::<PyType>()?.unbind())
    })
}

/// The one mapping from core errors to Python exceptions.
fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::Authentication(_) => AuthenticationError::new_err(msg),
        Error::LayoutMismatch(_) => LayoutMismatchError::new_err(msg),
        Error::Protocol(_) => ProtocolError::new_err(msg),
        Error::Rejected(_) => CommitRejectedError::new_err(msg),
        Error::Closed(_) => ServerClosedError::new_err(msg),
        Error::InvalidArgument(_) => Python::attach(|py| match invalid_argument_error(py) {
            Ok(class) => PyErr::from_type(class.bind(py).clone(), msg),
            Err(err) => err,
        }),
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
    m.add("InvalidArgumentError", invalid_argument_error(py)?.bind(py))?;

    m.add(
        "RULES",
        PyTuple::new(py, rules::RULES.iter().map(|r| r.name))?,
    )?;
    let rule_params = PyDict::new(py);
    for rule in &rules::RULES {
        rule_params.set_item(rule.name, PyTuple::new(py, rule.param_names())?)?;
    }
    m.add("RULE_PARAMS", rule_params)?;
    m.add("RULE_SYNTAX", rules::rule_syntax())?;
    m.add("CODECS", PyTuple::new(py, codec::families())?)?;
    m.add("CODEC_SYNTAX", codec::CODEC_SYNTAX)?;
    m.add("PULL_CODECS", PyTuple::new(py, codec::pull_families())?)?;
    m.add(
        "ELASTIC_CODECS",
        PyTuple::new(py, codec::weight_families())?,
    )?;
    m.add("MIN_SECRET_LEN", server::MIN_SECRET_LEN)?;
    m.add("STATS_FIELDS", PyTuple::new(py, stats::STATS_FIELDS)?)?;
    let worker_fields = stats::worker_stats_fields();
    m.add("WORKER_STATS_FIELDS", PyTuple::new(py, worker_fields)?)?;
    m.add("PROTOCOL_VERSION", protocol::VERSION)?;
    m.add("MAX_LOGS", protocol::MAX_LOGS)?;
    m.add_class::<objects::PyLayout>()?;
    m.add_class::<objects::PyCentre>()?;
    m.add_class::<objects::PyServer>()?;
    m.add_class::<objects::PyClient>()?;
    m.add_class::<objects::PyCodec>()?;
    Ok(())
}
