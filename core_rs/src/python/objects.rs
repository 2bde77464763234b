//! The Python classes of `distkeras_plus._core`. Each one owns a core object and forwards to it.
// Python methods take their keyword arguments one to one, so long parameter lists are expected here.
#![allow(clippy::too_many_arguments)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArrayDyn, PyReadwriteArray1};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::{released, to_py, LayoutMismatchError, ServerClosedError};
use crate::centre::{Centre, Finite};
use crate::client::{Client, ClientOptions};
use crate::codec::Codec;
use crate::error::{check_len, Error};
use crate::layout::Layout;
use crate::protocol::{Control, Progress};
use crate::rules::Rule;
use crate::server::{Server, ServerConfig};
use crate::stats::Stat;

/// `InvalidArgumentError(msg)`, like every unusable argument the core itself refuses.
fn invalid(msg: String) -> PyErr {
    to_py(Error::invalid(msg))
}

fn slice<'a>(a: &'a PyReadonlyArray1<'_, f32>, what: &str) -> PyResult<&'a [f32]> {
    a.as_slice()
        .map_err(|_| invalid(format!("{what} must be a contiguous float32 array")))
}

fn slice_mut<'a>(a: &'a mut PyReadwriteArray1<'_, f32>, what: &str) -> PyResult<&'a mut [f32]> {
    a.as_slice_mut().map_err(|_| {
        invalid(format!(
            "{what} must be a contiguous, writable float32 array"
        ))
    })
}

/// A positive number of seconds (a zero socket timeout would mean "no timeout" to the OS).
fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    let bad = || invalid(format!("{what} must be a positive number of seconds"));
    if s <= 0.0 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(s).map_err(|_| bad())
}

/// The shapes of a model's weight tensors, laid end to end in one flat float32 vector.
#[pyclass(name = "Layout", module = "distkeras_plus._core", frozen, eq)]
#[derive(PartialEq)]
pub struct PyLayout {
    pub inner: Layout,
}

#[pymethods]
impl PyLayout {
    #[new]
    fn new(shapes: Vec<Vec<usize>>) -> PyResult<Self> {
        Ok(PyLayout {
            inner: Layout::new(shapes).map_err(to_py)?,
        })
    }

    /// A layout of one flat tensor with `num_params` values.
    #[staticmethod]
    fn flat(num_params: usize) -> PyResult<Self> {
        Ok(PyLayout {
            inner: Layout::flat(num_params).map_err(to_py)?,
        })
    }

    #[getter]
    fn num_params(&self) -> usize {
        self.inner.num_params()
    }

    #[getter]
    fn shapes(&self) -> Vec<Vec<usize>> {
        self.inner.shapes().to_vec()
    }

    #[getter]
    fn offsets(&self) -> Vec<usize> {
        self.inner.offsets().to_vec()
    }

    /// SHA-256 of the dtype and shapes; workers and server must agree on it.
    #[getter]
    fn hash<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.hash())
    }

    /// Copies each float32 tensor into its place in `out` (one call, the loop runs in Rust).
    fn flatten_into(
        &self,
        arrays: Vec<PyReadonlyArrayDyn<'_, f32>>,
        mut out: PyReadwriteArray1<'_, f32>,
    ) -> PyResult<()> {
        let shapes = self.inner.shapes();
        if arrays.len() != shapes.len() {
            return Err(LayoutMismatchError::new_err(format!(
                "got {} tensors, the layout has {}",
                arrays.len(),
                shapes.len()
            )));
        }
        let out = slice_mut(&mut out, "out")?;
        check_len("out", out.len(), "the layout", self.inner.num_params()).map_err(to_py)?;
        for (i, (array, (shape, &offset))) in arrays
            .iter()
            .zip(shapes.iter().zip(self.inner.offsets()))
            .enumerate()
        {
            let view = array.as_array();
            if view.shape() != shape.as_slice() {
                return Err(LayoutMismatchError::new_err(format!(
                    "tensor {i} has shape {:?}, the layout expects {shape:?}",
                    view.shape()
                )));
            }
            let dst = &mut out[offset..offset + view.len()];
            match view.as_slice() {
                Some(src) => dst.copy_from_slice(src),
                None => dst.iter_mut().zip(view.iter()).for_each(|(d, s)| *d = *s),
            }
        }
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!("Layout({})", self.inner.describe())
    }
}

fn parse_rule(rule: &str, params: Option<HashMap<String, f64>>) -> PyResult<Rule> {
    let params = params.unwrap_or_default();
    let pairs: Vec<(&str, f64)> = params.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    Rule::parse(rule, &pairs).map_err(to_py)
}

