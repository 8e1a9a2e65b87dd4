"""`python -m pipeline {run,compare,tune,nightly,validate,recommend}`: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from pipeline.errors import PipelineInputError, StorageError

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def program_name() -> str:
    """`pipeline` (the console script), or `python -m pipeline` when started as a module (or from a test)."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name in ("pipeline", "interest-pipeline") else "python -m pipeline"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name(),
        description="Learn user interests from behavior logs and recommend what comes next.",
        epilog="Exit codes: 0 success, 1 unexpected failure, 2 bad input (config or data), 130 interrupted; "
        "nightly also 3 (champion kept) and 4 (another night running).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    common.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable), e.g. --set train.epochs=5",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", parents=[common, overrides], help="train, evaluate and write a run directory")
    run.add_argument("config", type=Path, help="YAML config file")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: on a terminal, not under CI)")
    run.add_argument(
        "--resume", metavar="PARTIAL_DIR|auto",
        help="continue a stopped or killed run from its last epoch checkpoint (its .partial folder, or auto: the newest)",
    )

    compare = commands.add_parser(
        "compare", parents=[common, overrides], help="train every model of compare.models on one split; write a leaderboard"
    )
    compare.add_argument("config", type=Path, help="YAML config file with a compare section")
    compare.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: on a terminal, not under CI)")

    tune = commands.add_parser(
        "tune", parents=[common, overrides],
        help="search tune.space with Optuna on validation; write best_config.yaml and the trials",
    )
    tune.add_argument("config", type=Path, help="YAML config file with a tune section")
    tune.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="progress bars (default: on a terminal, not under CI)")
    tune.add_argument("--resume", metavar="PARTIAL_DIR|auto",
                      help="continue an interrupted search (its .partial folder, or auto: the newest)")

    nightly = commands.add_parser(
        "nightly", parents=[common, overrides],
        help="retrain on what is new, promote the challenger only if it is not worse (for cron/systemd)",
        epilog="Exit codes: 0 promoted or nothing new, 3 champion kept (challenger worse), 4 another night holds the "
        "lock, 2 bad input, 1 failure.",
    )
    nightly.add_argument("config", type=Path, help="YAML config file (section `nightly`)")
    nightly.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: on a terminal, not under CI)")

    validate = commands.add_parser("validate", parents=[common, overrides], help="check config and data, write nothing")
    validate.add_argument("config", type=Path, help="YAML config file")

    recommend = commands.add_parser(
        "recommend", parents=[common], help="top-K lists from a finished run for the users in an events file"
    )
    recommend.add_argument("run_dir", type=Path, help="run directory (or an output root: its latest run)")
    recommend.add_argument("--events", type=Path, required=True, help="events file, same columns as the run's interactions")
    recommend.add_argument("--output", type=Path, help="write .csv or .parquet here (default: CSV on stdout)")
    recommend.add_argument("--top-k", type=int, help="list length (default: the run's output.top_k)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before the imports below: --help needs no torch

    from pipeline import distributed
    from pipeline.recipes.nightly import EXIT_LOCK_HELD, LockHeld
    from pipeline.training import StopRequest, TrainingStopped

    distributed.init_from_environment()  # under torchrun: join the other ranks
    _configure_logging(args.debug, args.quiet or not distributed.is_main())
    keep_freed_memory()
    args.stop = StopRequest()
    previous_handlers = _stop_on_signals(args.stop)
    try:
        return COMMANDS[args.command](args)
    except PipelineInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StorageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except LockHeld as err:
        print(f"skipped: {err}", file=sys.stderr)
        return EXIT_LOCK_HELD
    except TrainingStopped as stopped:
        if args.command == "run":
            advice = f"which are checkpointed. Continue with: python -m pipeline run {args.config} --resume auto"
        else:
            advice = "the night was abandoned and the champion is unchanged"
        print(f"stopped by {args.stop.reason} after {stopped.finished_epochs} finished epoch(s); nothing was published; {advice}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        kept = f"; the finished trials are kept: continue with {program_name()} tune {args.config} --resume auto"
        print(f"interrupted: nothing was published{kept if args.command == 'tune' else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if args.debug:
            raise
        print(f"error: {type(err).__name__}: {err} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        distributed.shutdown()


def _stop_on_signals(stop) -> dict:
    """SIGINT/SIGTERM during training: finish the current batch and stop (the epoch checkpoint stays for --resume).

    Outside training, or on a second signal, stop at once via KeyboardInterrupt: nothing is published either way.
    """

    def handle(signum, frame):
        if stop.training and stop.reason is None:
            stop.request(signal.Signals(signum).name)
            logging.getLogger("pipeline").warning("%s: stopping after the current batch", stop.reason)
            return
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}


def _run(args) -> int:
    from pipeline.recipes.run import run

    result = run(args.config, args.overrides, progress=args.progress, resume=args.resume, stop=args.stop)
    if result.run_dir is None:  # a rank other than 0 under torchrun: rank 0 reports
        return EXIT_OK
    test = result.metrics["splits"]["test"]
    k = result.config.eval.select_k
    for name, values in test.items():
        print(f"{name:>12}  test ndcg@{k} {values[f'ndcg@{k}']:.4f}  hit_rate@{k} {values[f'hit_rate@{k}']:.4f}")
    floor = result.metrics.get("strongest_floor")
    if floor and floor["model_over_floor"] is not None:
        print(f"strongest floor: {floor['model']}; the model is {floor['model_over_floor']:.2f}x its {floor['metric']}")
    print(result.run_dir)
    return EXIT_OK


def _nightly(args) -> int:
    from pipeline.recipes.nightly import nightly

    result = nightly(args.config, args.overrides, progress=args.progress, stop=args.stop)
    if result.night_dir is None:
        print(result.summary["message"])
    else:
        print((result.night_dir / "summary.md").read_text(encoding="utf-8"))
        print(result.night_dir)
    return result.exit_code


def _compare(args) -> int:
    from pipeline.recipes.compare import compare

    result = compare(args.config, args.overrides, progress=args.progress)
    print((result.run_dir / "leaderboard.md").read_text(encoding="utf-8"))
    print(result.run_dir)
    return EXIT_OK


def _tune(args) -> int:
    from pipeline.recipes.tune import tune

    result = tune(args.config, args.overrides, progress=args.progress, resume=args.resume)
    columns = [column for column in result.trials.columns if column != "error"]
    print(result.trials[columns].to_string(index=False))
    print(f"best: trial {result.metrics['best_trial']} {result.metrics['best_params']}")
    print(result.run_dir / "best_config.yaml")
    return EXIT_OK


def _validate(args) -> int:
    from pipeline.api import validate

    summary = validate(args.config, args.overrides)
    splits = ", ".join(f"{key} {value}" for key, value in summary["events_per_split"].items())
    print(f"config      {args.config.resolve()}: ok")
    print(f"events      {summary['events']} ({splits})")
    print(f"users       {summary['users']}; evaluated: valid {summary['evaluated']['valid']}, test {summary['evaluated']['test']}")
    print(f"items       {summary['items']}; categories {summary['categories']}")
    print(f"ratings     {'yes' if summary['ratings'] else 'no'}")
    print(f"encoder     {summary['encoder']}")
    print(f"model       {summary['model']}")
    print(f"output root {summary['output_root']}")
    return EXIT_OK


def _recommend(args) -> int:
    from pipeline.serving import recommend
    from pipeline.storage import write_table

    if args.top_k is not None and args.top_k < 1:
        raise PipelineInputError(f"--top-k: must be >= 1 (got {args.top_k})")
    if args.output is not None and (args.output.is_dir() or not args.output.parent.is_dir()):
        problem = "is a folder" if args.output.is_dir() else "its folder does not exist"
        raise PipelineInputError(f"--output: {args.output.resolve()} {problem}; give a .csv or .parquet file path")
    lists = recommend(args.run_dir, args.events, args.top_k)
    if args.output is None:
        lists.to_csv(sys.stdout, index=False)
    else:
        write_table(lists, args.output)
        print(args.output)
    return EXIT_OK


COMMANDS = {"run": _run, "compare": _compare, "tune": _tune, "nightly": _nightly, "validate": _validate, "recommend": _recommend}


def keep_freed_memory() -> None:
    """Stop glibc from returning every large freed block to the OS.

    Each training step allocates and frees logits of batch x catalog floats; by default glibc serves those with
    mmap/munmap, so every step pays page faults again (measured: 23% of an epoch on the bundled data). Raising the
    thresholds keeps the memory mapped for reuse. Done here, in the process the CLI owns, never on library import.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    # mallopt takes a C int; glibc caps the mmap threshold at 32 MiB on 64-bit systems.
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, (1 << 31) - 1)
    mallopt(m_top_pad, 1 << 30)


def _configure_logging(debug: bool, quiet: bool) -> None:
    """The console shows what --quiet/--debug ask for; the logger passes INFO on, so run.log still gets it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    logger = logging.getLogger("pipeline")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        if not sys.stderr.isatty():
            transformers.logging.disable_progress_bar()
    except ImportError:
        pass
