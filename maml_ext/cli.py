"""``maml-ext``: train, evaluate and plot meta-learning runs from a TOML config.

    maml-ext train sinusoid --out runs/sinusoid [--set train.iterations=1000 ...] [--unset model.init ...]
        [--nproc 2] (then evaluates and plots the run, unless --no-eval; also runs under torchrun)
    maml-ext train --resume --out runs/sinusoid [--set train.iterations=2000]
    maml-ext eval runs/sinusoid [--set eval.num_tasks=600 ...]
    maml-ext plot runs/sinusoid [--compare runs/other ...]
    maml-ext list
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import json
import os
import signal
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


def _interrupted(exc: KeyboardInterrupt) -> int:
    """Ctrl-C: one line (training says what it kept) and status 130, as a SIGINT'd tool exits."""
    print(f"maml-ext: {exc}" if str(exc) else "maml-ext: interrupted", file=sys.stderr)
    return 128 + signal.SIGINT


try:  # start-up (torch, the algorithms, the RL stack) takes seconds: Ctrl-C then ends as during training
    import torch

    from maml_ext import plugins
    from maml_ext.algorithms import ALGORITHMS
    from maml_ext.rl import train as rl
    from maml_ext.rl.envs.base import TaskEnv
    from maml_ext.train import checkpoint, config, distributed, driver, evaluate, loop, plots
    from maml_ext.train import results as eval_files
except KeyboardInterrupt as _exc:
    sys.exit(_interrupted(_exc))


class MissingDependency(RuntimeError):
    """An optional package a command needs is not installed."""


# User errors: reported as one ``maml-ext: error: ...`` line, exit status 2, no traceback.
EXPECTED_ERRORS = (config.ConfigError, checkpoint.CheckpointError, plugins.PluginError, distributed.DistributedError,
                   driver.TrainingError, MissingDependency)


def _launch(args: argparse.Namespace, train: Callable[..., Path], cfg: config.Config, out: Path,
            family: object) -> Path | None:
    """Run ``train(cfg, out, ...)`` in this process, in ``--nproc`` local ranks, or as one rank of
    a torchrun job; the checkpoint path on the main process, None on the other ranks. ``family``
    (built from ``cfg`` already) is used in this process; local ranks build their own."""
    if args.nproc > 1:
        distributed.launch(args.nproc, train, cfg, out, resume=args.resume, progress=not args.quiet,
                           timeout=args.timeout, expected=(*EXPECTED_ERRORS, OSError))
        return out / loop.CHECKPOINT
    with distributed.join(args.timeout) as shard:  # one process, or one rank of a torchrun job
        ckpt = train(cfg, out, resume=args.resume, progress=not args.quiet, family=family)
    return ckpt if shard.is_main else None


def _base_config(args: argparse.Namespace, out: Path) -> config.Config:
    """The config the overrides apply to: on --resume the run's own config.json (so only changed
    keys are given), else the named config."""
    saved = out / "config.json"
    if args.resume and saved.is_file():
        try:
            run_config = json.loads(saved.read_text())
        except (ValueError, OSError) as exc:
            raise config.ConfigError(f"cannot read {saved}: {exc}") from exc
        if args.config is not None:
            _check_same_problem(args, run_config, out)
        return run_config
    if args.config is None:
        raise config.ConfigError(f"--resume: no {saved}; give the run's config" if args.resume else
                                 "give a config (a .toml file or a packaged name, see `maml-ext list`)")
    return config.read(args.config)


# What a run is about: a config naming another task family or model is another run, however the
# run was started (algorithm and schedule keys may have been --set then and are not repeated).
IDENTITY_KEYS = ("task.name", "model.name")


