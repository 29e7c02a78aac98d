"""Command line: parse, validate, hand over. Nothing else lives here.

    collapse measure [CONFIG.yaml] [key=value ...] [--check]
    collapse run     [CONFIG.yaml] [key=value ...] [--check]
    collapse report  RUN_DIR [RUN_DIR ...] [--out DIR]
    collapse sweep   [CONFIG.yaml] key=v1,v2 seed=0,1,2 [--out DIR] [--wandb-sweep FILE]
    collapse verify  RUN_DIR (every file against the checksums its stages recorded)
    collapse keys    (every config key with its default and meaning)

User errors print one line (``error: ...``) and exit with code 2. Modules named in ``COLLAPSE_PLUGINS``
are imported first (``collapse.plugins``).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from collapse.errors import CollapseError, DataError

DEFAULT_CONFIGS = {"measure": "measure/tiny.yaml", "run": "tiny.yaml"}


def _embedded_default(command: str) -> Path | None:
    """configs/ of a source checkout, or the copy shipped inside the package."""
    rel = DEFAULT_CONFIGS.get(command)
    if rel is None:
        return None
    repo = Path(__file__).resolve().parent.parent / "configs" / rel
    if repo.is_file():
        return repo
    shipped = resources.files("collapse") / "configs" / rel
    return Path(str(shipped)) if shipped.is_file() else None


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    config = None
    overrides = []
    for i, it in enumerate(items):
        # a run folder's config (sweeps name folders `regime.kind=mix,seed=0`) is a file whose path has a "="
        if i == 0 and (("=" not in it and it.endswith((".yaml", ".yml"))) or Path(it).is_file()):
            config = it
        else:
            overrides.append(it)
    return config, overrides


def _load(command: str, items: list[str]):
    from collapse.config import load_config

    config, overrides = _split_args(items)
    embedded = config is None
    if config is None:
        config = _embedded_default(command)
    return load_config(config, overrides, embedded=embedded)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="collapse", description="Measure and simulate model collapse in language models.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="single-shot token-frequency shift of one model")
    m.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value]")
    r = sub.add_parser("run", help="the recursive loop: generate, fine-tune, measure, for N generations")
    r.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value]")
    for p_ in (m, r):
        p_.add_argument("--check", action="store_true", help="check config, data, model, out_dir, disk and W&B in "
                        "seconds, print the plan and exit (writes nothing)")
    r.add_argument("--under", metavar="DIR", default=None, help="out_dir = DIR/<the key=value overrides>, the folder "
                   "`collapse sweep` gives that point of a grid (what a W&B sweep's agents run)")
    rep = sub.add_parser("report", help="plots and report.html from one or more run folders")
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report for one run, "
                     "./report for several)")
    sw = sub.add_parser("sweep", help="a grid of runs (key=v1,v2 ...) into one folder, then one report")
    sw.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=v1,v2 ...]")
    sw.add_argument("--out", default=None, help="parent folder (default: the config's out_dir)")
    sw.add_argument("--launcher", default=None,
                    help='how to start each run, e.g. "accelerate launch --num_processes 2 -m collapse"')
    sw.add_argument("--dry-run", action="store_true", help="validate and list the runs without starting them")
    sw.add_argument("--wandb-sweep", metavar="FILE", default=None, help="write the grid as a W&B sweep "
                    "configuration (run it with `wandb sweep FILE` and `wandb agent`) instead of running it")
    ex = sub.add_parser("export", help="every figure of run, measure or sweep folders as one tidy table (pandas)")
    ex.add_argument("runs", nargs="+", metavar="RUN_OR_SWEEP")
    ex.add_argument("--to", required=True, metavar="FILE", help="a .parquet or .csv file")
    wv = sub.add_parser("wandb-view", help="save a W&B workspace of runs or sweeps: tail loss by bucket, test "
                        "perplexity, bucket shift, grouped by what differs between them (needs a W&B login)")
    wv.add_argument("runs", nargs="+", metavar="RUN_OR_SWEEP")
    wv.add_argument("--entity", default=None)
    wv.add_argument("--project", default=None, help="default: the runs' wandb.project")
    wv.add_argument("--name", default=None, help="the workspace's name")
    wv.add_argument("--spec", default=None, metavar="FILE", help="also write the view's specification (JSON) here")
    v = sub.add_parser("verify", help="check every file of a run folder against the checksums its stages recorded")
    v.add_argument("run_dir")
    sub.add_parser("keys", help="list every config key with its default and meaning")
    sub.add_parser("bench", add_help=False,
                   help="speed benchmarks: collapse bench [--device cpu|cuda] [--quick] [--out F]")
    return p


def _show_plan(plan) -> int:
    if plan.main:
        print(plan.render())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser: options after the subcommand
        from collapse.bench import main as bench_main

        return bench_main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow an option (`collapse run cfg.yaml --check seed=1`): argparse stops the
    # positional list at the first option and hands the rest back
    if extra and (not isinstance(getattr(args, "args", None), list) or any(a.startswith("-") for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.args += extra
    from collapse.runtime import quiet_libraries, setup_logging

    quiet_libraries()
    log = setup_logging()
    try:
        from collapse.plugins import load_plugins

        load_plugins()  # COLLAPSE_PLUGINS: kinds, figures, regimes registered before any config is read
        if args.command == "keys":
            from collapse.config import describe_keys

            for key, default, help_ in describe_keys():
                print(f"{key:<32} {default!s:<14} {help_}")
            return 0
        if args.command == "measure":
            cfg = _load("measure", args.args)  # config errors before the heavy imports
            from collapse.measure import run_measure

            if args.check:
                return _show_plan(run_measure(cfg, check_only=True))
            run_measure(cfg)
            return 0
        if args.command == "run":
            cfg = _load("run", args.args)
            if args.under:
                from collapse.loop.sweep import point_name

                cfg.out_dir = str(Path(args.under) / point_name([tuple(o.split("=", 1)) for o in _split_args(args.args)[1]]))
            from collapse.loop.run import Run, run_loop

            return _show_plan(Run.prepare(cfg, show_progress=False, check_only=True)) if args.check else run_loop(cfg)
        if args.command == "sweep":
            from collapse.loop.sweep import run_sweep

            config, items = _split_args(args.args)
            return run_sweep(config, items, args.out, args.launcher, args.dry_run, args.wandb_sweep)
        if args.command == "verify":
            from collapse.loop.integrity import verify_folder

            problems, checked = verify_folder(Path(args.run_dir))
            for line in problems:
                print(line)
            if problems:
                raise DataError(f"{len(problems)} file(s) of {args.run_dir} are damaged or missing (listed above): rerun "
                                "the same `collapse run` to redo the stages that wrote them.")
            print(f"{args.run_dir}: {checked} files match their checksums" if checked else
                  f"{args.run_dir}: no checksums (made before collapse recorded them): nothing to verify")
            return 0
        if args.command == "export":
            from collapse.results import export

            path = export(args.runs, args.to)
            print(f"wrote {path}")
            return 0
        if args.command == "wandb-view":
            from collapse.tracking.view import save_view

            print(f"saved the W&B workspace: {save_view(args.runs, args.entity, args.project, args.name, args.spec)}")
            return 0
        if args.command == "report":
            from collapse.report import make_report

            return make_report([Path(r) for r in args.runs], Path(args.out) if args.out else None)
    except CollapseError as e:
        log.error(f"error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        log.error("interrupted.")
        return 130
    except MemoryError:
        log.error("error: out of memory: lower generation.num_sequences, generation.batch_size or the model size.")
        return 2
    return 0  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
