"""Real services for the operations tests: a throwaway PostgreSQL server (the decision log's
database), Debian's Prometheus scraping given addresses (the app's /metrics) and Debian's nginx
in front of given replicas (deploy/nginx.conf). Plain context managers, so fixtures, benchmarks
and an interactive session can all use them; `make test` installs the three packages
(`make postgresql prometheus nginx`)."""
from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import yaml

from benchmarks.served import free_port


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no log)"


def postgres_bin() -> Path:
    """The bin folder of the newest PostgreSQL Debian installed (/usr/lib/postgresql/<version>/bin),
    since Debian keeps initdb and pg_ctl off PATH."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if not found:
        raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run `make postgresql`")
    return max(found, key=lambda b: tuple(int(n) for n in re.findall(r"\d+", b.parent.name)))


class PostgresServer:
    """One PostgreSQL server of its own: trust authentication, TCP on 127.0.0.1 only, database `skinlesion`.

    PostgreSQL refuses to run as root, so under root the server runs as Debian's `postgres` user; its
    files then live in a private folder under the system temp folder, because pytest's temp root is
    mode 0700 and the `postgres` user cannot reach it. Unix sockets are off (unix_socket_directories
    = ''): nothing here needs them, Debian's default folder is not writable by other users, and a
    socket path inside a deep pytest folder can pass the 107-byte limit. The server's output goes to
    `log`, inside `base` in every case (opened here and inherited by the server)."""

    def __init__(self, base: Path):
        self.bin = postgres_bin()
        self.port = free_port()
        self.log = base / "postgres.log"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            try:
                owner = pwd.getpwnam(self.user)
            except KeyError:
                raise RuntimeError("running as root, but there is no `postgres` user to run PostgreSQL as") from None
            self.home = Path(tempfile.mkdtemp(prefix="skinlesion-postgres-"))
            os.chown(self.home, owner.pw_uid, owner.pw_gid)
        else:
            self.home = base / "postgres"
            self.home.mkdir(parents=True)
        self.data = self.home / "pgdata"
        self.running = False

    @property
    def url(self) -> str:
        """An SQLAlchemy URL of the `skinlesion` database (psycopg 3)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/skinlesion"

    def _run(self, tool: str, *args: str, as_server: bool = True, timeout: float = 120) -> None:
        command = [str(self.bin / tool), *args]
        if as_server and self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        with self.log.open("a") as log:
            result = subprocess.run(command, cwd=self.home, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}); "
                               f"server log {self.log}:\n{_tail(self.log)}")

    def init(self) -> None:
        """A new cluster on this port, for tests only: fsync off, which an immediate stop (a crash of
        the server, not of the machine) does not need. Commits stay synchronous: an asynchronous
        commit's WAL can still be in the server's memory when it dies, and the row is lost."""
        self._run("initdb", "-D", str(self.data), "--username=postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C")
        with (self.data / "postgresql.conf").open("a") as conf:  # appending keeps the postgres user's ownership
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                       "fsync = off\n")

    def start(self, timeout: float = 60) -> None:
        """Start (again) on the same port and data; returns once it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", str(int(timeout)), "start", timeout=timeout + 30)
        self.running = True
        self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                  "-t", str(int(timeout)), as_server=False)

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server: by default at once, without a checkpoint, as a database that dies mid-run."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")
        self.running = False


@contextlib.contextmanager
def postgres_server(base: Path) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server with database `skinlesion`, stopped on exit. Under root its
    private folder is removed on exit too; nothing in `base` (the caller's) is removed."""
    Path(base).mkdir(parents=True, exist_ok=True)
    server = PostgresServer(Path(base))
    try:
        server.init()
        server.start()
        server._run("createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "skinlesion",
                    as_server=False)
        yield server
    finally:
        try:
            if server.running:
                server.stop("fast")
        finally:
            if server.user:
                shutil.rmtree(server.home, ignore_errors=True)


