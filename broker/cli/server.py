"""``broker dev``, ``broker serve``, ``broker migrate``."""

from __future__ import annotations

import argparse
import gc
import logging
import shlex
import signal
import socket
import sys
import threading
from pathlib import Path

from broker.errors import BrokerError, InvalidInput, LogIntegrityError
from broker.runtime import oplog
from broker.settings import BrokerSettings, accounts_configured, load_settings


def register(subparsers) -> None:
    dev = subparsers.add_parser("dev", help="run a development broker (SQLite, FAKE local AWS, demo templates)")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--scopes", type=Path, default=Path("scopes"))
    dev.add_argument("--state-dir", type=Path, default=Path(".broker"))
    dev.add_argument("--aws-port", type=int, default=4566, help="port for the in-process fake AWS (moto)")
    dev.set_defaults(func=run_dev)

    serve = subparsers.add_parser("serve", help="run the broker (configuration from BROKER_* and BROKER_CONFIG_FILE)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=None,
                       help="broker processes behind the one port, sharing one PostgreSQL database "
                            "(default BROKER_WORKERS or 1; SQLite: 1 only)")
    serve.set_defaults(func=run_serve)

    migrate_cmd = subparsers.add_parser("migrate", help="apply database migrations and exit")
    migrate_cmd.set_defaults(func=run_migrate)


def _checkpoint_loop(container, stop: threading.Event, every_seconds: float = 60.0) -> None:
    audit = container.audit
    revocations = container.revocations
    # The reviewers' cache of closed blocks: caught up now (a log older than the cache, or blocks whose fill
    # failed), then at every sweep; on its own thread (minutes on a large log), calls coalesce.
    container.aggregates_fill()
    while not stop.wait(every_seconds):
        container.aggregates_fill()
        try:
            # Counts of suppressed refusals whose window is over and that no later refusal carried
            # (before the checkpoint, so it covers them).
            container.service.flush_suppressed_refusals()
            container.templates.write_pending()   # a start-up's templates_loaded entry the database refused
            try:
                audit.checkpoint()
            except LogIntegrityError:
                pass  # a refusal to sign has raised its alarm already; expiry and revocation go on
            container.service.expire_stale()
            # Orphaned mint intents are revoked; expired revocations drop out of the deny policies (not while
            # IAM is failing: the sweep backs off).
            revocations.sweep()
        except Exception:  # noqa: BLE001 - a background sweep must not die
            logging.getLogger("broker").warning("periodic checkpoint/expiry sweep failed", exc_info=True)


def _run(container, host: str, port: int, banner: str | None = None, after_start=None,
         bound: socket.socket | None = None) -> int:
    import uvicorn

    from broker.api.app import create_app, server_config

    app = create_app(container)
    stop = threading.Event()
    sweeper = threading.Thread(target=_checkpoint_loop, args=(container, stop), daemon=True)
    sweeper.start()
    config = server_config(app, host=host, port=port)
    server = uvicorn.Server(config)
    if banner:
        print(banner, flush=True)
    if after_start is not None:
        def _when_started() -> None:
            while not server.started and not server.should_exit:
                stop.wait(0.05)
            if server.started:
                after_start()

        threading.Thread(target=_when_started, daemon=True).start()
    # NOTE: what start-up loaded (the IAM action database alone is ~150,000 objects) lives as long as
    # the process: freeze it out of the cyclic GC, whose full collections would otherwise walk it
    # all (tens of milliseconds) in the middle of some request.
    gc.collect()
    gc.freeze()
    if threading.current_thread() is threading.main_thread():
        # NOTE: on SIGTERM (how an orchestrator stops a replica) uvicorn stops serving, restores the handler
        # it found and raises SIGTERM again; with the default handler that kills the process before the
        # shutdown work below.  A handler that does nothing lets server.run() return instead.
        signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
        install_reload_on_sighup(container)
    try:
        server.run(sockets=[bound] if bound is not None else None)
    finally:
        _shut_down(container, stop, sweeper)
    return 0


