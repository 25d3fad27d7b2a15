"""The ``dynsearch`` command: thin argument handling over the library.

Exit codes: 0 success; 2 for anything the user can fix (one line, no
traceback); 1 for an internal failure.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys

from dynsearch.run.files import CONFIG_FILE, METRICS_FILE, REPORT_HTML, REPORT_PNG, WEIGHTS_FILE

EPILOG = """examples:
  dynsearch train                          train the default recipe's default point
  dynsearch search                         multi-objective search, default recipe
  dynsearch search digits-exits --trials 16 --out runs/demo
  dynsearch pareto runs/demo --json
  dynsearch trials runs/demo --state FAIL   every trial (here the failed ones) with its reason
  dynsearch bench runs/demo/trials/3      latency of one trial's model vs its static path
  dynsearch report runs/demo               the front drawn: PNG and interactive HTML in the run directory
  dynsearch export runs/demo --pareto --out models --format onnx
  dynsearch list
"""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit code 2."""

    def error(self, message: str):  # noqa: D401
        wrong = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if wrong:  # a misspelt command or choice: name the closest one
            from dynsearch.catalog import did_you_mean

            choices = [c.strip().strip("'") for c in wrong.group(3).split(",")]
            message = message.replace(" (choose from", did_you_mean(wrong.group(2), choices) + " (choose from", 1)
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _positive_ints(text: str) -> list[int]:
    """``1,32,128``: whole numbers of at least 1."""
    return [_positive_int(part.strip()) for part in text.split(",") if part.strip()] or [_positive_int(text)]