class PrometheusServer:
    """Debian's `prometheus`, on 127.0.0.1 and a free port, read through its HTTP API."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log

    def api(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus /api/v1/{path}: {body}")
        return body["data"]

    def query(self, promql: str) -> list:
        """An instant query's result: [{"metric": {...}, "value": [time, "value"]}, ...]."""
        return self.api("query", query=promql)["result"]

    def targets(self) -> list[dict]:
        """The active scrape targets, each with scrapeUrl, health ("up", "down", "unknown") and lastError."""
        return self.api("targets", state="active")["activeTargets"]

    def wait_for_scrape(self, timeout: float = 30) -> list[dict]:
        """Until every active target's last scrape succeeded; RuntimeError with each target's last error."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.targets()
            if targets and all(t["health"] == "up" for t in targets):
                return targets
            if time.monotonic() > deadline:
                states = "; ".join(f"{t['scrapeUrl']}: {t['health']} {t['lastError']!r}" for t in targets)
                raise RuntimeError(f"Prometheus did not scrape every target within {timeout:.0f} s: "
                                   f"{states or 'no active targets'}")
            time.sleep(0.2)


def scrape_config(config: Path, targets: list[str], interval: str = "1s") -> dict:
    """The project's scrape config with each job pointed at `targets` and scraped every `interval`,
    so that a test sees a scrape within a second or two instead of the deployed 15 s."""
    settings = yaml.safe_load(Path(config).read_text())
    settings.setdefault("global", {}).update(scrape_interval=interval, evaluation_interval=interval)
    settings["global"].pop("scrape_timeout", None)  # defaults to the interval when shorter than 10 s
    for job in settings["scrape_configs"]:
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        job["static_configs"] = [{"targets": list(targets)}]
    return settings


@contextlib.contextmanager
def prometheus_server(base: Path, targets: list[str], config: Path,
                      timeout: float = 60) -> Iterator[PrometheusServer]:
    """Prometheus scraping `targets` with the jobs of `config`, its storage and log in `base`;
    yields once /-/ready answers, stops the process on exit."""
    binary = shutil.which("prometheus")
    if not binary:
        raise RuntimeError("Prometheus is not installed (no `prometheus` on PATH): run `make prometheus`")
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    written = base / "prometheus.yml"
    written.write_text(yaml.safe_dump(scrape_config(config, targets), sort_keys=False))
    port, log = free_port(), base / "prometheus.log"
    with log.open("w") as out:
        process = subprocess.Popen([binary, f"--config.file={written}", f"--storage.tsdb.path={base / 'tsdb'}",
                                    f"--web.listen-address=127.0.0.1:{port}"],
                                   cwd=base, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited ({process.returncode}):\n{_tail(log)}")
            try:
                urllib.request.urlopen(f"{server.url}/-/ready", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"prometheus was not ready within {timeout:.0f} s:\n{_tail(log)}") from None
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def nginx_binary() -> str:
    """Debian's nginx: on PATH, or in /usr/sbin (off a non-root user's PATH on Debian)."""
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if not binary:
        raise RuntimeError("nginx is not installed (no `nginx` on PATH or in /usr/sbin): run `make nginx`")
    return binary


class Proxy:
    """An nginx in front of some replicas: `url` (with a trailing slash, as running_app's), its
    master `process`, the config it runs (`config`) and its logs."""

    def __init__(self, url: str, process: subprocess.Popen, config: Path, error_log: Path, access_log: Path):
        self.url, self.process, self.config = url, process, config
        self.error_log, self.access_log = error_log, access_log

    def requests(self) -> list[dict]:
        """The access log so far, one dict per request: client (after X-Forwarded-For from a
        trusted peer), method, path, status and upstream (the replica, "host:port"; "-" when the
        proxy answered itself). Reads deploy/nginx.conf's `skinlesion` log format."""
        pattern = re.compile(r'^(\S+) \[[^]]*\] "(\S+) (\S+)[^"]*" (\d+) \d+ upstream=(\S+)')
        found = (pattern.match(line) for line in self.access_log.read_text(errors="replace").splitlines())
        return [dict(zip(("client", "method", "path", "status", "upstream"), m.groups())) for m in found if m]


_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def proxy_config(text: str, upstreams: list[str], port: int, logs: Path, temp: Path) -> str:
    """deploy/nginx.conf's text with its upstream's servers → `upstreams`, every listen →
    127.0.0.1:`port`, pid and logs → `logs`, temp folders → `temp`; `daemon off;` added if missing."""
    block = re.search(r"upstream\s+skinlesion\s*\{[^}]*\}", text)
    if not block:
        raise ValueError("no `upstream skinlesion { ... }` block in the nginx config")
    servers = re.compile(r"^([ \t]*)server\s+[^;]+;[ \t]*(#.*)?\n", re.M)
    first = servers.search(block.group())
    if not first:
        raise ValueError("the upstream block lists no server")
    listed = "".join(f"{first.group(1)}server {address};\n" for address in upstreams)
    rewritten = servers.sub(lambda m: listed if m.start() == first.start() else "", block.group())
    text = text[:block.start()] + rewritten + text[block.end():]
    replaced = [
        (r"^(\s*)listen\s+[^;]+;", lambda m: f"{m.group(1)}listen 127.0.0.1:{port};"),
        (r"^(\s*)pid\s+[^;]+;", lambda m: f"{m.group(1)}pid {logs / 'nginx.pid'};"),
        (r"^(\s*)error_log\s+\S+?(\s+\w+)?;",
         lambda m: f"{m.group(1)}error_log {logs / 'error.log'}{m.group(2) or ''};"),
        (r"^(\s*)access_log\s+\S+?(\s+[^;]+)?;",
         lambda m: f"{m.group(1)}access_log {logs / 'access.log'}{m.group(2) or ''};"),
        (r"^(\s*)(\w+)_temp_path\s+[^;]+;", lambda m: f"{m.group(1)}{m.group(2)}_temp_path {temp / m.group(2)};"),
    ]
    for pattern, replacement in replaced:
        text, n = re.subn(pattern, replacement, text, flags=re.M)
        if not n:
            raise ValueError(f"the nginx config has no directive matching {pattern!r}")
    missing = [name for name in _TEMP_PATHS if f"{name}_temp_path" not in text]
    if missing:  # each would fall back to Debian's /var/lib/nginx, which a test must not touch
        raise ValueError(f"the nginx config sets no {', '.join(missing)} temp path")
    if not re.search(r"^\s*daemon\s+off;", text, re.M):
        text = "daemon off;\n" + text
    return text


@contextlib.contextmanager
def nginx_proxy(base: Path, upstreams: list[str], config: Path, timeout: float = 30) -> Iterator[Proxy]:
    """nginx running `config` (deploy/nginx.conf) in front of `upstreams` ("host:port" each) on
    127.0.0.1 and a free port; its config, pid file and logs in `base`. Yields once the port
    accepts connections; stops nginx (fast shutdown: open streams are cut) on exit.

    Under root the master keeps the config's `user` for its workers (www-data on Debian), as
    deployed; they write request bodies (every upload larger than a few kB) into the temp folders,
    and cannot reach `base` when it is inside pytest's temp root (mode 0700). So under root the
    temp folders live in a private folder under the system temp folder, owned by that user and
    removed on exit. Otherwise nginx ignores `user` and the temp folders sit in `base`."""
    binary = nginx_binary()
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    text = Path(config).read_text()
    private = None
    if os.geteuid() == 0:
        named = re.search(r"^\s*user\s+(\S+?)(?:\s+(\S+))?\s*;", text, re.M)
        user, group = (named.group(1), named.group(2)) if named else ("nobody", None)
        try:
            owner = pwd.getpwnam(user)
        except KeyError:
            raise RuntimeError(f"running as root, but there is no `{user}` user for nginx's workers") from None
        gid = grp.getgrnam(group).gr_gid if group else owner.pw_gid
        private = Path(tempfile.mkdtemp(prefix="skinlesion-nginx-"))
        os.chown(private, owner.pw_uid, gid)
        temp = private
    else:
        temp = base / "nginx-temp"
        temp.mkdir(exist_ok=True)
    port = free_port()
    written = base / "nginx.conf"
    written.write_text(proxy_config(text, upstreams, port, base, temp))
    error_log, out_log = base / "error.log", base / "nginx.out"
    try:
        with out_log.open("w") as out:  # -e: the log of the start itself, before the config is read
            process = subprocess.Popen([binary, "-c", str(written), "-e", str(error_log)], cwd=base,
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        proxy = Proxy(f"http://127.0.0.1:{port}/", process, written, error_log, base / "access.log")
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"nginx exited ({process.returncode}):\n{_tail(out_log)}\n{_tail(error_log)}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"nginx did not listen within {timeout:.0f} s:\n"
                                           f"{_tail(error_log)}") from None
                    time.sleep(0.1)
            yield proxy
        finally:
            process.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        if private:
            shutil.rmtree(private, ignore_errors=True)