def _check_same_problem(args: argparse.Namespace, run_config: config.Config, out: Path) -> None:
    """``train CONFIG --resume``: the run in ``out`` must be a run of CONFIG (with this command's
    --set/--unset), else the named config would be silently ignored for the run's own."""
    named = config.flatten(config.apply_overrides(config.read(args.config), args.set, args.unset))
    ours = config.flatten(config.apply_overrides(run_config, args.set, args.unset))
    differ = [f"{k} is {ours.get(k)!r} in the run, {named.get(k)!r} in {args.config}"
              for k in IDENTITY_KEYS if ours.get(k) != named.get(k)]
    if differ:
        raise config.ConfigError(
            f"--resume: {out} is not a run of {args.config}: {'; '.join(differ)}. To continue {out}, leave the "
            f"config out (maml-ext train --resume --out {out}); to train {args.config}, choose another --out")


def _train(args: argparse.Namespace) -> None:
    if args.nproc < 1:
        raise config.ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    if args.out is None and args.config is None:
        raise config.ConfigError("give a config, or --out RUN_DIR with --resume")
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    raw = config.apply_overrides(_base_config(args, out), args.set, args.unset)
    family = rl.task_family(raw)  # built once for the whole command
    if isinstance(family, TaskEnv):  # the task family is a meta-RL environment
        ckpt = _launch(args, rl.train, rl.load_config(raw), out, family)
        if ckpt is not None:
            print(f"checkpoint: {ckpt}")
            if not args.no_eval:
                run_rl, iteration = rl.restore(ckpt, family)
                rl.evaluate(run_rl, run_rl.config, iteration, out, progress=not args.quiet)
                with _plotting(out):
                    rl.plot(run_rl, run_rl.config, iteration, out)
        return
    ckpt = _launch(args, loop.train, config.validate(raw), out, family)
    if ckpt is None:
        return
    print(f"checkpoint: {ckpt}")
    if not args.no_eval:
        run, iteration = loop.restore(ckpt, family)
        _evaluate(run, run.config, iteration, out, progress=not args.quiet)
        _plot(run, run.config, iteration, out)