/// The centre variable and its update rule, shared by the server and the driver.
#[pyclass(name = "Centre", module = "distkeras_plus._core", frozen)]
pub struct PyCentre {
    inner: Arc<Centre>,
}

#[pymethods]
impl PyCentre {
    #[new]
    #[pyo3(signature = (initial, rule = "add", params = None, round_timeout = None, clock = 0))]
    fn new(
        initial: PyReadonlyArray1<'_, f32>,
        rule: &str,
        params: Option<HashMap<String, f64>>,
        round_timeout: Option<f64>,
        clock: u64,
    ) -> PyResult<Self> {
        let rule = parse_rule(rule, params)?;
        let round_timeout = round_timeout
            .map(|t| seconds("round_timeout", t))
            .transpose()?;
        let centre = Centre::new(rule, slice(&initial, "initial")?).map_err(to_py)?;
        Ok(PyCentre {
            inner: Arc::new(centre.with_round_timeout(round_timeout).with_clock(clock)),
        })
    }

    #[getter]
    fn num_params(&self) -> usize {
        self.inner.len()
    }

    /// Commits applied so far (rounds, for the sync rule).
    #[getter]
    fn clock(&self) -> u64 {
        self.inner.clock()
    }

    #[getter]
    fn rule(&self) -> &'static str {
        self.inner.rule().name()
    }

    /// The rule's parameters, in the order of `RULE_PARAMS`.
    #[getter]
    fn rule_params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, value) in self.inner.rule().params() {
            d.set_item(name, value)?;
        }
        Ok(d)
    }

    /// Copies a consistent snapshot into `out`; returns its clock.
    fn pull(&self, py: Python<'_>, mut out: PyReadwriteArray1<'_, f32>) -> PyResult<u64> {
        let out = slice_mut(&mut out, "out")?;
        let centre = &self.inner;
        released(py, || centre.pull(out))
    }

    /// A new array holding a snapshot of the centre.
    fn to_numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let mut out = vec![0.0f32; self.inner.len()];
        let centre = &self.inner;
        released(py, || centre.pull(&mut out))?;
        Ok(PyArray1::from_vec(py, out))
    }

    /// Applies one commit in this process; returns `(clock, staleness)`.
    #[pyo3(signature = (delta, last_pull_clock = 0, sent = None, out = None, worker = 0))]
    fn commit(
        &self,
        py: Python<'_>,
        delta: PyReadonlyArray1<'_, f32>,
        last_pull_clock: u64,
        sent: Option<PyReadonlyArray1<'_, f32>>,
        mut out: Option<PyReadwriteArray1<'_, f32>>,
        worker: u32,
    ) -> PyResult<(u64, u64)> {
        let delta = slice(&delta, "delta")?;
        let sent = sent.as_ref().map(|s| slice(s, "sent")).transpose()?;
        let out = out.as_mut().map(|o| slice_mut(o, "out")).transpose()?;
        let centre = &self.inner;
        let applied = released(py, || {
            centre.commit(Finite::check(delta)?, last_pull_clock, sent, out, worker)
        })?;
        Ok((applied.clock, applied.staleness))
    }

    fn __repr__(&self) -> String {
        format!(
            "Centre({} parameters, rule={}, clock={})",
            self.inner.len(),
            self.inner.rule().name(),
            self.inner.clock()
        )
    }
}

/// A running parameter server. It serves until `stop()` (or the end of a `with` block).
#[pyclass(name = "ParameterServer", module = "distkeras_plus._core")]
pub struct PyServer {
    inner: Server,
}

#[pymethods]
impl PyServer {
    #[new]
    #[pyo3(signature = (centre, layout, secret, host = "127.0.0.1", port = 0, handshake_timeout = 10.0, max_connections = 1024, codecs = None, idle_timeout = None, max_unauthenticated = 64))]
    fn new(
        py: Python<'_>,
        centre: &PyCentre,
        layout: &PyLayout,
        secret: &[u8],
        host: &str,
        port: u16,
        handshake_timeout: f64,
        max_connections: usize,
        codecs: Option<Vec<String>>,
        idle_timeout: Option<f64>,
        max_unauthenticated: usize,
    ) -> PyResult<Self> {
        let mut config = ServerConfig::new(host, port, secret.to_vec());
        config.handshake_timeout = seconds("handshake_timeout", handshake_timeout)?;
        config.max_connections = max_connections;
        config.max_unauthenticated = max_unauthenticated;
        config.idle_timeout = idle_timeout
            .map(|t| seconds("idle_timeout", t))
            .transpose()?;
        config.accept_codecs = codecs; // checked against `codec::families()` by `Server::start`
        let (centre, layout) = (Arc::clone(&centre.inner), layout.inner.clone());
        Ok(PyServer {
            inner: released(py, || Server::start(centre, layout, config))?,
        })
    }

