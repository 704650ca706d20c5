"""Client.local: a private lesiond subprocess on loopback, for laptops and tests.

The command line is built from the constants below (one place to change if lesiond's flags move):

    lesiond --listen 127.0.0.1:PORT --db PATH --model NAME=REF [extra_args...]

(REF: a model directory or file, or org/name[@revision] in lesiond's Hugging Face cache), and the
client connects once lesiond prints READY_LINE on stdout. Which lesiond runs: ``find_lesiond``.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.parse
import weakref
from pathlib import Path

import grpc

from .client import Client
from .errors import LesionError

FLAG_LISTEN = "--listen"
FLAG_DB = "--db"  # lesiond also accepts --database
FLAG_MODEL = "--model"  # NAME=REF
READY_LINE = "lesiond listening on"
ENV_BINARY = "LESIOND"
STARTUP_TIMEOUT = 120.0  # seconds until READY_LINE (the model is loaded before it)


BUILT_AT = Path("build") / "server" / "lesiond"  # where `make` builds it in a lesion checkout
HOW_TO_GET = (
    "lesiond is built from the lesion repository: run `make` there (it builds build/server/lesiond), then "
    f"set {ENV_BINARY}=/path/to/lesion/build/server/lesiond, put /path/to/lesion/build/server on PATH, or "
    "pass lesiond=PATH to Client.local"
)


def _source_checkout():
    """The directory this package was pip-installed from (pip's direct_url.json: client/python of
    a lesion checkout), or None (installed from a wheel, or by another installer)."""
    try:
        from importlib import metadata

        text = metadata.distribution("lesion").read_text("direct_url.json")
        url = json.loads(text).get("url", "") if text else ""
    except Exception:
        return None
    if not url.startswith("file://"):
        return None
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))


def _install_dirs() -> list:
    """Where this package comes from: the checkout it was installed from, and its own location (a
    source tree, or a virtual environment inside a checkout such as the repository's .venv)."""
    dirs = [_source_checkout(), Path(__file__).resolve().parent]
    return [d for d in dirs if d is not None]


def _search_dirs(near=()) -> list:
    """The directories whose build/server/lesiond find_lesiond tries, in order: the package's
    checkout and location, then ``near`` (the model's path), then the current directory, each with
    all its parents."""
    starts = list(_install_dirs())
    for n in near:
        try:
            p = Path(os.fspath(n)).expanduser()
            if p.exists():
                starts.append(p.resolve())
        except (TypeError, OSError):
            continue
    starts.append(Path.cwd())
    dirs = []
    for start in starts:
        for d in (start, *start.parents):
            if d not in dirs:
                dirs.append(d)
    return dirs


def find_lesiond(explicit=None, near=()) -> Path:
    """The lesiond binary, the first of: ``explicit``; $LESIOND; lesiond on PATH; build/server/lesiond
    (what `make` builds) in a lesion checkout at or above the one this package was installed from,
    the package itself, any path of ``near`` (Client.local passes the model's), or the current
    directory. LesionError saying how to get lesiond when none is found."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise LesionError(None, f"lesiond binary not found at {p}; {HOW_TO_GET}", rpc="local")
        return p
    if os.environ.get(ENV_BINARY):
        p = Path(os.environ[ENV_BINARY])
        if not p.is_file():
            raise LesionError(None, f"${ENV_BINARY}={p}: no such file; {HOW_TO_GET}", rpc="local")
        return p
    on_path = shutil.which("lesiond")
    if on_path:
        return Path(on_path)
    for d in _search_dirs(near):
        c = d / BUILT_AT
        if c.is_file() and os.access(c, os.X_OK):
            return c
    starts = ", ".join(str(d) for d in [*_install_dirs(), *near, Path.cwd()])
    raise LesionError(
        None,
        f"lesiond not found: no lesiond=PATH, ${ENV_BINARY} unset, none on PATH, and no {BUILT_AT} at or above "
        f"{starts}. {HOW_TO_GET}.",
        rpc="local",
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's choice), for a lesiond to listen on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_reference(model) -> tuple:
    """(name, reference) for ``--model NAME=REF``. An existing path is resolved and named by its
    basename; otherwise ``org/name[@revision][/FILE]`` goes to lesiond unchanged (lesiond looks it up
    in its Hugging Face cache, common/model_path.h) and is named ``name``. LesionError for anything
    else that does not exist."""
    text = os.fspath(model)
    path = Path(text)
    if path.exists():
        resolved = path.resolve()
        # A GGUF file is named without its extension ("SmolLM2-135M-Instruct.Q4_1").
        return (resolved.stem if resolved.is_file() else resolved.name), str(resolved)
    if "/" in text and not text.startswith(("/", ".", "~")):
        return re.split(r"[@/]", text.split("/", 1)[1], maxsplit=1)[0], text
    raise LesionError(
        None, f"model directory not found: {text} (nor is it a Hugging Face model id org/name[@revision])", rpc="local"
    )


def build_command(binary, model, port, db, extra_args=(), name=None):
    """lesiond's command line: ``lesiond --listen 127.0.0.1:PORT --db DB --model NAME=REF [extra_args]``,
    NAME being ``name`` or ``model_reference(model)``'s."""
    default_name, reference = model_reference(model)
    name = name or default_name
    return [
        str(binary),
        FLAG_LISTEN,
        f"127.0.0.1:{port}",
        FLAG_DB,
        str(db),
        FLAG_MODEL,
        f"{name}={reference}",
        *map(str, extra_args),
    ]


class _Process:
    """The subprocess, a thread draining its output (kept: the last lines, for error messages)."""

    def __init__(self, cmd, env=None):
        self.cmd = cmd
        self.lines = collections.deque(maxlen=200)
        self.ready = threading.Event()
        self.address = None
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
        )
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if not self.ready.is_set() and READY_LINE in line:
                self.address = line.split(READY_LINE, 1)[1].strip() or None
                self.ready.set()
        self.ready.set()  # EOF: the process ended

    def log(self, n=40):
        return "\n".join(list(self.lines)[-n:])

    def stop(self, timeout=10.0):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join(timeout=2.0)


