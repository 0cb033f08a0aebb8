"""The ``tt`` command: parse argv, dispatch, turn errors into one paragraph and an exit code.

Exit codes: 0 ok, 1 the run (or download) failed, 2 usage or config error, 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM). Set TT_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from tt_recipes.config import ConfigError
from tt_recipes.console import quiet_dependencies

from tt_cli import commands
from tt_cli.run import USAGE, RunFailed, add_run_parser, run_command

DESCRIPTION = """\
tt: post-train LLMs with PyTorch. Recipes are single files configured by YAML; every
config is validated against its recipe before any weights or data load.
"""
EPILOG = """\
exit codes: 0 ok, 1 run failure, 2 usage or config error, 130 interrupted (Ctrl-C),
143 terminated (SIGTERM). TT_DEBUG=1 shows tracebacks.

examples:
  tt ls
  tt cp tiny/lora ./my_lora.yaml
  tt validate ./my_lora.yaml --recipe lora_finetune optimizer.lr=1e-4
  tt run lora_finetune --config ./my_lora.yaml
  tt download meta-llama/Llama-3.2-1B --output-dir /models/llama3_2_1b
  tt plot outputs/run_a outputs/run_b -o compare.png
"""
OVERRIDES_HELP = "key.sub=value (YAML-typed), key=dotted.path (sets _component_), ~key (deletes)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tt`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="tt",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ls = sub.add_parser("ls", help="list recipes and their bundled configs")
    ls.description = "List recipes, their bundled configs and aliases; with RECIPE, its keys."
    ls.add_argument("recipe", nargs="?", help="show the config keys this recipe reads")
    ls.set_defaults(handler=commands.cmd_ls)

    cp = sub.add_parser("cp", help="copy a bundled config to edit it")
    cp.description = "Copy a bundled config (see `tt ls`) to a file or directory."
    cp.add_argument("config", help="bundled config name, e.g. tiny/lora")
    cp.add_argument("dest", help="destination file, or a directory to copy into")
    cp.add_argument("-f", "--force", action="store_true", help="overwrite an existing file")
    cp.set_defaults(handler=commands.cmd_cp)

    cat = sub.add_parser("cat", help="print a bundled config")
    cat.description = "Print a bundled config (or any YAML file)."
    cat.add_argument("config", help="bundled config name or YAML path")
    cat.set_defaults(handler=commands.cmd_cat)

    validate = sub.add_parser("validate", help="check a config without running anything")
    validate.description = (
        "Load a config, apply overrides and check it against its recipe: unknown keys, "
        "types, _component_ imports and their arguments. A bundled config knows its "
        "recipe; a YAML file needs --recipe. torchtune configs are read as they are."
    )
    validate.add_argument("config", help="bundled config name or YAML path")
    validate.add_argument("--recipe", help="recipe name, torchtune name or recipe .py path")
    validate.add_argument(
        "--skip-environment",
        action="store_true",
        help="check keys, values and components only, not this machine (files the config "
        "names, a CUDA device): for a config meant to run elsewhere",
    )
    validate.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    validate.set_defaults(handler=commands.cmd_validate)

    add_run_parser(sub)

    download = sub.add_parser("download", help="download a model from the Hugging Face Hub")
    download.description = (
        "Download every file of a hub repository into --output-dir (HF_ENDPOINT and "
        "HF_HUB_OFFLINE are honoured)."
    )
    download.add_argument("repo_id", help="e.g. meta-llama/Llama-3.2-1B")
    download.add_argument(
        "--output-dir",
        help="directory to download into (default: ./checkpoints/<name>, where tt's bundled "
        "configs look)",
    )
    download.add_argument("--revision", help="a branch, tag or commit (default: main)")
    download.add_argument("--hf-token", help="access token (default: $HF_TOKEN)")
    download.add_argument(
        "--ignore-patterns",
        nargs="+",
        default=None,
        metavar="GLOB",
        help="skip files matching these globs, e.g. 'original/*' '*.pth'",
    )
    download.set_defaults(handler=commands.cmd_download)

    plot = sub.add_parser("plot", help="draw runs' curves (loss, lr, tokens/s, rewards) to a PNG")
    plot.description = (
        "Read each run's metrics.jsonl and draw its curves into one PNG, runs overlaid "
        "(needs matplotlib: pip install 'tt-cli[plot]')."
    )
    plot.add_argument("runs", nargs="+", help="output_dir of a run (or its metrics.jsonl)")
    plot.add_argument("-o", "--output", help="the PNG to write (default: <first run>/curves.png)")
    plot.set_defaults(handler=commands.cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tt`` with ``argv`` (default: the process's arguments); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    quiet_dependencies()
    try:
        if argv[:1] == ["run"] and len(argv) > 1 and argv[1] not in ("-h", "--help"):
            return run_command(argv[1:])
        args, extra = parser.parse_known_args(argv)
        if args.command == "run":  # `tt run` with no recipe (--help exits in the parser)
            raise ConfigError(f"`tt run` needs a recipe and --config; usage: {USAGE}")
        if extra and args.command != "validate":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "validate":  # overrides after --recipe arrive as extras
            args.overrides = [*args.overrides, *extra]
        return args.handler(args)
    except ConfigError as e:
        return _report(f"tt: error: {e}", 2)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (see tt_recipes.interrupts)
        code = getattr(e, "exit_code", 130)
        if os.environ.get("RANK", "0") != "0":
            return code  # under torchrun rank 0 says it once
        return _report(f"tt: {e or 'interrupted'}", code)
    except RunFailed as e:
        if os.environ.get("RANK", "0") != "0" and _peer_stopped(e):
            return 1  # another rank stopped first (an interrupt, a failure): it says why
        return _report(f"tt: {e}", 1, hint=not _explains_itself(e.error))
    except Exception as e:
        return _report(f"tt: {argv[0]} failed: {type(e).__name__}: {e}", 1, hint=True)


def run_tt() -> None:
    """The ``tt`` executable: ``main``, then exit with its code. After an interrupt the
    interpreter's teardown is skipped: native threads of torch and the data libraries can
    crash while being torn down after a KeyboardInterrupt (a segfault once the run had
    stopped cleanly, about 1 run in 8 here). Everything tt writes is closed by then."""
    code = main()
    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


# How gloo and NCCL report a collective whose other side has gone away.
_PEER_STOPPED = ("Connection closed by peer", "Connection reset by peer", "remote process exit")


def _peer_stopped(error: BaseException) -> bool:
    return any(text in str(error) for text in _PEER_STOPPED)


def _explains_itself(error: Exception) -> bool:
    """tt's own error types carry the whole story (what, where, what to do); for anything
    else the traceback may be worth seeing."""
    return type(error).__module__.split(".")[0].startswith("tt_")


def _report(message: str, code: int, hint: bool = False) -> int:
    rank = os.environ.get("RANK", "0")
    if rank != "0":  # a worker under torchrun
        message = f"[rank {rank}] {message}"
    if os.environ.get("TT_DEBUG") == "1":
        traceback.print_exc()
    elif hint:
        message += "\n(set TT_DEBUG=1 to see the traceback)"
    print(message, file=sys.stderr)
    return code