    /// `(host, port)` the server listens on.
    #[getter]
    fn address(&self) -> (String, u16) {
        let a = self.inner.addr();
        (a.ip().to_string(), a.port())
    }

    #[getter]
    fn port(&self) -> u16 {
        self.inner.addr().port()
    }

    #[getter]
    fn running(&self) -> bool {
        self.inner.is_running()
    }

    #[getter]
    fn centre(&self) -> PyCentre {
        PyCentre {
            inner: Arc::clone(self.inner.centre()),
        }
    }

    /// Stops accepting, closes every connection and joins every thread. Safe to call twice.
    fn stop(&mut self, py: Python<'_>) -> PyResult<()> {
        let server = &mut self.inner;
        released(py, || {
            server.stop();
            Ok(())
        })
    }

    /// The first failure a worker reported (its own code failed), or None.
    fn failure(&self) -> Option<String> {
        self.inner.failure()
    }

    /// What every commit reply carries from now on, to every worker: `stop` asks them to end
    /// their loop at that exchange, `learning_rate` (None: none set) is the rate their
    /// optimizers use from their next window. Sets both.
    #[pyo3(signature = (stop = false, learning_rate = None))]
    fn set_control(&self, stop: bool, learning_rate: Option<f32>) -> PyResult<()> {
        if learning_rate.is_some_and(|r| !r.is_finite() || r < 0.0) {
            return Err(invalid(format!(
                "learning_rate must be a finite number >= 0 or None, not {}",
                learning_rate.unwrap_or_default()
            )));
        }
        self.inner.set_control(Control {
            stop,
            learning_rate,
        });
        Ok(())
    }

    /// From now on the run has `workers` workers (ids 0..workers-1): when the last of them
    /// commits in a later epoch than `e`, epoch `e` ends and the server keeps the centre as it
    /// was then, for `take_epoch_centre(e)`.
    fn track_epochs(&self, py: Python<'_>, workers: u32) -> PyResult<()> {
        let server = &self.inner;
        released(py, || server.track_epochs(workers))
    }

    /// How many epochs have ended: epochs 0..epochs_ended-1.
    #[getter]
    fn epochs_ended(&self, py: Python<'_>) -> u32 {
        let server = &self.inner;
        py.detach(|| server.epochs_ended())
    }

    /// The centre as epoch `epoch` ended (a new float32 array), handed over once: None if that
    /// epoch has not ended or its centre was taken.
    fn take_epoch_centre<'py>(
        &self,
        py: Python<'py>,
        epoch: u32,
    ) -> Option<Bound<'py, PyArray1<f32>>> {
        let server = &self.inner;
        let centre = py.detach(|| server.take_epoch_centre(epoch))?;
        Some(PyArray1::from_vec(py, centre))
    }

    /// Each epoch's logs over every worker, by epoch: `samples` (the samples of its applied
    /// commits' windows) and `means` (each logs value's mean, weighted by window samples, over
    /// the samples for which it was finite; NaN where it never was).
    fn epochs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (epoch, e) in self.inner.epochs() {
            let ed = PyDict::new(py);
            ed.set_item("samples", e.samples)?;
            ed.set_item("means", e.means())?;
            d.set_item(epoch, ed)?;
        }
        Ok(d)
    }

    /// Counters (named as in `STATS_FIELDS`), then `workers`: each worker's statistics (named
    /// as in `WORKER_STATS_FIELDS`) by worker id.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        for (name, value) in s.fields() {
            d.set_item(name, value)?;
        }
        let workers = PyDict::new(py);
        for (id, w) in &s.workers {
            let wd = PyDict::new(py);
            for (name, value) in w.fields() {
                match value {
                    Stat::Count(n) => wd.set_item(name, n)?,
                    Stat::Real(x) => wd.set_item(name, x)?,
                }
            }
            workers.set_item(id, wd)?;
        }
        d.set_item("workers", workers)?;
        Ok(d)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        py: Python<'_>,
        _exc_type: Py<PyAny>,
        _exc: Py<PyAny>,
        _tb: Py<PyAny>,
    ) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let (host, port) = self.address();
        format!(
            "ParameterServer({host}:{port}, running={})",
            self.inner.is_running()
        )
    }
}

