"""The command line: subcommands from plugins, and the SDK's logging options anywhere on the line."""

from __future__ import annotations

import json
import socket

import pytest
from clirun import DIGITS, ok, one_line_error, run

MODEL = DIGITS / "model.onnx"

# messages convert gives at each level, with an overrides file naming one tensor the model lacks
VERBOSE_MSG = "read " + str(MODEL)
INFO_MSG = "imported 3 encodings from"
WARNING_MSG = "name tensors the model does not have: no_such_tensor"
DEBUG_MSG = "opendlc.container: "  # shown with the logger name at debug levels
DEBUG2_MSG = "member model.onnx, "
DEBUG3_MSG = "override relu1 (activation, from overrides)"


@pytest.fixture(scope="module")
def overrides(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "overrides.json"
    entry = {"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "min": 0.0, "max": 4.0}
    path.write_text(
        json.dumps(
            {
                "version": "0.6.1",
                "activation_encodings": {"relu1": [entry], "no_such_tensor": [entry]},
                "param_encodings": {"fc.weight": [{**entry, "min": -1.0, "max": 1.0}]},
            }
        )
    )
    return path


def convert(tmp_path, overrides, *logging_args: str, position: str = "end"):
    """``opendlc convert`` with the logging options at the start, in the middle or at the end."""
    core = [
        "convert",
        str(MODEL),
        "-o",
        str(tmp_path / "out.dlc"),
        "--quantization_overrides",
        str(overrides),
    ]
    if position == "start":
        args = [*logging_args, *core]
    elif position == "middle":
        args = [*core[:2], *logging_args, *core[2:]]
    else:
        args = [*core, *logging_args]
    return ok(run(*args, cwd=tmp_path))


def test_help_lists_the_built_in_commands_and_logging_options():
    out = ok(run("--help")).stdout
    for command in ("convert", "info", "plugins"):
        assert command in out
    for option in ("--verbose", "--quiet", "--silent", "--debug", "--log-mask", "--log-file", "--log-dir"):
        assert option in out
    assert ok(run("--version")).stdout.startswith("opendlc ")


@pytest.mark.parametrize("position", ["start", "middle", "end"])
@pytest.mark.parametrize(
    "option, shown, hidden",
    [
        (None, [INFO_MSG, WARNING_MSG], [VERBOSE_MSG, DEBUG_MSG]),
        ("--verbose", [VERBOSE_MSG, INFO_MSG, WARNING_MSG], [DEBUG_MSG]),
        ("--quiet", [WARNING_MSG], [VERBOSE_MSG, INFO_MSG]),
        ("--silent", [], [VERBOSE_MSG, INFO_MSG, WARNING_MSG]),
    ],
)
def test_console_levels_anywhere_on_the_line(tmp_path, overrides, option, shown, hidden, position):
    result = convert(tmp_path, overrides, *([option] if option else []), position=position)
    for msg in shown:
        assert msg in result.stderr, (option, msg)
    for msg in hidden:
        assert msg not in result.stderr, (option, msg)
    assert "wrote" in result.stdout  # the command's own output is not a log message
    assert not (tmp_path / "opendlc.log").exists()  # no log file unless asked (or debugging)


@pytest.mark.parametrize(
    "args, level",
    [
        (["--debug"], 1),
        (["--debug=1"], 1),
        (["--debug1"], 1),
        (["--debug", "2"], 2),
        (["--debug=2"], 2),
        (["--debug2"], 2),
        (["--debug=3"], 3),
        (["--debug3"], 3),
    ],
)
def test_debug_levels_show_more_detail_and_write_a_log_file(tmp_path, overrides, args, level):
    result = convert(tmp_path, overrides, *args, position="middle")
    expected = {DEBUG_MSG: 1, DEBUG2_MSG: 2, DEBUG3_MSG: 3}
    for msg, needed in expected.items():
        assert (msg in result.stderr) == (level >= needed), (args, msg)
    log = (tmp_path / "opendlc.log").read_text()  # debugging writes the log file too
    assert INFO_MSG in log and DEBUG_MSG in log


@pytest.mark.parametrize("bad", ["--debug=7", "--debug=high"])
def test_bad_debug_level_is_a_usage_error(tmp_path, bad):
    one_line_error(run("info", MODEL, bad, cwd=tmp_path), 2, "--debug takes a level 0..3")


def test_log_mask_sets_levels_per_area(tmp_path, overrides):
    # --quiet hides INFO everywhere, but the mask lets the convert area speak at INFO
    result = convert(tmp_path, overrides, "--quiet", "--log-mask", "convert=INFO")
    assert INFO_MSG in result.stderr
    # every area at USER_ERROR: the warning goes too
    result = convert(tmp_path, overrides, "--log-mask=.*=USER_ERROR")
    assert WARNING_MSG not in result.stderr and INFO_MSG not in result.stderr
    # one area at DEBUG2, the rest at the default level
    result = convert(tmp_path, overrides, "--log-mask", "container=DEBUG2", position="start")
    assert DEBUG2_MSG in result.stderr and DEBUG3_MSG not in result.stderr and INFO_MSG in result.stderr


@pytest.mark.parametrize("mask", ["convert", "convert=LOUD", "[=INFO"])
def test_bad_log_mask_is_a_usage_error(tmp_path, mask):
    one_line_error(run("info", MODEL, "--log-mask", mask, cwd=tmp_path), 2, "--log-mask")


def test_log_file_where_asked(tmp_path, overrides):
    convert(tmp_path, overrides, "--log-file", str(tmp_path / "run.log"), "--quiet")
    text = (tmp_path / "run.log").read_text()
    assert INFO_MSG in text and DEBUG_MSG in text  # the file keeps more than the quiet console
    convert(tmp_path, overrides, f"--log-file={tmp_path / 'eq.log'}", position="start")
    assert INFO_MSG in (tmp_path / "eq.log").read_text()


def test_log_dir_and_hostname(tmp_path, overrides):
    host = socket.gethostname()
    convert(tmp_path, overrides, "--log-dir", str(tmp_path / "logs"), position="start")
    assert INFO_MSG in (tmp_path / "logs" / "opendlc.log").read_text()

    convert(tmp_path, overrides, "--log-file-include-hostname", position="middle")
    assert INFO_MSG in (tmp_path / f"opendlc_{host}.log").read_text()

    convert(
        tmp_path,
        overrides,
        "--log-dir",
        str(tmp_path / "d2"),
        "--log-file",
        "run.log",
        "--log-file-include-hostname",
    )
    assert [p.name for p in (tmp_path / "d2").iterdir()] == [f"run_{host}.log"]


def test_unwritable_log_file_is_a_usage_error(tmp_path):
    (tmp_path / "a_file").write_text("x")
    target = tmp_path / "a_file" / "run.log"
    one_line_error(run("info", MODEL, "--log-file", target, cwd=tmp_path), 2, str(target), "log file")


def test_option_value_missing_is_a_usage_error(tmp_path):
    one_line_error(run("info", MODEL, "--log-file", cwd=tmp_path), 2, "--log-file needs a value")


def test_unknown_command_and_option_are_usage_errors(tmp_path):
    one_line_error(run("frobnicate", cwd=tmp_path), 2, "frobnicate")
    one_line_error(run("info", MODEL, "--no-such-option", cwd=tmp_path), 2, "--no-such-option")