@contextlib.contextmanager
def _plotting(out: Path) -> Iterator[None]:
    """Plots come last (the checkpoint and results are already written): without matplotlib,
    say how to install it instead of failing on the import."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "matplotlib":
            raise
        raise MissingDependency(f"plots need matplotlib: pip install 'maml_ext[plots]' (the run in {out} is saved; "
                                f"draw it then with `maml-ext plot {out}`)") from exc


def _restored_rl(args: argparse.Namespace) -> tuple[rl.RLRun, config.Config, int] | None:
    """The meta-RL run in ``args.run`` with its eval.* overrides, or None for a supervised run."""
    path = Path(args.run) / loop.CHECKPOINT
    if not rl.is_rl_checkpoint(path):
        return None
    run, iteration = rl.restore(path)
    cfg = rl.load_config(config.apply_overrides(run.config, args.set))
    _check_eval_overrides(cfg, run.config, task_options=())
    return run, cfg, iteration


# [task] options that choose only the held-out tasks, not what the model was trained on (the
# few-shot families' eval_split: "test", or "val" for model selection).
EVAL_TASK_OPTIONS = ("eval_split",)


def _check_eval_overrides(cfg: config.Config, trained: config.Config, task_options: Sequence[str]) -> None:
    """Overrides at eval/plot may only touch evaluation settings: the model is the one trained."""
    allowed = {f"task.{k}" for k in task_options}
    ours, theirs = config.flatten(cfg), config.flatten(trained)
    changed = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    refused = [k for k in changed if not (k.startswith("eval.") or k in allowed)]
    if refused:
        which = " and ".join(["eval.*", *sorted(allowed)])
        raise config.ConfigError(f"eval/plot accept only {which} overrides (they leave the trained model as it is); "
                                 f"refused: {', '.join(refused)}")


def _eval_settings(cfg: config.Config) -> dict[str, object]:
    """What names an evaluation's file (``results``): the [eval] values, and the task options
    that choose the held-out tasks where set (so a validation-split evaluation never overwrites
    the test split's)."""
    chosen = {f"task.{k}": cfg["task"][k] for k in EVAL_TASK_OPTIONS if k in cfg.get("task", {})}
    return {**cfg["eval"], **chosen}


def _restored(args: argparse.Namespace) -> tuple[loop.Run, config.Config, int]:
    path = Path(args.run) / loop.CHECKPOINT
    run, iteration = loop.restore(path)
    cfg = config.validate(config.apply_overrides(run.config, args.set))
    _check_eval_overrides(cfg, run.config, EVAL_TASK_OPTIONS)
    if cfg["task"] != run.config["task"]:  # the held-out tasks chosen anew; model and learner as trained
        run, iteration = loop.restore(path, loop.build_plugin("task", cfg, plugins.tasks))
    return run, cfg, iteration


def _evaluate(run: loop.Run, cfg: config.Config, iteration: int, out: Path, progress: bool = True) -> None:
    results = evaluate.evaluate(run, cfg, progress)
    results["iteration"] = iteration
    path = eval_files.write(results, _eval_settings(cfg), out, _eval_settings(run.config))
    print(evaluate.table(results))
    print(f"results: {path}")


def _plot(run: loop.Run, cfg: config.Config, iteration: int, out: Path, compare: Sequence[str] = ()) -> None:
    with _plotting(out):
        _draw(run, cfg, iteration, out, compare)


def _run_label(directory: Path, cfg: config.Config | None = None) -> str:
    """A run in a legend: its directory and algorithm (``sin (maml)``), the same for this run and
    the compared ones."""
    if cfg is None:
        cfg = json.loads((directory / "config.json").read_text())  # a compared run: checked by then
    return f"{directory.name} ({cfg['algorithm']['name']})"


def _draw(run: loop.Run, cfg: config.Config, iteration: int, out: Path, compare: Sequence[str]) -> None:
    made = [plots.learning_curve(out / loop.METRICS, out / "learning_curve.png")]
    runs = {}
    try:  # the evaluation with these settings, of the checkpoint as it is now
        runs[_run_label(out, cfg)] = eval_files.current(out, _eval_settings(cfg), _eval_settings(run.config), iteration)
    except eval_files.NotCurrent as exc:
        if compare:
            raise config.ConfigError(f"--compare needs this run evaluated with these settings first: {exc}") from exc
        driver.notice(str(exc))  # said, not silently skipped: an older adaptation.png may be lying there
    for directory in map(Path, compare):  # only evaluations with the same settings are drawn together
        runs[_run_label(directory)] = eval_files.matching(directory, _eval_settings(cfg))
    if runs:
        if len(runs) == 1:
            runs = {"": next(iter(runs.values()))}
        made.append(plots.adaptation_curve(runs, out / "adaptation.png"))
    if hasattr(run.family, "curve") and run.family.in_features == 1:
        for shots in cfg["eval"]["shots"]:
            made.append(plots.sinusoid_fits(run, cfg, out / f"fits_{shots}shot.png", shots=shots))
    print("plots: " + ", ".join(str(p) for p in made))


def _eval_command(args: argparse.Namespace) -> None:
    restored = _restored_rl(args)
    if restored is not None:
        run_rl, cfg_rl, it = restored
        rl.evaluate(run_rl, cfg_rl, it, Path(args.run))
        return
    run, cfg, iteration = _restored(args)
    _evaluate(run, cfg, iteration, Path(args.run))


def _plot_command(args: argparse.Namespace) -> None:
    restored = _restored_rl(args)
    if restored is not None:
        with _plotting(Path(args.run)):
            rl.plot(restored[0], restored[1], restored[2], Path(args.run), args.compare)
        return
    run, cfg, iteration = _restored(args)
    _plot(run, cfg, iteration, Path(args.run), args.compare)


def _list(args: argparse.Namespace) -> None:
    print("models:     " + ", ".join(plugins.models.names()))
    print("tasks:      " + ", ".join(plugins.tasks.names()))
    # One name per algorithm: an underscore spelling of a hyphenated name (mr_maml) is only accepted.
    aliases = [n for n in sorted(ALGORITHMS) if "_" in n and n.replace("_", "-") in ALGORITHMS]
    shown = ", ".join(n for n in sorted(ALGORITHMS) if n not in aliases)
    print(f"algorithms: {shown}" + (f" ({', '.join(aliases)} also accepted)" if aliases else ""))
    print("configs:    " + ", ".join(config.builtin_configs()))


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line error format (argparse prints the usage first)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"maml-ext: error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    import maml_ext
    from maml_ext import _extension

    return f"maml-ext {maml_ext.__version__} (torch {torch.__version__}; compiled kernels: {_extension.STATUS})"


def parser() -> argparse.ArgumentParser:
    # The module docstring, without its reST quoting, is the help page: what it does, then examples.
    p = _Parser(prog="maml-ext", description=__doc__.replace("``", ""),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)
    overrides = dict(action="append", default=[], metavar="KEY=VALUE", help="override a config value (TOML syntax)")

    t = sub.add_parser("train", help="meta-train from a config")
    t.add_argument("config", nargs="?",
                   help="a .toml file or a packaged config name (see `maml-ext list`); with --resume, optional")
    t.add_argument("--out", help="run directory (default: runs/<config name>)")
    t.add_argument("--set", **overrides)
    t.add_argument("--unset", action="append", default=[], metavar="KEY",
                   help="drop a config key (e.g. model.activation for a model without that option)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the run directory's checkpoint, with its config.json plus --set/--unset")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--no-eval", action="store_true", help="skip the evaluation and plots after training")
    t.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel training in N local processes (torch.distributed); see also torchrun")
    t.add_argument("--timeout", type=float, default=distributed.DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="how long a distributed rank waits for the others before failing (default %(default)g)")
    t.set_defaults(func=_train)

    for name, func, text, set_help in (
        ("eval", _eval_command, "evaluate a run on held-out tasks", overrides["help"]),
        # plot evaluates nothing: its eval.* settings pick the evaluation file drawn in adaptation.png
        ("plot", _plot_command, "plot a run as PNG",
         "eval.* settings of the evaluation to draw (default: the run's own, eval.json)"),
    ):
        e = sub.add_parser(name, help=text)
        e.add_argument("run", help="run directory (holding checkpoint.pt)")
        e.add_argument("--set", **{**overrides, "help": set_help})
        e.set_defaults(func=func)
    e.add_argument("--compare", nargs="+", default=[], metavar="RUN", help="other evaluated runs to draw in adaptation.png")

    sub.add_parser("list", help="list models, tasks, algorithms and packaged configs").set_defaults(func=_list)
    return p


# What the tables print beyond ASCII, for a stream that cannot encode it (PYTHONIOENCODING=ascii,
# a latin-1 terminal): ASCII stand-ins instead of a UnicodeEncodeError after the work is done.
ASCII_FALLBACKS = {"±": "+/-", "–": "-"}


def _ascii_fallback(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    return "".join(ASCII_FALLBACKS.get(c, "?") for c in exc.object[exc.start:exc.end]), exc.end


codecs.register_error("maml_ext_ascii", _ascii_fallback)


def _fall_back_to_ascii() -> None:
    """Streams that cannot encode the tables' glyphs write ASCII stand-ins instead."""
    for stream in (sys.stdout, sys.stderr):
        try:
            "".join(ASCII_FALLBACKS).encode(stream.encoding or "ascii")
        except UnicodeEncodeError:
            if isinstance(stream, io.TextIOWrapper):
                stream.reconfigure(errors="maml_ext_ascii")
        except (AttributeError, LookupError):  # a stream without a (known) encoding: left as it is
            continue


def _error(message: str) -> int:
    print("maml-ext: error: " + " ".join(message.split()), file=sys.stderr)  # always one line
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        _fall_back_to_ascii()
        args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
    except EXPECTED_ERRORS as exc:
        return _error(str(exc))
    except BrokenPipeError:
        # The reader went away (`maml-ext list | head -1`): stop quietly, as a SIGPIPE'd tool
        # does. Point stdout at devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except OSError as exc:  # the file system refused (read-only or full output directory, ...)
        return _error(f"{exc.strerror}: {exc.filename}" if exc.filename and exc.strerror else str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