/// A worker's connection to the parameter server. Use one per thread.
#[pyclass(name = "Client", module = "distkeras_plus._core")]
pub struct PyClient {
    /// `None` once closed: closing drops the socket at once instead of when Python collects us.
    inner: Option<Client>,
    /// Traffic totals and the last control block, kept readable after close.
    closed_bytes: (u64, u64),
    closed_control: Control,
}

impl PyClient {
    fn open(&mut self) -> PyResult<&mut Client> {
        self.inner
            .as_mut()
            .ok_or_else(|| ServerClosedError::new_err("this client is closed"))
    }
    /// The control block of the latest commit reply, open or closed.
    fn control(&self) -> Control {
        self.inner
            .as_ref()
            .map_or(self.closed_control, Client::control)
    }
    fn get(&self) -> PyResult<&Client> {
        self.inner
            .as_ref()
            .ok_or_else(|| ServerClosedError::new_err("this client is closed"))
    }
}

#[pymethods]
impl PyClient {
    #[new]
    #[pyo3(signature = (address, secret, layout, worker_id, attempt = 0, connect_timeout = 30.0, timeout = None, codec = "none", pull_codec = "none"))]
    fn new(
        py: Python<'_>,
        address: &str,
        secret: &[u8],
        layout: &PyLayout,
        worker_id: u32,
        attempt: u32,
        connect_timeout: f64,
        timeout: Option<f64>,
        codec: &str,
        pull_codec: &str,
    ) -> PyResult<Self> {
        let connect_timeout = seconds("connect_timeout", connect_timeout)?;
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        let (secret, layout) = (secret.to_vec(), &layout.inner);
        let options = ClientOptions {
            attempt,
            connect_timeout,
            timeout,
            commit_codec: Codec::parse(codec).map_err(to_py)?,
            pull_codec: Codec::parse(pull_codec).map_err(to_py)?,
        };
        let client = released(py, || {
            Client::open(address, &secret, layout, worker_id, options)
        })?;
        Ok(PyClient {
            inner: Some(client),
            closed_bytes: (0, 0),
            closed_control: Control::default(),
        })
    }

    #[getter]
    fn num_params(&self) -> PyResult<usize> {
        Ok(self.get()?.num_params())
    }
    #[getter]
    fn worker_id(&self) -> PyResult<u32> {
        Ok(self.get()?.worker_id())
    }
    /// Samples this worker's earlier attempts had committed: where a retried task goes on from.
    #[getter]
    fn resume_samples(&self) -> PyResult<u64> {
        Ok(self.get()?.resume_samples())
    }
    #[getter]
    fn last_pull_clock(&self) -> PyResult<u64> {
        Ok(self.get()?.last_pull_clock())
    }
    #[getter]
    fn replies_with_vector(&self) -> PyResult<bool> {
        Ok(self.get()?.replies_with_vector())
    }
    #[getter]
    fn bytes_in(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(self.closed_bytes.0, Client::bytes_in)
    }
    #[getter]
    fn bytes_out(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(self.closed_bytes.1, Client::bytes_out)
    }

    /// Fetches the centre into the preallocated float32 array `out`; returns its clock.
    fn pull(&mut self, py: Python<'_>, mut out: PyReadwriteArray1<'_, f32>) -> PyResult<u64> {
        let out = slice_mut(&mut out, "out")?;
        let client = self.open()?;
        released(py, || client.pull(out))
    }

    /// Sends `delta` straight from its buffer; returns `(clock, staleness)`. Rules that answer
    /// with a vector (elastic, sync) write it into `out`.
    #[pyo3(signature = (delta, out = None))]
    fn commit(
        &mut self,
        py: Python<'_>,
        delta: PyReadonlyArray1<'_, f32>,
        mut out: Option<PyReadwriteArray1<'_, f32>>,
    ) -> PyResult<(u64, u64)> {
        let delta = slice(&delta, "delta")?;
        let out = out.as_mut().map(|o| slice_mut(o, "out")).transpose()?;
        let client = self.open()?;
        let applied = released(py, || client.commit(delta, out))?;
        Ok((applied.clock, applied.staleness))
    }