def install_reload_on_sighup(container) -> None:
    """``kill -HUP``: reload the template folder (on a thread: a handler must not do the work), atomically;
    a folder that fails any check leaves the running catalog as it was (see broker.runtime.template_loading)."""
    templates = container.templates
    if not hasattr(signal, "SIGHUP"):
        return

    def reload(_signum, _frame) -> None:
        threading.Thread(target=templates.reload, name="template-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, reload)


def _shut_down(container, stop: threading.Event, sweeper: threading.Thread) -> None:
    """After the server stopped: end the sweep, write what is still only in memory, finish the last checkpoint."""
    stop.set()
    # NOTE: a sweep under way may hold counts it took from the budget: let it write them before the last
    # flush (which would find nothing) and the process exit (which would lose them).
    sweeper.join(timeout=30)
    if sweeper.is_alive():
        logging.getLogger("broker").warning("the periodic sweep did not finish before shutdown")
    _write_suppressed_refusals(container)
    # A checkpoint a boundary asked for may still be signing on its background thread: let it finish.
    checkpointer = container.checkpointer
    if checkpointer is not None and not checkpointer.drain(timeout=10):
        logging.getLogger("broker").warning("the last log checkpoint did not finish before shutdown")


def _write_suppressed_refusals(container) -> None:
    """At shutdown: every count of suppressed refusals, open windows included, reaches the log."""
    try:
        container.service.flush_suppressed_refusals(close_open=True)
    except Exception:  # noqa: BLE001 - shutdown goes on; say what is lost
        left = container.service.refusal_budget.take_summaries()
        logging.getLogger("broker").error("suppressed refusals could not be logged at shutdown: %s", ", ".join(
            f"{s.principal_id}: {s.count} since {s.since.isoformat()}" for s in left) or "none", exc_info=True)


def run_serve(args: argparse.Namespace) -> int:
    from broker.api.deps import build_container

    settings = load_settings()
    workers = worker_count(settings, getattr(args, "workers", None))
    oplog.configure(settings.log_level, settings.log_format)
    host, port = args.host or settings.host, args.port or settings.port
    if workers > 1:
        return _serve_workers(settings, host, port, workers)
    container = build_container(settings)
    warn_about_sign_in(settings)
    warn_about_proxies(settings)
    return _run(container, host, port)


def worker_count(settings: BrokerSettings, flag: int | None) -> int:
    """How many ``broker serve`` processes: ``--workers``, else BROKER_WORKERS; more than one needs PostgreSQL."""
    from broker.storage.engine import is_sqlite

    workers = settings.workers if flag is None else flag
    if not 1 <= workers <= MAX_WORKERS:
        raise InvalidInput(f"--workers must be between 1 and {MAX_WORKERS}", code="invalid_workers", field="workers")
    if workers > 1 and is_sqlite(settings.database_url):
        # NOTE: SQLite has one writer at a time and its WAL is checkpointed by one process; several
        # processes would queue on its file lock for every unit of work (and time out under load).
        raise InvalidInput(f"--workers {workers} needs PostgreSQL (BROKER_DATABASE_URL): SQLite serves one "
                           "worker only", code="workers_need_postgresql", field="workers")
    return workers


# More processes than this on one node is a configuration mistake (each holds a connection pool).
MAX_WORKERS = 64


def _serve_workers(settings: BrokerSettings, host: str, port: int, workers: int) -> int:
    """``workers`` processes on one socket (broker.runtime.workers): migrated once, then each builds its own."""
    from broker.api.deps import build_container
    from broker.runtime.workers import bind_listener, supervise
    from broker.storage.engine import build_engine
    from broker.storage.migrations import migrate

    from broker.aws.action_database import default_action_knowledge

    warn_about_sign_in(settings)
    warn_about_proxies(settings)
    # Loaded once, before the fork: every worker shares its pages (the IAM action database is ~150,000 objects).
    default_action_knowledge()
    # NOTE: once, before any worker starts (each would otherwise race to migrate); the engine is
    # disposed before the fork, so no worker inherits a connection.
    engine = build_engine(settings.database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    try:
        listener = bind_listener(host, port)
    except OSError as exc:
        raise InvalidInput(f"cannot listen on {host}:{port} ({exc.strerror})", code="port_in_use",
                           field="port") from exc

    def serve(_number: int) -> int:
        try:
            container = build_container(settings, run_migrations=False)
        except BrokerError as exc:
            print(f"error [{exc.code}]: {exc.diagnostics()}", file=sys.stderr, flush=True)
            return 1
        return _run(container, host, port, bound=listener)

    try:
        return supervise(workers, serve)
    finally:
        listener.close()


def warn_about_proxies(settings: BrokerSettings) -> None:
    """uvicorn's FORWARDED_ALLOW_IPS is not read (BROKER_TRUSTED_PROXIES is): say so if it is set."""
    import os

    if os.environ.get("FORWARDED_ALLOW_IPS") and not settings.trusted_proxies:
        logging.getLogger("broker").warning(
            "FORWARDED_ALLOW_IPS is set but ignored: the broker believes X-Forwarded-For only from "
            "BROKER_TRUSTED_PROXIES (unset: the logged source_ip is the TCP peer's)")


def warn_about_sign_in(settings: BrokerSettings) -> None:
    """Say at start-up, as warnings, what is weak or broken in approver single sign-on and in the trusted
    workload-identity issuers (one accepting unregistered principals with nothing pinned)."""
    from broker.api.ui.oidc import sign_in_warnings
    from broker.identity.oidc import issuer_warnings, load_issuer_configs

    for warning in sign_in_warnings(settings):
        logging.getLogger("broker.ui.oidc").warning(warning)
    for warning in issuer_warnings(load_issuer_configs(settings.oidc_issuers_file)):
        logging.getLogger("broker.identity.oidc").warning(warning)


def run_migrate(_args: argparse.Namespace) -> int:
    from broker.storage.engine import build_engine
    from broker.storage.migrations import migrate

    migrate(build_engine(load_settings().database_url))
    print("database is at the latest schema")
    return 0


def prepare_dev(*, port: int, scopes: Path, state_dir: Path, aws_port: int):
    """Start fake AWS, seed it, build the container; returns (container, aws, keys)."""
    from broker.api.deps import build_container
    from broker.runtime.devmode import DEV_ACCOUNTS, ensure_signing_key, seed_aws, seed_principals, start_fake_aws

    # NOTE: the state folder holds the database, the keys and the signing key: its user's alone.
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    aws = start_fake_aws(aws_port)
    private, _public = ensure_signing_key(state_dir)
    settings = load_settings(
        database_url=f"sqlite:///{(state_dir / 'broker.db').resolve()}", scopes_dir=scopes.resolve(),
        aws_endpoint_url=aws.endpoint_url, signing_key_file=private, public_url=f"http://127.0.0.1:{port}",
        port=port, dev_mode=True, state_dir=state_dir)
    if not accounts_configured(settings):
        settings = settings.model_copy(update={"accounts": DEV_ACCOUNTS})
    container = build_container(settings)
    seed_aws(aws.endpoint_url, container.catalog, settings.aws_region)
    keys = seed_principals(container.database, state_dir / "dev-keys.json")
    return container, aws, keys


def _broker_command() -> str:
    """How to call `broker` from another shell (the venv's script, when not on PATH)."""
    import shutil
    import sys

    script = Path(sys.executable).parent / "broker"
    return "broker" if shutil.which("broker") == str(script) else str(script)


def bind_dev_port(port: int) -> socket.socket:
    """The API's socket on 127.0.0.1:``port``, bound before anything is printed or written (a busy port fails first)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # NOTE: accepted connections inherit this (uvicorn sets it only on sockets it binds itself).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise InvalidInput(f"port {port} on 127.0.0.1 is in use (another broker dev?): stop it, or pass --port N",
                           code="port_in_use", field="port") from exc
    return sock


def try_lines(*, url: str, aws_endpoint: str, region: str, state_dir: Path) -> list[str]:
    """Commands for a second terminal, complete and quoted: they work pasted as printed, from any directory."""
    from broker.runtime.devmode import token_file

    state = state_dir.resolve()
    exports = {"BROKER_URL": url, "BROKER_TOKEN_FILE": str(token_file(state, "agent:demo")),
               "AWS_ENDPOINT_URL": aws_endpoint, "AWS_REGION": region}
    broker = shlex.quote(_broker_command())
    lines = [
        "  try, in a second terminal:",
        "    export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in exports.items()),
        f"    {broker} demo --keys {shlex.quote(str(state / 'dev-keys.json'))}"
        "    # the seed incident, replayed against this broker",
    ]
    aws = Path(sys.executable).parent / "aws"
    if aws.exists():
        lines.append(f"    {broker} exec s3-read-prefix -p prefix=reports --reason 'try it' -- "
                     f"{shlex.quote(str(aws))} s3 ls s3://broker-demo-bucket/reports/")
    return lines


def run_dev(args: argparse.Namespace) -> int:
    from broker.runtime.devmode import self_check

    bound = bind_dev_port(args.port)
    try:
        oplog.configure("INFO", "text")
        container, aws, keys = prepare_dev(port=args.port, scopes=args.scopes, state_dir=args.state_dir,
                                            aws_port=args.aws_port)
    except BaseException:
        bound.close()
        raise
    state = args.state_dir
    url = f"http://127.0.0.1:{args.port}"
    banner = "\n".join([
        "broker dev: a DEVELOPMENT broker (FAKE AWS: moto in-process; nothing here is a real credential)",
        f"  API:              {url}   (OpenAPI: {url}/docs)",
        f"  approver page:    {url}/ui/",
        f"  templates:        {len(container.catalog)} from {args.scopes}",
        f"  keys:             {state / 'dev-keys.json'} and {state / 'tokens'}/  (agent:demo acts for human:alice;"
        " alice/bob/carol approve; rita reviews; root and ops are admins)",
        f"  log public key:   {state / 'log-public-key.pem'}",
        f"  AWS_ENDPOINT_URL={aws.endpoint_url}",
        "",
        *try_lines(url=url, aws_endpoint=aws.endpoint_url, region=container.settings.aws_region, state_dir=state),
    ])

    def check() -> None:
        try:
            lines = self_check(url=url, agent_key=keys["agent:demo"], aws_endpoint=aws.endpoint_url)
        except Exception as exc:  # noqa: BLE001 - the self-check reports, it does not crash the broker
            lines = [f"self-check FAILED: {exc.__class__.__name__}"]
        print("\n".join(lines), flush=True)

    try:
        return _run(container, "127.0.0.1", args.port, banner, after_start=check, bound=bound)
    finally:
        aws.stop()
