"""The SDK's logging options, shared by every command.

``--verbose``, ``--quiet``, ``--silent``, ``--debug[=<level>]``, ``--debug1/2/3``, ``--log-mask``,
``--log-file``, ``--log-dir`` and ``--log-file-include-hostname`` are taken out of the command line
wherever they stand, before the command's own options are parsed; so every ``opendlc`` subcommand and
every drop-in SDK command accepts them.  Messages go to stderr through the ``opendlc`` logger;
a log file is written when any of the file options or a debug level is given.
"""

from __future__ import annotations

import logging
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from opendlc.errors import UsageError

LOGGER = "opendlc"
VERBOSE = 15
DEBUG2 = 9
DEBUG3 = 8
logging.addLevelName(VERBOSE, "VERBOSE")
logging.addLevelName(DEBUG2, "DEBUG2")
logging.addLevelName(DEBUG3, "DEBUG3")

# --log-mask level names (the SDK's, with plain ones as aliases)
MASK_LEVELS = {
    "USER_ERROR": logging.ERROR,
    "ERROR": logging.ERROR,
    "FATAL": logging.CRITICAL,
    "USER_WARNING": logging.WARNING,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "USER_INFO": logging.INFO,
    "INFO": logging.INFO,
    "USER_VERBOSE": VERBOSE,
    "VERBOSE": VERBOSE,
    "DEBUG": logging.DEBUG,
    "DEBUG1": logging.DEBUG,
    "DEBUG2": DEBUG2,
    "DEBUG3": DEBUG3,
}
_DEBUG_LEVELS = {1: logging.DEBUG, 2: DEBUG2, 3: DEBUG3}


@dataclass
class LogSettings:
    verbose: bool = False
    quiet: bool = False
    silent: bool = False
    debug: str | None = None
    debug1: bool = False
    debug2: bool = False
    debug3: bool = False
    log_mask: str | None = None
    log_file: str | None = None
    log_dir: str | None = None
    log_file_include_hostname: bool = False

    def debug_level(self) -> int | None:
        if self.debug3:
            return 3
        if self.debug2:
            return 2
        if self.debug1:
            return 1
        if self.debug is None:
            return None
        try:
            level = int(self.debug)
        except ValueError:
            raise UsageError(f"--debug takes a level 0..3, not '{self.debug}'") from None
        if not 0 <= level <= 3:
            raise UsageError(f"--debug takes a level 0..3, not {level}")
        return level or None

    def console_level(self) -> int:
        debug = self.debug_level()
        if debug:
            return _DEBUG_LEVELS[debug]
        if self.silent:
            return logging.CRITICAL
        if self.quiet:
            return logging.WARNING
        if self.verbose:
            return VERBOSE
        return logging.INFO


class _State:
    settings = LogSettings()


state = _State()


def debug_enabled() -> bool:
    return bool(state.settings.debug_level())


def parse_log_mask(mask: str) -> list[tuple[re.Pattern[str], int]]:
    """``".*=USER_ERROR, NDK=DEBUG2"`` -> [(area pattern, level)]; later entries win."""
    rules = []
    for part in mask.split(","):
        part = part.strip()
        if not part:
            continue
        area, sep, level = part.partition("=")
        if not sep or level.strip().upper() not in MASK_LEVELS:
            raise UsageError(
                f"--log-mask: '{part}' is not AREA=LEVEL with LEVEL one of {', '.join(sorted(MASK_LEVELS))}"
            )
        try:
            rules.append((re.compile(area.strip()), MASK_LEVELS[level.strip().upper()]))
        except re.error as e:
            raise UsageError(f"--log-mask: bad area pattern '{area.strip()}' ({e})") from None
    return rules


class _MaskFilter(logging.Filter):
    """Per-area levels: the area of ``opendlc.quant.calibrate`` is ``quant.calibrate``."""

    def __init__(self, rules: list[tuple[re.Pattern[str], int]], default: int) -> None:
        super().__init__()
        self.rules, self.default = rules, default

    def filter(self, record: logging.LogRecord) -> bool:
        area = record.name[len(LOGGER) + 1 :] if record.name.startswith(LOGGER + ".") else record.name
        level = self.default
        for pattern, lvl in self.rules:
            if pattern.fullmatch(area) or pattern.fullmatch(area.split(".")[0]):
                level = lvl
        return record.levelno >= level


def log_file_path(settings: LogSettings, prog: str) -> Path | None:
    wanted = (
        settings.log_file or settings.log_dir or settings.log_file_include_hostname or settings.debug_level()
    )
    if not wanted:
        return None
    name = Path(settings.log_file or f"{prog}.log")
    if settings.log_file_include_hostname:
        name = name.with_name(f"{name.stem}_{socket.gethostname()}{name.suffix or '.log'}")
    folder = (
        Path(settings.log_dir) if settings.log_dir else (name.parent if name.parent != Path() else Path("."))
    )
    return folder / name.name


def configure_logging(settings: LogSettings, prog: str) -> None:
    state.settings = settings
    level = settings.console_level()
    rules = parse_log_mask(settings.log_mask) if settings.log_mask else []
    logger = logging.getLogger(LOGGER)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(1)
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(
        logging.Formatter(
            f"{prog}: %(message)s"
            if level >= logging.INFO
            else f"{prog}: %(levelname)s %(name)s: %(message)s"
        )
    )
    console.addFilter(_MaskFilter(rules, level))
    logger.addHandler(console)
    path = log_file_path(settings, prog)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(path, encoding="utf-8")
        except OSError as e:
            raise UsageError(f"{path}: cannot write the log file ({e.strerror})") from None
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh.addFilter(_MaskFilter(rules, min(level, logging.DEBUG)))
        logger.addHandler(fh)


_FLAGS = {
    "--verbose": "verbose",
    "--quiet": "quiet",
    "--silent": "silent",
    "--debug1": "debug1",
    "--debug2": "debug2",
    "--debug3": "debug3",
    "--log-file-include-hostname": "log_file_include_hostname",
}
_VALUED = {"--log-mask": "log_mask", "--log-file": "log_file", "--log-dir": "log_dir"}

HELP = """Logging options (every command, anywhere on the line):
  --verbose / --quiet / --silent   more, fewer, or only fatal messages
  --debug[=LEVEL]                  debug messages (level 1-3) and tracebacks; --debug1/2/3 likewise
  --log-mask=MASK                  per-area levels, e.g. ".*=USER_ERROR, quant=DEBUG2"
  --log-file=FILE, --log-dir=DIR   where the debug log file is written
  --log-file-include-hostname      append this host's name to the log file name"""


def split_log_args(argv: list[str]) -> tuple[LogSettings, list[str]]:
    """Take the logging options out of ``argv`` (wherever they are); return them and the rest."""
    settings = LogSettings()
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in _FLAGS:
            setattr(settings, _FLAGS[arg], True)
        elif name in _VALUED:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"{name} needs a value")
                i += 1
                value = argv[i]
            setattr(settings, _VALUED[name], value)
        elif name == "--debug":
            if not eq:  # "--debug" alone, or followed by a level
                value = "1"
                if i + 1 < len(argv) and argv[i + 1].isdigit():
                    i += 1
                    value = argv[i]
            settings.debug = value
        else:
            rest.append(arg)
        i += 1
    settings.debug_level()  # validate now: one line, exit 2
    return settings, rest
