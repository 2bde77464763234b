"""The Spark session a run uses: `local[N]` by default or a master URL, quiet, checked before
Spark's own minute of retries; and what the driver needs to know of it."""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from distkeras_plus.errors import SettingError, TrainingError
from distkeras_plus.quiet import log_path, verbose

#: How often local Spark tries a task before the run fails (a cluster's default is 4 too).
LOCAL_TASK_TRIES = 4


_MASTERS = re.compile(
    r"local(\[(\*|[1-9]\d*)(,\s*[1-9]\d*)?\])?|local-cluster\[\d+,\s*\d+,\s*\d+\]"
    r"|spark://[^\s/,:]+:\d+(,[^\s/,:]+:\d+)*|yarn|k8s://\S+"
)


def check_master_url(master: str) -> None:
    """The URL's form, and what it needs of this machine: one line, before Spark starts."""
    if not _MASTERS.fullmatch(master):
        raise SettingError(
            f"{master!r} is not a Spark master URL; use local[N], local[N,TRIES], spark://HOST:PORT, "
            "yarn or k8s://HOST:PORT"
        )
    if master == "yarn" and not (os.environ.get("HADOOP_CONF_DIR") or os.environ.get("YARN_CONF_DIR")):
        raise SettingError(
            "--master yarn needs HADOOP_CONF_DIR or YARN_CONF_DIR set to the cluster's configuration folder"
        )


_REMOTES = re.compile(r"sc://[^\s/:]+(:\d+)?(/[^\s]*)?|local(\[(\*|[1-9]\d*)\])?")


def check_remote_url(remote: str) -> None:
    """A Spark Connect URL's form: one line, before anything starts."""
    if not _REMOTES.fullmatch(remote):
        raise SettingError(
            f"{remote!r} is not a Spark Connect URL; use sc://HOST:PORT (or local[N] for a Connect "
            "server started here)"
        )


def check_master(master: str) -> None:
    """Fails at once, in one line, when a standalone master does not answer (Spark itself retries
    for a minute and then stops with a page of stack traces)."""
    if not master.startswith("spark://"):
        return
    hosts = master.removeprefix("spark://").split(",")
    errors = []
    for host_port in hosts:
        host, _, port = host_port.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                return
        except (OSError, ValueError) as e:
            errors.append(f"{host_port}: {e}")
    raise TrainingError(
        f"cannot reach the Spark master {master} ({'; '.join(errors)}); "
        "check the URL and that the master is running"
    )


def _options(master: str | None, workers: int) -> dict[str, str]:
    """The settings a session starts with."""
    quiet = Path(__file__).resolve().parent.parent / "log4j2.properties"
    return {
        "spark.app.name": "distkeras-plus",
        # local[N, F]: a failed task is tried up to F times, as on a cluster.
        "spark.master": master or f"local[{workers},{LOCAL_TASK_TRIES}]",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": os.environ.get("DK_DRIVER_MEMORY", "4g"),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Python workers start in the driver's directory: from a source checkout, the checkout's
        # distkeras_plus (which has no compiled core) would shadow the installed one.
        "spark.executorEnv.PYTHONSAFEPATH": "1",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={quiet.as_uri()}",
    }