class LocalClient(Client):
    """A Client that owns its lesiond: close() (or the with-block, or interpreter exit) stops the
    process. ``model`` is the name the model is served under (use it as ``Experiment(model=...)``),
    ``process`` the subprocess and ``log`` its last output."""

    def __init__(self, address, process, model, tmpdir=None, **kwargs):
        super().__init__(address, **kwargs)
        self.process = process
        self.model = model
        self._tmpdir = tmpdir
        self._finalizer = weakref.finalize(self, _cleanup, process, tmpdir)

    def __repr__(self):
        return f"<lesion.LocalClient {self.address} model {self.model!r} pid {self.process.proc.pid}>"

    @property
    def log(self):
        """The last 200 lines lesiond printed (stdout and stderr), for a failure's story."""
        return self.process.log(200)

    def close(self):
        """Close the channel and stop lesiond (SIGTERM, then SIGKILL after 10 s); its temporary
        database goes with it unless ``db=`` was given."""
        try:
            super().close()
        finally:
            self._finalizer()


def _cleanup(process, tmpdir):
    process.stop()
    if tmpdir is not None:
        tmpdir.cleanup()


def start_local(
    model_dir,
    port=None,
    db=None,
    lesiond=None,
    extra_args=(),
    startup_timeout=STARTUP_TIMEOUT,
    env=None,
    name=None,
    **client_kwargs,
) -> LocalClient:
    """``Client.local``: start lesiond on 127.0.0.1 (``port`` or a free one) serving ``model_dir`` as
    ``name`` (letters, digits, ``_``, ``-``, ``.``; default ``model_reference``'s), with the database
    ``db`` (default: a temporary file, removed at close), the binary ``find_lesiond(lesiond)`` finds
    and ``extra_args`` (more lesiond flags, e.g. ``["--device", "cuda:0"]``) in the environment
    ``env``; wait up to ``startup_timeout`` seconds for it to load the model and listen, and return a
    LocalClient (``client_kwargs``: ``Client``'s, e.g. ``token=``). LesionError with lesiond's last
    output lines if it exits or does not get ready."""
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[\w.\-]+", name)):
        raise LesionError(None, f"model name {name!r}: use letters, digits, '_', '-' and '.'", rpc="local")
    name = name or model_reference(model_dir)[0]
    binary = find_lesiond(lesiond, near=[model_dir] if isinstance(model_dir, (str, os.PathLike)) else [])
    tmpdir = None
    if db is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="lesion-local-")
        db = Path(tmpdir.name) / "lesion.db"
    port = port or free_port()
    cmd = build_command(binary, model_dir, port, db, extra_args, name=name)
    process = _Process(cmd, env=env)
    try:
        if not process.ready.wait(startup_timeout):
            raise LesionError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"lesiond did not print '{READY_LINE}' within {startup_timeout}s: {' '.join(cmd)}\n{process.log()}",
                rpc="local",
            )
        if process.address is None:  # output ended before the ready line: the process exited
            try:
                rc = process.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                rc = "unknown (closed its output)"
            raise LesionError(
                grpc.StatusCode.UNAVAILABLE,
                f"lesiond exited with status {rc} before '{READY_LINE}': {' '.join(cmd)}\n{process.log()}",
                rpc="local",
            )
    except BaseException:
        _cleanup(process, tmpdir)
        raise
    printed = process.address.split()[0] if process.address and process.address.split() else ""
    address = printed if re.match(r"^[\w.\-\[\]]+:\d+$", printed) else f"127.0.0.1:{port}"
    client = LocalClient(address, process, name, tmpdir=tmpdir, **client_kwargs)
    _LIVE.add(client)
    return client


_LIVE = weakref.WeakSet()


@atexit.register
def _stop_all():
    for c in list(_LIVE):
        try:
            c.close()
        except Exception:
            pass