def _trial_numbers(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of trial numbers") from None
    if any(n < 0 for n in numbers):
        raise argparse.ArgumentTypeError(f"{text!r}: trial numbers start at 0")
    return numbers


def _point_number(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not an operating point number (0, 1, ...)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dynsearch",
        description="Search dynamic neural networks (early exits, gates, experts, adaptive "
        "computation) for the best accuracy / cost trade-off.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from dynsearch.version import __version__

    parser.add_argument("--version", action="version", version=f"dynsearch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    recipe_help = "a YAML recipe path or a built-in recipe name (default: digits-exits; see 'dynsearch list')"

    train = commands.add_parser("train", help="train the recipe's default point once and measure it",
                                description="Train the recipe's default configuration once and print "
                                "test accuracy, macs (test split mean of what ran), macs_full and params.")
    train.add_argument("recipe", nargs="?", help=recipe_help)
    train.add_argument("--epochs", type=_positive_int, help="override the recipe's epochs")
    train.add_argument("--out", help=f"also save {CONFIG_FILE}, {WEIGHTS_FILE} and {METRICS_FILE} here")
    train.add_argument("--json", action="store_true", help="print one JSON object")

    search = commands.add_parser("search", help="run or resume a multi-objective search",
                                 description="Run a multi-objective search (Ray Tune trials, Optuna "
                                 "sampler) and print its Pareto front. Re-running on the same --out resumes.")
    search.add_argument("recipe", nargs="?", help=recipe_help)
    search.add_argument("--trials", type=_positive_int, help="number of COMPLETE trials wanted")
    search.add_argument("--epochs", type=_positive_int, help="epochs per trial")
    search.add_argument("--concurrent", type=_positive_int, help="trials running at once")
    search.add_argument("--sampler", choices=["nsga2", "tpe", "random"], help="Optuna sampler")
    search.add_argument("--seed", type=int, help="search seed")
    search.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    search.add_argument("--address", help="join an existing Ray cluster (HOST:PORT); default: a local instance")
    search.add_argument("--new", action="store_true",
                        help="start a new search in --out even if it holds one of another recipe "
                        "(the old search is moved to <out>/previous/<k>)")
    search.add_argument("--json", action="store_true", help="print the front as JSON when done")
    search.add_argument("--wandb", choices=["online", "offline", "off"],
                        help="W&B tracking (default online: offline with a notice when not logged in or unreachable)")
    search.add_argument("--wandb-project", help="W&B project (default: the recipe's wandb.project)")
    search.add_argument("--wandb-group", help="W&B group naming this search (default: the run directory's name)")
    search.add_argument("--strategy", choices=["multi-trial", "one-shot"],
                        help="multi-trial: each trial trains its own network; one-shot: train one supernet, then "
                        "search its sub-networks by evaluation alone (docs/oneshot.md)")
    search.add_argument("--evaluations", type=_positive_int, help="one-shot: sub-networks to evaluate")
    search.add_argument("--search-minutes", type=float, help="one-shot: stop evaluating after this many minutes")
    search.add_argument("--supernet-epochs", type=_positive_int, help="one-shot: epochs of supernet training")
    search.add_argument("--scheduler", choices=["mo-asha", "asha"],
                        help="stop unpromising trials early: mo-asha ranks trials at each rung by every objective, "
                        "asha by the first alone (docs/early-stopping.md)")
    search.add_argument("--time-budget", metavar="SECONDS",
                        help="start no trial after this long (600, 10m, 1.5h); running trials finish or are pruned")

    front = commands.add_parser("pareto", help="print the Pareto front of a run",
                                description="Print the non-dominated trials of a run directory.")
    front.add_argument("run_dir", help="a search's run directory")
    front.add_argument("--json", action="store_true", help="print a JSON list")
    front.add_argument("--operating-points", action="store_true",
                       help="the front over every operating point (runtime knob values) of every trial")

    bench = commands.add_parser("bench", help="time a saved model and its static full-depth path",
                                description="Latency (batch-1 by default, eval mode, real exits) of a trial "
                                "folder (RUN_DIR/trials/N) or an exported model folder, next to its static "
                                "full-depth path, with MACs, params and the latency table's prediction.")
    bench.add_argument("path", help=f"a folder with {CONFIG_FILE} and {WEIGHTS_FILE}")
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    bench.add_argument("--batch-size", type=_positive_ints, default=[1],
                       help="inputs per timed call, or a list (1,32,128,256): throughput at each (default: 1)")
    bench.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default: 1)")
    bench.add_argument("--inputs", type=_positive_int, default=100,
                       help="validation batches timed at each batch size (default: 100)")
    bench.add_argument("--repeats", type=_positive_int, default=15,
                       help="paired timings of both paths (default: 15; 6 or more give a 95%% interval)")
    bench.add_argument("--shift", metavar="NAMES",
                       help="also measure under generated corruptions: noise,blur,contrast,occlude "
                       "(NAME: severities 1-3; NAME:N: one severity)")
    bench.add_argument("--data", help="dataset to time on (default: the run's or the card's)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")

    report = commands.add_parser("report", help="draw the front and the mechanisms' statistics of a run",
                                 description=f"Write {REPORT_PNG} and an interactive {REPORT_HTML} into a run directory.")
    report.add_argument("run_dir", help="a search's run directory")

    export = commands.add_parser("export", help="export trials as model folders (weights, config, card, ONNX)",
                                 description=f"Write DIR/trial-<N>/ per trial: {CONFIG_FILE}, {WEIGHTS_FILE}, "
                                 "card.md, card.json and, with --format onnx, the staged ONNX graphs. Each "
                                 "model is re-measured first; nothing is written unless every trial checks out.")
    export.add_argument("run_dir", help="a search's run directory")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--trials", type=_trial_numbers, help="comma-separated trial numbers, e.g. 3,7")
    which.add_argument("--pareto", action="store_true", help="every trial on the Pareto front (the default)")
    export.add_argument("--out", required=True, help="folder to write the model folders into")
    export.add_argument("--format", choices=["onnx"], help="also write the staged ONNX graphs (onnx/)")
    export.add_argument("--point", type=_point_number,
                        help="export the one --trials N at its operating point K (see 'pareto --operating-points')")
    export.add_argument("--quantize", choices=["int8"], help="also write int8 copies of the ONNX graphs "
                        "(onnx_int8/; implies --format onnx), measured again; the card has both figures")
    export.add_argument("--finetune", type=_positive_int, metavar="EPOCHS",
                        help="train each exported model EPOCHS more epochs first (a tenth of its learning rate, "
                        "cosine); the card records validation and test accuracy before and after (useful for "
                        "one-shot runs, whose models inherit the supernet's weights)")

    listed = commands.add_parser("trials", help="list every trial of a run: state, mechanism, objectives, seconds",
                                 description="One row per trial of a run directory: number, state, mechanism, "
                                 "backbone, where its dynamic parts sit, objectives, seconds and, for a FAIL "
                                 "trial, the reason.")
    listed.add_argument("run_dir", help="a search's run directory")
    listed.add_argument("--json", action="store_true", help="print a JSON list")
    listed.add_argument("--state", type=str.upper, choices=["COMPLETE", "FAIL", "RUNNING", "WAITING", "PRUNED"],
                        metavar="STATE", help="only trials in this state: COMPLETE, FAIL, RUNNING, WAITING, PRUNED")

    listing = commands.add_parser("list", help="list recipes, search spaces and mechanisms")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _mechanism_class(name: str | None):
    """The registered class of a mechanism name, None when not installed here (imports torch)."""
    from dynsearch.dynamic import mechanisms

    info = mechanisms().get(name)
    return info.cls if info is not None else None


def _placement(config: dict) -> str:
    """Where a front item's exits / gates / experts sit, e.g. 'exits after stages 0,1'. Built-in
    mechanisms are read from the catalog (no torch); a plugin's says it through its ``placement``."""
    from dynsearch.catalog import BUILTIN_MECHANISMS, describe_placement

    if config.get("mechanism") in BUILTIN_MECHANISMS:
        return describe_placement(config)
    cls = _mechanism_class(config.get("mechanism"))
    return cls.placement(config) if cls is not None else "-"


FRONT_COLUMNS = ("trial", "mechanism", "backbone", "val acc", "test acc", "macs", "of full", "params", "dynamic parts")
SHIFT_COLUMNS = ("macs shifted", "drift")  # with a macs_shifted objective
RIGHT = {"trial", "val acc", "test acc", "macs", "of full", "params", "seconds"}


def _print_front(front: list[dict]) -> None:
    from dynsearch.models.kinds import describe_backbone
    from dynsearch.tables import print_table

    shifted = bool(front) and all("macs_shifted" in item for item in front)  # a macs_shifted objective
    columns = FRONT_COLUMNS[:-2] + (SHIFT_COLUMNS if shifted else ()) + FRONT_COLUMNS[-2:]
    rows = [[
        str(item["trial"]),
        str(item.get("mechanism") or item["config"].get("mechanism") or "-"),
        describe_backbone(item["config"].get("backbone")),
        f"{item['accuracy']:.4f}",
        f"{item['test_accuracy']:.4f}",
        f"{item['macs']:,.0f}",
        f"{item['macs'] / item['macs_full']:.0%}",
        *([f"{item['macs_shifted']:,.0f}", f"{item['macs_shifted'] / item['macs'] - 1:+.1%}"] if shifted else []),
        f"{item['params']:,}",
        _placement(item["config"]),
    ] for item in front]
    print_table("Pareto front (validation accuracy vs MACs)", columns, rows,
                right=[c in RIGHT or c in SHIFT_COLUMNS for c in columns], wrap=("backbone", "dynamic parts"))
    if shifted:
        print("macs shifted: expected MACs on the validation split under the recipe's shift (mean over its "
              "corruptions); drift: macs shifted / macs - 1")


def _cmd_train(args) -> int:
    from dynsearch.api import train

    result = train(args.recipe, out=args.out, epochs=args.epochs)
    if args.json:
        print(json.dumps(result))
    else:
        share = result["macs"] / result["macs_full"]
        print(f"test accuracy {result['test_accuracy']:.4f}")
        print(f"macs          {result['macs']:,.0f} per sample ({share:.1%} of macs_full)")
        print(f"macs_full     {result['macs_full']:,}")
        print(f"params        {result['params']:,}")
        cls = _mechanism_class(result.get("mechanism"))
        for label, text in cls.stat_summary(result["stats"]) if cls is not None else []:
            print(f"{label:<13} {text} (test split)")
    return 0


def _cmd_search(args) -> int:
    from dynsearch.api import search

    wandb = {k: v for k, v in (("mode", args.wandb), ("project", args.wandb_project), ("group", args.wandb_group)) if v}
    result = search(
        args.recipe, out=args.out, address=args.address, progress=True, new=args.new,
        trials=args.trials, epochs=args.epochs, concurrent_trials=args.concurrent,
        seed=args.seed, wandb=wandb or None, **({"sampler": {"name": args.sampler}} if args.sampler else {}),
        strategy=args.strategy, evaluations=args.evaluations, search_minutes=args.search_minutes,
        **({"supernet": {"epochs": args.supernet_epochs}} if args.supernet_epochs else {}),
        **({"scheduler": {"name": args.scheduler}} if args.scheduler else {}), time_budget=args.time_budget,
    )
    if args.json:
        print(json.dumps(result.front))
    else:
        _print_front(result.front)
        print(f"run directory: {result.run_dir}")
        print(next_steps(result.run_dir))
    if result.done < result.trials and result.out_of_time:
        pruned = f", {result.counts.get('PRUNED', 0)} PRUNED" if result.prunes else ""
        print(f"dynsearch: warning: the time budget ({result.time_budget:g} s) ended the search at "
              f"{result.complete} COMPLETE{pruned} of {result.trials} trials; re-run the same command to "
              "continue (the budget counts again from then)", file=sys.stderr)
    elif result.done < result.trials:
        print(f"dynsearch: warning: {result.complete} of {result.trials} trials COMPLETE, "
              f"{result.counts.get('FAIL', 0)} FAIL (reasons: 'fail_reason' in the study); "
              "re-run the same command to try again", file=sys.stderr)
    return 0


def next_steps(run_dir) -> str:
    """What to run next on a finished search, with its run directory."""
    quoted = shlex.quote(str(run_dir))
    return "\n".join([
        "next:",
        f"  dynsearch pareto {quoted}                 the front again (--json, --operating-points)",
        f"  dynsearch trials {quoted}                 every trial: state, mechanism, objectives, seconds",
        f"  dynsearch report {quoted}                 redraw {REPORT_PNG} and {REPORT_HTML} (already written there)",
        f"  dynsearch export {quoted} --pareto --out models   the front's models (weights, card, --format onnx)",
    ])


def _cmd_pareto(args) -> int:
    from dynsearch.api import pareto

    front = pareto(args.run_dir, operating_points=args.operating_points)
    if args.json:
        print(json.dumps(front))
    elif args.operating_points:
        _print_points(front)
    else:
        _print_front(front)
    return 0


def _print_points(front: list[dict]) -> None:
    from dynsearch.tables import print_table

    columns = ("trial", "mechanism", "point", "knobs", "val acc", "test acc", "macs", "of full")
    rows = []
    for item in front:
        knobs = " ".join(f"{k}={v:g}" for k, v in item["knobs"].items()) or "-"
        rows.append([str(item["trial"]), str(item.get("mechanism") or "-"),
                     str(item["point"]) + ("*" if item["trained"] else ""), knobs,
                     f"{item['accuracy']:.4f}", f"{item['test_accuracy']:.4f}", f"{item['macs']:,.0f}",
                     f"{item['macs'] / item['macs_full']:.0%}"])
    print_table("Operating-point front (validation accuracy vs MACs)", columns, rows,
                right=[c not in ("mechanism", "knobs") for c in columns], wrap=("knobs",))
    if any(item["trained"] for item in front):
        print("* the trial's own (trained) point")
    print("export one: dynsearch export RUN_DIR --trials N --point K --out DIR")


def _cmd_trials(args) -> int:
    from dynsearch.api import trials

    rows = trials(args.run_dir, state=args.state)
    if args.json:
        print(json.dumps(rows))
        return 0
    from dynsearch.tables import print_table

    names = next((list(r["objectives"]) for r in rows if r["objectives"]), [])
    columns = ["trial", "state", "mechanism", "backbone", "dynamic parts", *names, "seconds", "note"]
    table = []
    for r in rows:
        values = [_objective_text(name, r["objectives"].get(name)) for name in names]
        note = r["reason"] or (f"retry of trial {r['retry_of']}" if r["retry_of"] is not None else "")
        if r.get("pruned_at_epoch") is not None:
            note = f"pruned after epoch {r['pruned_at_epoch']} (objectives there)" + (f"; {note}" if note else "")
        table.append([str(r["trial"]), r["state"], r["mechanism"] or "-", r["backbone"], r["placement"], *values,
                      "-" if r["seconds"] is None else f"{r['seconds']:.1f}", note])
    right = [c in RIGHT or c in names for c in columns]
    title = f"Trials of {args.run_dir}" + (f" ({args.state.upper()})" if args.state else "")
    print_table(title, columns, table, right=right, wrap=("backbone", "dynamic parts", "note"))
    return 0


def _objective_text(name: str, value) -> str:
    if value is None:
        return "-"
    if name in ("accuracy", "test_accuracy"):
        return f"{value:.4f}"
    if name.startswith("latency"):
        return f"{value:.3f}"
    return f"{value:,.0f}"


def _cmd_bench(args) -> int:
    from dynsearch.deploy.bench import bench
    from dynsearch.measure.shift import parse_shifts

    shift = parse_shifts(args.shift) if args.shift is not None else None  # before loading anything
    result = bench(args.path, data=args.data, device=args.device, batch_size=args.batch_size,
                   threads=args.threads, inputs=args.inputs, repeats=args.repeats, shift=shift)
    if args.json:
        print(json.dumps(result))
        return 0
    from dynsearch.measure.latency import interval_text

    load = ", ".join(f"{v:.2f}" for v in result["load_average"])
    print(f"{result['path']} ({result['served_form']}) on {result['device']}, {result['threads']} thread(s), "
          f"{result['repeats']} paired repeats, load average {load}")
    for sized in result["batch_sizes"]:
        print(f"  batch {sized['batch_size']} ({sized['inputs']} batches, timed in alternation)")
        for kind in ("dynamic", "static"):
            r = sized[kind]
            print(f"    {kind:<8} p50 {r['latency_ms']:.4f} ms  p90 {r['latency_ms_p90']:.4f} ms  "
                  f"{r['throughput']:,.0f} samples/s  macs {r['macs']:,.0f}")
        print(f"    {speedup_line(sized)}")
        print(f"    speed-up {interval_text({**sized, 'speedup': sized['realised_speedup']})}; "
              f"{sized['realised_over_macs']:.2f} of the MACs speed-up")
        if "served" in sized:
            s = sized["served"]
            print(f"    served by {s['engine']} (as dynsearch.load serves it): p50 {s['latency_ms']:.4f} ms  "
                  f"{s['throughput']:,.0f} samples/s; over the eager static path "
                  f"{interval_text({**s, 'speedup': s['realised_speedup']})} (the engine's own gain "
                  "included: how fast it serves, not what the exits save)")
    print(f"  params {result['params']:,}")
    served = result["served_engine"]
    print("  dynsearch.load serves " + ", ".join(f"{engine} at batch {size}" for size, engine in served.items())
          + (" (chosen at export: 'served by' above times it at each batch size where it is not eager)"
             if set(served.values()) != {"eager"} else " (the form timed above)"))
    if "lut_predicted_ms" in result:
        print(f"  latency table predicts {result['lut_predicted_ms']:.4f} ms at batch 1 "
              f"(error {result['lut_error']:.1%} against the dynamic mean)")
    if "shift" in result:
        _print_shift(result["shift"])
    return 0


def _print_shift(shift: dict) -> None:
    clean = shift["clean"]
    print(f"  shifted inputs (seed {shift['seed']}, {shift['samples']} validation samples; latency at batch "
          f"{shift['batch_size']}):")
    print(f"    {'':<12} {'accuracy':>8} {'macs':>10} {'vs clean':>8} {'p50 ms':>8} {'speed-up':>8}  statistics")

    def row(label: str, entry: dict, change: str) -> None:
        stats = _stats_text(entry["stats"])
        print(f"    {label:<12} {entry['accuracy']:>8.4f} {entry['macs']:>10,.0f} {change:>8} "
              f"{entry['timing']['latency_ms']:>8.4f} {entry['timing']['realised_speedup']:>7.2f}x  {stats}")

    row("clean", clean, "")
    for entry in shift["shifted"]:
        flag = "  cost up > 20%" if entry["cost_rise_flag"] else ""
        row(f"{entry['corruption']}:{entry['severity']}", entry, f"{entry['macs_change']:+.1%}")
        if flag:
            print(f"    {'':<12} ^ expected MACs {entry['macs_change']:+.1%} over clean: flagged (> 20%)")
    if shift["flagged"]:
        print(f"  expected cost rises more than 20% under {', '.join(shift['flagged'])}")


def _stats_text(stats: dict) -> str:
    """The mechanism's list-valued statistics (exit histogram, gate rates) in one short line."""
    parts = []
    for key, value in stats.items():
        if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
            parts.append(f"{key} " + "/".join(f"{v:.2f}" for v in value))
    return "; ".join(parts) or "-"


def speedup_line(result: dict) -> str:
    """'dynamic vs static: 1.52x fewer MACs, timed 1.31x faster', the direction in words; the timed
    ratio is the median of the paired timings (static time over dynamic time)."""
    macs = result["macs_speedup"]
    ratio = result["realised_speedup"]
    macs_words = f"{macs:.2f}x fewer MACs" if macs >= 1 else f"{1 / macs:.2f}x more MACs"
    timed_words = f"timed {ratio:.2f}x faster" if ratio >= 1 else f"timed {1 / ratio:.2f}x slower"
    return f"dynamic vs static: {macs_words}, {timed_words}"


def _cmd_report(args) -> int:
    from dynsearch.dynamic import mechanisms
    from dynsearch.run.report import write_report

    # Trials record their mechanism's stat views; these draw those of runs recorded before they did.
    views = {name: {key: view.to_json() for key, view in info.cls.stat_views.items()}
             for name, info in mechanisms().items()}
    png, page = write_report(args.run_dir, fallback_views=views)
    print(f"wrote {png}")
    print(f"wrote {page}")
    return 0


def _cmd_export(args) -> int:
    if args.point is not None and args.trials is not None and len(args.trials) == 1:
        from dynsearch.run.front import check_recorded_point

        check_recorded_point(args.run_dir, args.trials[0], args.point)  # before torch and the re-measuring
    from dynsearch.api import export

    paths = export(args.run_dir, args.out, trials=args.trials, onnx=args.format == "onnx",
                   point=args.point, quantize=args.quantize, finetune=args.finetune)
    for path in paths:
        card = json.loads((path / "card.json").read_text(encoding="utf-8"))
        m, repro = card["measured"], card["reproduced_at_export"]
        same = "reproduced" if repro["matches_recorded"] else "NOT reproduced exactly (see card.md)"
        onnx = f", onnx: {len(card['onnx']['graphs'])} graph(s)" if card["onnx"] else ""
        point = card.get("operating_point")
        at_point = f", operating point {point['point']} {json.dumps(point['knobs'])}" if point else ""
        if card.get("int8"):
            f, q = card["int8"]["float"], card["int8"]["int8"]
            onnx += (f", int8: test acc {q['test_accuracy']:.4f} (float {f['test_accuracy']:.4f}), "
                     f"{q['latency_ms']:.3f} ms (float {f['latency_ms']:.3f} ms) at batch 1")
        tuned = ""
        if card.get("finetune"):
            b, a = card["finetune"]["before"], card["finetune"]["after"]
            tuned = (f", fine-tuned {card['finetune']['epochs']} epochs: val acc {b['accuracy']:.4f} -> "
                     f"{a['accuracy']:.4f}, test acc {b['test_accuracy']:.4f} -> {a['test_accuracy']:.4f}")
        print(f"{path}: val acc {m['accuracy']:.4f}, macs {m['macs']:,.0f} "
              f"({m['macs'] / m['macs_full']:.0%} of full), {same}{onnx}{at_point}{tuned}")
    return 0


def _listed_mechanisms() -> list[dict]:
    """Built-in mechanisms from the catalog (no torch); the registry only when a plugin is installed."""
    from importlib import metadata

    from dynsearch.catalog import BUILTIN_MECHANISMS
    from dynsearch.plugins import GROUP

    if not list(metadata.entry_points(group=GROUP)):
        return [{"name": m.name, "family": m.family, "paper": m.paper} for m in BUILTIN_MECHANISMS.values()]
    from dynsearch.dynamic import mechanisms

    return [{"name": m.name, "family": m.family, "paper": m.paper} for m in mechanisms().values()]


def _cmd_list(args) -> int:
    from dynsearch.recipe import builtin_recipes
    from dynsearch.spaces import available_spaces

    listing = {"recipes": sorted(builtin_recipes()), "spaces": available_spaces(), "mechanisms": _listed_mechanisms()}
    if args.json:
        print(json.dumps(listing))
        return 0
    print("recipes:    " + ", ".join(listing["recipes"]))
    print("spaces:     " + ", ".join(listing["spaces"]))
    print("mechanisms:")
    for m in listing["mechanisms"]:
        print(f"  {m['name']:<15} {m['family']:<6} {m['paper']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from dynsearch.errors import UserError
    from dynsearch.interrupts import Interrupted, stop_on_signals

    handlers = {"train": _cmd_train, "search": _cmd_search, "pareto": _cmd_pareto, "bench": _cmd_bench,
                "trials": _cmd_trials, "report": _cmd_report, "export": _cmd_export, "list": _cmd_list}
    try:
        if args.command == "search":  # from here on a signal stops the search cleanly (interrupts.py)
            with stop_on_signals():
                return handlers[args.command](args)
        return handlers[args.command](args)
    except UserError as exc:
        print(f"dynsearch: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"dynsearch: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dynsearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dynsearch trials RUN | head`: the reader left; as other Unix tools, stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit must not fail again
        return 141  # 128 + SIGPIPE, as a shell reports a command a closed pipe stopped


if __name__ == "__main__":
    sys.exit(main())