def local_session(
    workers: int, master: str | None = None, conf: Mapping[str, str] | None = None, remote: str | None = None
) -> Any:
    """A Spark session: `local[workers]` by default, or the given master URL; `conf` adds to or
    replaces the settings it starts with. `remote` (or SPARK_REMOTE) makes it a Spark Connect
    session instead: of the server at sc://HOST:PORT, or of one started here for `local[N]`."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    remote = remote or os.environ.get("SPARK_REMOTE")
    if remote:
        if master:
            raise SettingError(f"give a Spark master or a Spark Connect URL, not both ({master}, {remote})")
        check_remote_url(remote)
        builder = SparkSession.builder.remote(remote)
        if not remote.startswith("sc://"):  # the server starts in this process, quiet as ours
            options = {**_options(None, workers), **(conf or {})}
            options.pop("spark.master")  # the URL's
            for key, value in options.items():
                builder = builder.config(key, value)
        with warnings.catch_warnings():
            # The server started with them; the client then tries them again as session settings.
            warnings.filterwarnings("ignore", "Failed to set spark.")
            return builder.getOrCreate()
    if master:
        check_master(master)
    else:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # one machine: no address to guess
    options = {**_options(master, workers), **(conf or {})}
    if "spark.executor.pyspark.memory" in options:
        # Spark enforces it as a limit on the Python workers' address space, which Arrow's own
        # allocator, reserving large regions, soon runs out of (a 392 MB partition could not be
        # read under 3 GB); the system allocator reserves only what it uses.
        options.setdefault("spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL", "system")
    with _STARTING:
        from pyspark import SparkConf, SparkContext

        if SparkContext._active_spark_context is None and not verbose():
            from pyspark.java_gateway import launch_gateway

            spark_conf = SparkConf().setAll(list(options.items()))
            # The JVM, and the local Python workers it starts, write their lines to the log.
            with log_path().open("ab") as log:
                gateway = launch_gateway(spark_conf, popen_kwargs={"stderr": log})  # type: ignore[no-untyped-call]
            SparkContext(conf=spark_conf, gateway=gateway)
        builder = SparkSession.builder
        for key, value in options.items():
            builder = builder.config(key, value)
        return builder.getOrCreate()


_STARTING = threading.Lock()


def start_session(workers: int, master: str | None = None, remote: str | None = None) -> Callable[[], Any]:
    """`local_session`, started in the background (the JVM's start takes seconds, as does
    importing Keras, which the driver can do meanwhile); the function returned waits for it."""
    started: dict[str, Any] = {}

    def start() -> None:
        try:
            started["spark"] = local_session(workers, master, remote=remote)
        except BaseException as e:  # raised where the session is waited for
            started["error"] = e

    # A daemon: a run that fails its checks first exits at once, and the JVM with it.
    thread = threading.Thread(target=start, name="dk-spark-start", daemon=True)
    thread.start()

    def wait() -> Any:
        thread.join()
        if "error" in started:
            raise started["error"]
        return started["spark"]

    return wait


def is_connect(spark: Any) -> bool:
    """A Spark Connect session: no SparkContext and no JVM on this side."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def master_of(spark: Any) -> str:
    if is_connect(spark):
        return str(spark.conf.get("spark.master", ""))
    return str(spark.sparkContext.master)


def is_local(spark: Any) -> bool:
    """The executors run on the driver's machine (under Connect: the Connect server's, and that
    is this machine's only when the client connects to it here)."""
    if not master_of(spark).startswith("local"):
        return False
    return not is_connect(spark) or _is_loopback(spark.client.host)


def _is_loopback(host: str) -> bool:
    try:
        return socket.gethostbyname(host).startswith("127.")
    except OSError:
        return False


def task_slots(spark: Any) -> int | None:
    """How many tasks the cluster runs at once (None: a Connect session of a cluster that does
    not say; Spark then refuses a barrier stage too large for it on its own)."""
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    local = re.fullmatch(r"local(\[(\*|\d+)(,\s*\d+)?\])?", master_of(spark))
    if local is not None:
        cores = local.group(2) or "1"
        return os.cpu_count() or 1 if cores == "*" else int(cores)
    parallelism = spark.conf.get("spark.default.parallelism", None)
    return int(parallelism) if parallelism else None


def quiet_logs(spark: Any) -> None:
    """Spark's own log lines down to errors (a Connect server's are its operator's to set)."""
    if not is_connect(spark):
        spark.sparkContext.setLogLevel("ERROR")


def ps_host(spark: Any, requested: str | None) -> str:
    """The address workers use to reach the driver's parameter server."""
    if requested:
        return requested
    if is_local(spark):
        return "127.0.0.1"
    # Under Connect the server's driver is not this process: the server runs here, in the client.
    driver = None if is_connect(spark) else spark.conf.get("spark.driver.host", None)
    ip = socket.gethostbyname(driver or socket.gethostname())
    if ip.startswith("127.") or ip == "::1":
        raise TrainingError(
            f"the driver's address resolves to {ip}, which executors on other hosts cannot reach; "
            "set ps_host (or DK_PS_HOST) to an address of this machine that they can"
        )
    return ip