    /// What the next commits tell the server of this worker's training: samples so far, the
    /// epoch, and the window's logs (mean loss first, then each metric's mean; at most
    /// `MAX_LOGS`). The driver shows it as progress and averages the logs per epoch.
    // The text signature says what the default is; PyO3 would show `logs=...` for `Vec::new()`.
    #[pyo3(signature = (samples, epoch = 0, logs = Vec::new()), text_signature = "($self, samples, epoch=0, logs=())")]
    fn set_progress(&mut self, samples: u64, epoch: u32, logs: Vec<f32>) -> PyResult<()> {
        let progress = Progress {
            samples,
            epoch,
            logs,
        };
        self.open()?.set_progress(progress).map_err(to_py)
    }

    /// Whether the latest commit reply asked this worker to stop (False before any).
    #[getter]
    fn stop_requested(&self) -> bool {
        self.control().stop
    }

    /// The learning rate the latest commit reply carried (None before any, or if none is set).
    #[getter]
    fn learning_rate(&self) -> Option<f32> {
        self.control().learning_rate
    }

    /// Sends what error feedback still holds back as one dense commit; `None` if nothing was owed.
    fn flush(&mut self, py: Python<'_>) -> PyResult<Option<(u64, u64)>> {
        let client = self.open()?;
        Ok(released(py, || client.flush())?.map(|a| (a.clock, a.staleness)))
    }

    /// The server's counters as seen over the wire, named as in `STATS_FIELDS`.
    fn stats<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let client = self.open()?;
        let fields = released(py, || client.stats())?;
        let d = PyDict::new(py);
        for (name, value) in fields {
            d.set_item(name, value)?;
        }
        Ok(d)
    }

    /// Tells the server this worker's own code failed, with `message`, and closes the socket.
    fn fail(&mut self, py: Python<'_>, message: &str) {
        if let Some(mut client) = self.inner.take() {
            py.detach(|| client.fail(message));
            self.closed_bytes = (client.bytes_in(), client.bytes_out());
            self.closed_control = client.control();
        }
    }

    /// Says goodbye and closes the socket. Safe to call twice.
    fn close(&mut self, py: Python<'_>) {
        if let Some(mut client) = self.inner.take() {
            py.detach(|| client.close());
            self.closed_bytes = (client.bytes_in(), client.bytes_out());
            self.closed_control = client.control();
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        py: Python<'_>,
        _exc_type: Py<PyAny>,
        _exc: Py<PyAny>,
        _tb: Py<PyAny>,
    ) -> bool {
        self.close(py);
        false
    }
}

/// A wire codec, for measuring it: `Codec("topk:0.01").encode(values)`.
#[pyclass(name = "Codec", module = "distkeras_plus._core", frozen)]
pub struct PyCodec {
    inner: Codec,
}

#[pymethods]
impl PyCodec {
    #[new]
    fn new(name: &str) -> PyResult<Self> {
        Ok(PyCodec {
            inner: Codec::parse(name).map_err(to_py)?,
        })
    }

    #[getter]
    fn name(&self) -> String {
        self.inner.name()
    }

    /// The codec's family: one of `CODECS`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    #[getter]
    fn lossy(&self) -> bool {
        self.inner.lossy()
    }

    /// Whether pulls may use it (its family is in `PULL_CODECS`).
    #[getter]
    fn pull_capable(&self) -> bool {
        self.inner.can_pull()
    }

    /// Whether elastic commits, which carry weights, may use it (its family is in `ELASTIC_CODECS`).
    #[getter]
    fn elastic_capable(&self) -> bool {
        self.inner.can_carry_weights()
    }

    fn max_encoded_len(&self, num_values: usize) -> usize {
        self.inner.max_encoded_len(num_values)
    }

    /// The encoded bytes of a float32 vector (`seed` drives stochastic rounding).
    #[pyo3(signature = (values, seed = 0))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        values: PyReadonlyArray1<'_, f32>,
        seed: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let values = slice(&values, "values")?;
        let codec = self.inner;
        let mut out = Vec::new();
        released(py, || {
            codec.encode(values, seed, &mut out);
            Ok(())
        })?;
        Ok(PyBytes::new(py, &out))
    }

    /// Decodes `data` into all of `out`; a malformed payload raises `CommitRejectedError`.
    fn decode(
        &self,
        py: Python<'_>,
        data: &[u8],
        mut out: PyReadwriteArray1<'_, f32>,
    ) -> PyResult<()> {
        let out = slice_mut(&mut out, "out")?;
        let codec = self.inner;
        released(py, || codec.decode(data, out).map(drop))
    }

    fn __repr__(&self) -> String {
        format!("Codec({:?})", self.inner.name())
    }
}
