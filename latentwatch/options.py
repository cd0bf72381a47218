"""What the commands of the command line share: exit codes, the one-line error, options from
the environment and a --config file, Kafka options, logging."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from common.errors import LatentwatchError

EXIT_USER_ERROR = 1
EXIT_USAGE = 2  # click's code for a command line it cannot parse
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


def fail(message: str) -> NoReturn:
    typer.echo(f"latentwatch: error: {message}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


def split_values(values: list[str] | None) -> tuple[str, ...]:
    """`--exclude a --exclude b` and `--exclude a,b` both work."""
    return tuple(v for item in values or () for v in item.split(",") if v)


def error_line(exc: Exception) -> tuple[str, int] | None:
    """What a user sees of an error they can act on (their input, their set-up, the file system,
    the database), as a message and an exit code; None for a bug, which keeps its traceback."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if isinstance(exc, LatentwatchError):
        return str(exc), EXIT_USER_ERROR
    if isinstance(exc, typer.TyperException):  # click's (vendored): `--fpr abc`, a missing option
        ctx = getattr(exc, "ctx", None)  # usage errors know their command
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return exc.format_message().rstrip(".") + hint, exc.exit_code
    if isinstance(exc, typer.Abort):  # end of input at a prompt
        return "aborted", EXIT_USER_ERROR
    if isinstance(exc, OperationalError | InterfaceError):  # unreachable, cannot open, locked
        return f"database unavailable: {exc.orig or exc}", EXIT_USER_ERROR
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}", EXIT_USER_ERROR
    return None


def env_var(name: str) -> str:
    return f"LATENTWATCH_{name}"


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # kafka-python narrates every reconnect at INFO/WARNING; our own lines say what matters.
    logging.getLogger("kafka").setLevel(max(logging.getLogger().level, logging.ERROR))
    logging.getLogger("alembic").setLevel(max(logging.getLogger().level, logging.WARNING))


def _load_config(ctx: typer.Context, value: Path | None) -> Path | None:
    """`--config FILE`: the command's options from the TOML table named after it (`[consume]`,
    `[api]`, `[db.prune]`; names as on the command line, `-` or `_`). The command line and
    `LATENTWATCH_*` variables win over the file, the file over the built-in defaults (click's
    default map)."""
    if value is None or ctx.resilient_parsing:
        return value
    try:
        document = tomllib.loads(value.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read config file {value}: {exc.strerror or exc}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        fail(f"config file {value} is not valid TOML: {exc}")
    path = [ctx.info_name or ""]
    if ctx.parent is not None and ctx.parent.parent is not None:  # a group's: [db.prune]
        path.insert(0, ctx.parent.info_name or "")
    command = ".".join(path)
    section: Any = document
    for name in path:
        section = section.get(name) if isinstance(section, dict) else None
    if not isinstance(section, dict):
        fail(f"config file {value} has no [{command}] table")
    params = {p.name: p for p in ctx.command.params if p.name and p.name != "config"}
    defaults: dict[str, Any] = {}
    for key, item in section.items():
        name = key.replace("-", "_")
        param = params.get(name)
        if param is None:
            known = ", ".join(sorted(n.replace("_", "-") for n in params))
            fail(f"config file {value}: [{command}] has no setting {key!r} (known: {known})")
        multiple = getattr(param, "multiple", False)
        defaults[name] = [item] if multiple and not isinstance(item, list) else item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar=env_var("CONFIG"),
        is_eager=True,
        callback=_load_config,
        help="TOML file with this command's options in a table named after it",
    ),
]


def parse_kafka_options(values: list[str] | None) -> dict[str, object]:
    """`--kafka-option security_protocol=SASL_SSL` -> {"security_protocol": "SASL_SSL"}; several
    may share one value separated by commas (`a=1,b=2`), and a comma not followed by a new
    `name=` stays in the value (`ssl_ciphers=A,B`). Each client gets the settings it knows,
    typed by kafka-python's defaults (streams.kafka.options_for); unknown names fail here."""
    from streams.kafka import check_options

    items: list[str] = []
    for value in values or ():
        for piece in value.split(","):
            if items and "=" not in piece:
                items[-1] += "," + piece
            elif piece:
                items.append(piece)
    options: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            fail(f"--kafka-option expects name=value, got {item!r}")
        options[name.strip()] = value.strip()
    check_options(options)
    return options
