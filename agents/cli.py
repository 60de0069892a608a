"""The one entry point: ``pixelpilot ...`` and ``python -m agents ...``. It parses arguments and calls;
nothing but ``agents/__main__.py`` (and the ``pixelpilot`` script) imports it.

    pixelpilot train CONFIG [key.sub=value ...]     train; the last line printed is "run: <run directory>"
    pixelpilot train --resume RUN_DIR [agent.trials=N]  continue a run from its latest checkpoint (for longer)
    pixelpilot eval RUN_DIR --episodes N            play the latest checkpoint, print mean and spread
    pixelpilot watch RUN_DIR [--live] [--export F]  replay recorded episodes (or play live) in a pygame window
    pixelpilot plot RUN_DIR ... [--out F.png]       learning curves, seeds of one config as mean and spread
    pixelpilot bench NAME [--json]                  measured figures against a named baseline
    pixelpilot sweep CONFIG --grid KEY=A,B --seeds S  trials of overrides x seeds on Ray Tune: table, CSV, plots
    pixelpilot sweep CONFIG --pbt --population P    population-based training of a dqn config on Ray Tune

Bad input (unknown key, wrong type, missing file, not a run directory, damaged checkpoint) prints one line
naming the file and key and exits with code 2, before anything is written. ``--help`` (and ``train --help``,
``sweep --help``) ends with the recipes in configs/, each with the start of its first comment line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from agents.core.agent import load_trained_agent, train
from agents.core.config import CONFIG_DIR, ConfigError, load_config, recipe_names, resolve_config_path
from agents.core.envs import make_env
from agents.core.episodes import EVAL_SEED_OFFSET, evaluate
from agents.core.run import extend_run, load_run_config
from agents.ddm.bench import bench_ddm
from agents.dqn.bench import bench_dqn
from agents.dqn.bench_ray import bench_ray
from agents.tune.pbt import pbt
from agents.tune.score import TASKS as SCORE_TASKS
from agents.tune.score import bench_score
from agents.tune.sweep import sweep
from agents.ui.plot import plot_runs
from agents.ui.watch import watch
from envs.bench import bench_envs

EXIT_BAD_INPUT = 2
TITLE_WIDTH = 52  # of a recipe's first comment line in --help: with the longest name, a line fits 80 columns

BENCHES = {"envs": bench_envs, "ddm": bench_ddm, "dqn": bench_dqn, "ray": bench_ray, "score": bench_score}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options too (`train CONFIG --workers 2 seed=1`): argparse leaves the
    # positionals after an option unparsed, so they join the overrides here.
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args)
    except ConfigError as err:
        print(f"pixelpilot: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("pixelpilot: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    recipes = recipes_epilog()
    parser = argparse.ArgumentParser(prog="pixelpilot", description="Agents that learn control from pixels.",
                                     epilog=recipes, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an agent from a config", epilog=recipes,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("config", nargs="?", help="a YAML path or a recipe name in configs/")
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a run from its latest checkpoint; overrides may give it a new length only "
                            "(agent.trials=N for ddm, agent.total_steps=N for the others)")
    train.add_argument("--workers", type=int, metavar="N",
                       help="rollout workers as Ray actors feeding one learner (dqn; sets ray.workers)")
    train.add_argument("--address", metavar="ADDRESS",
                       help="with rollout workers: run them on this Ray cluster (auto, HOST:PORT) instead of one "
                            "started here (sets ray.address)")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("eval", help="play a run's latest checkpoint")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--episodes", type=int, default=10)
    evaluate.add_argument("--seed", type=int, default=None,
                          help="first episode seed (default: config seed + 10000, the evaluation seeds)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=cmd_eval)

    bench = commands.add_parser("bench", help="benchmarks against named baselines").add_subparsers(
        dest="name", required=True)
    bench_envs = bench.add_parser("envs", help="batched pixel pendulum vs Gymnasium's Pendulum-v1 + pygame + resize")
    bench_ddm = bench.add_parser("ddm", help="DDM agent: trials to success over seeds, frames vs SB3 PPO")
    bench_ddm.add_argument("--seeds", default="5",
                           help="a count N (seeds 0..N-1, or from --seed-start), a block A-B (both included, e.g. "
                                "1000-1019) or a list A,B,C (default 5)")
    bench_ddm.add_argument("--seed-start", type=int, default=0, help="the first seed of a count (default 0)")
    bench_ddm.add_argument("--config", default="ddm_pendulum",
                           help="a DDM recipe name in configs/ or a YAML path (default ddm_pendulum)")
    bench_ddm.add_argument("--controller", choices=("cem", "gradient", "policy"), default=None,
                           help="override the config's controller")
    bench_ddm.add_argument("--rerun-sb3", action="store_true",
                           help="retrain the SB3 baseline (about 20 minutes) instead of reusing its stored result")
    bench_ddm.add_argument("--rerun-dqn", action="store_true",
                           help="retrain the DQN and Rainbow pendulum rows (3 seeds each, about 1.5 hours on one core)")
    bench_ddm.add_argument("--jobs", type=int, default=1,
                           help="seeds run at once, as Ray tasks with one torch thread each (default 1: in-process)")
    bench_ddm.add_argument("--address", default=None,
                           help="run the seeds on this Ray cluster (auto, HOST:PORT) instead of this machine")
    bench_ddm.add_argument("--no-model-quality", dest="model_quality", action="store_false",
                           help="skip the joint-vs-separate model comparison")
    bench_ddm.add_argument("--runs-dir", default=None,
                           help="keep each seed's run directory under this folder (default: a temporary one, removed; "
                                "with --address, a folder of the node that ran the seed)")
    bench_ddm.add_argument("overrides", nargs="*",
                           help="key.sub=value overrides of the config for every seed")
    bench_dqn = bench.add_parser("dqn", help="DQN env steps/s (one update per step) vs SB3's DQN, MinAtar Breakout")
    bench_dqn.add_argument("--steps", type=int, default=3000, help="env steps timed, each with an update")
    bench_dqn.add_argument("--warmup", type=int, default=1000, help="random steps first, filling the replay")
    bench_dqn.add_argument("--device", default="cpu", help="cpu or cuda (both agents)")
    bench_dqn.add_argument("--threads", type=int, default=1, help="torch threads of each agent (default 1)")
    bench_dqn.add_argument("overrides", nargs="*", help="key.sub=value overrides of our DQN only")
    bench_ray = bench.add_parser("ray", help="env steps/s of 1..N Ray rollout workers vs one process")
    bench_ray.add_argument("--workers", type=int, default=None, help="most rollout workers (default: CPUs)")
    bench_ray.add_argument("--seconds", type=float, default=10.0, help="time per measurement (default 10)")
    bench_ray.add_argument("--repeats", type=int, default=3, help="measurements of each figure, the median kept "
                           "(default 3)")
    bench_ray.add_argument("--address", default=None, help="run the workers on this Ray cluster (auto, HOST:PORT)")
    bench_ray.add_argument("overrides", nargs="*", help="key.sub=value overrides of configs/dqn_minatar_breakout.yaml")
    bench_score = bench.add_parser("score", help="wall-clock and frames to a greedy score: ours vs SB3's DQN")
    bench_score.add_argument("--task", choices=sorted(SCORE_TASKS), default="breakout",
                             help="breakout: MinAtar Breakout to a greedy return of 10; pendulum: to a held swing-up; "
                                  "cartpole: pixel cart-pole to a held balance")
    bench_score.add_argument("--seeds", type=int, default=3, help="seeds of each recipe (default 3)")
    bench_score.add_argument("--jobs", type=int, default=2, help="runs at once, one torch thread each (default 2)")
    bench_score.add_argument("--eval-seconds", type=float, default=15.0,
                             help="training wall-clock between greedy evaluations (default 15)")
    bench_score.add_argument("--episodes", type=int, default=10, help="episodes per evaluation (default 10)")
    bench_score.add_argument("--confirm", type=int, default=2,
                             help="evaluations in a row at the target that reach it (default 2)")
    bench_score.add_argument("--max-seconds", type=float, default=1800.0, help="a run's training clock at most")
    bench_score.add_argument("--ours", default=None, help="our recipe (default: the task's)")
    bench_score.add_argument("--baseline", default=None, help="the baseline's recipe (default: the task's)")
    bench_score.add_argument("--runs-dir", default=None, help="keep the runs' directories here")
    bench_score.add_argument("--address", default=None, help="run on this Ray cluster (auto, HOST:PORT)")
    bench_score.add_argument("--seed-start", type=int, default=0, help="the first seed (default 0)")
    bench_score.add_argument("--skip-baseline", action="store_true", help="run our recipe alone (no ratio)")
    bench_score.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                             help="both sides train on this device (cuda: the runs at once share one GPU)")
    bench_score.add_argument("overrides", nargs="*", help="key.sub=value overrides of our recipe only")
    for sub in (bench_envs, bench_ddm, bench_dqn, bench_ray, bench_score):
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        sub.set_defaults(handler=cmd_bench)

    watch = commands.add_parser("watch", help="replay a run's episodes in a window, play it live, or export video")
    watch.add_argument("run_dir")
    watch.add_argument("--live", action="store_true", help="play new episodes with the latest checkpoint")
    watch.add_argument("--export", metavar="FILE", help="write FILE.mp4 or FILE.gif instead of opening a window")
    watch.add_argument("--episodes", type=int, default=None,
                       help="recorded: only the last N (default all); --live --export: episodes to play (default 1)")
    watch.add_argument("-k", type=int, default=1, help="model-based runs: k-step prediction shown first ([ ] keys)")
    watch.set_defaults(handler=cmd_watch)

    plot = commands.add_parser("plot", help="learning curves of runs as a PNG (seeds of a config: mean and spread)")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or folders of them")
    plot.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png for one run, else learning_curves.png)")
    plot.add_argument("--key", help="metrics.csv column (default: rollout/ep_return, else trial/return)")
    plot.set_defaults(handler=cmd_plot)

    sweep = commands.add_parser("sweep", help="train a grid (and random draws) of overrides over seeds on Ray Tune",
                                epilog=recipes, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("config", nargs="?", help="a YAML path or a recipe name in configs/")
    sweep.add_argument("overrides", nargs="*", help="key.sub=value overrides of every trial")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=A,B,...",
                       help="try each value of KEY; several --grid: every combination")
    sweep.add_argument("--random", action="append", default=[], metavar="KEY=LOW:HIGH[:log]",
                       help="draw KEY uniformly (integers if LOW and HIGH are; :log log-uniform), --samples times")
    sweep.add_argument("--samples", type=int, default=None, help="random draws of the --random keys (default 1)")
    sweep.add_argument("--seeds", type=int, default=1, help="seeds 0..S-1 of every configuration (default 1)")
    sweep.add_argument("--jobs", type=int, default=None, help="trials at once (default: one per CPU of the Ray)")
    sweep.add_argument("--address", default=None, help="run on this Ray cluster (auto, HOST:PORT)")
    sweep.add_argument("--resume", metavar="SWEEP_DIR", help="finish an interrupted sweep")
    sweep.add_argument("--pbt", action="store_true",
                       help="population-based training (dqn): members exploit the best's checkpoint and perturb "
                            "lr, the epsilon schedule and n-step")
    sweep.add_argument("--population", type=int, default=None, help="--pbt: members (default 4)")
    sweep.add_argument("--perturb-every", type=int, default=None, metavar="STEPS",
                       help="--pbt: env steps per round between exploits (default: agent.total_steps / 10)")
    sweep.add_argument("--control", action="store_true",
                       help="--pbt: then train the same members (seeds, first draws) without PBT, and plot both")
    sweep.set_defaults(handler=cmd_sweep)
    return parser


def recipes_epilog() -> str:
    """The recipes in configs/, one a line with what its first comment line says: the end of --help."""
    names = recipe_names()
    width = max(map(len, names), default=0)
    lines = [f"  {name:<{width}}  {recipe_title(CONFIG_DIR / f'{name}.yaml')}".rstrip() for name in names]
    return "\n".join(["recipes in configs/ (CONFIG is one of these names, or a YAML path):", *lines])


def recipe_title(path: Path) -> str:
    """A recipe's first comment line, up to a parenthesis opened after its first words, cut at a word to
    TITLE_WIDTH characters; empty if the file does not start with a comment."""
    lines = path.read_text().splitlines()
    text = lines[0].lstrip("#").strip() if lines and lines[0].startswith("#") else ""
    detail = text.find(" (", 20)
    if detail >= 0:
        text = text[:detail]
    if len(text) > TITLE_WIDTH:
        text = text[:TITLE_WIDTH - 3].rsplit(" ", 1)[0].rstrip(",:;") + "..."
    return text


def cmd_train(args: argparse.Namespace) -> int:
    ray_overrides = []
    if args.workers is not None:
        if args.workers < 1:
            raise ConfigError(f"--workers: must be >= 1 (leave it out to act in this process), got {args.workers}")
        ray_overrides.append(f"ray.workers={args.workers}")
    if args.address is not None:
        ray_overrides.append(f"ray.address={args.address}")
    if args.resume:
        # `train --resume DIR agent.trials=15`: argparse reads the first override as the config
        overrides = [args.config, *args.overrides] if args.config else list(args.overrides)
        if any("=" not in override for override in overrides):
            raise ConfigError(f"train --resume RUN_DIR takes no config (the run keeps its own), got "
                              f"{next(o for o in overrides if '=' not in o)!r}; to give it more trials or steps: "
                              f"train --resume RUN_DIR agent.trials=N (or agent.total_steps=N)")
        if args.workers is not None:
            raise ConfigError("train --resume: --workers cannot change (the replay has a stream per worker env); "
                              "the run keeps its own ray.workers")
        if args.address is not None and load_run_config(args.resume).ray.workers == 0:
            raise ConfigError(f"--address {args.address}: joins a Ray cluster for rollout workers, and this run has "
                              "none (ray.workers is 0): leave --address out")
        if overrides:
            extend_run(args.resume, overrides)
        run_dir = train(resume=args.resume, address=args.address)
    else:
        if not args.config:
            raise ConfigError("train: name a config (a path or a recipe in configs/) or --resume RUN_DIR")
        source = resolve_config_path(args.config)
        config = load_config(str(source), [*args.overrides, *ray_overrides])
        # Without rollout workers a run trains in this process alone: the address would be ignored.
        if args.address is not None and config.ray.workers == 0:
            raise ConfigError(f"--address {args.address}: joins a Ray cluster for rollout workers, and ray.workers "
                              f"is 0: give --workers N as well, or to run trials there use "
                              f"`pixelpilot sweep CONFIG --address {args.address}`")
        run_dir = train(config, source=source)
    print(f"run: {run_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise ConfigError(f"--episodes: must be >= 1, got {args.episodes}")
    agent, config = load_trained_agent(args.run_dir)
    seed = config.seed + EVAL_SEED_OFFSET if args.seed is None else args.seed
    env = make_env(config)
    returns, successes = evaluate(agent, env, args.episodes, seed)
    env.close()
    result = {"episodes": args.episodes, "mean_return": float(returns.mean()), "std_return": float(returns.std()),
              "min_return": float(returns.min()), "max_return": float(returns.max())}
    if successes is not None:
        result["success_rate"] = float(successes.mean())
    if args.json:
        print(json.dumps(result))
    else:
        solved = f", success {result['success_rate']:.0%}" if successes is not None else ""
        print(f"return over {args.episodes} episodes: {result['mean_return']:.2f} ± {result['std_return']:.2f} "
              f"(min {result['min_return']:.2f}, max {result['max_return']:.2f}{solved})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    options = {key: value for key, value in vars(args).items() if key not in ("command", "name", "json", "handler")}
    result = BENCHES[args.name](**options)
    if args.json:
        print(json.dumps(result, default=float))
    else:
        print(format_figures(result))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    written = watch(args.run_dir, live=args.live, export_path=args.export, episodes=args.episodes, k=args.k)
    if written is not None:
        print(f"wrote: {written}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    print(f"wrote: {plot_runs(args.run_dirs, out=args.out, key=args.key)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.pbt:
        return cmd_pbt(args)
    if args.population is not None or args.perturb_every is not None or args.control:
        raise ConfigError("--population, --perturb-every and --control: only with --pbt")
    sweep_dir, rows = sweep(args.config, args.overrides, args.grid, args.random, args.samples, args.seeds,
                            address=args.address, jobs=args.jobs, resume=args.resume)
    print(f"sweep: {sweep_dir}")
    return 1 if any(row.status == "error" for row in rows) else 0


def cmd_pbt(args: argparse.Namespace) -> int:
    if args.grid or args.random or args.samples is not None or args.seeds != 1 or args.resume:
        raise ConfigError("sweep --pbt: takes no --grid, --random, --samples, --seeds or --resume (the members "
                          "draw their own hyperparameters and seeds)")
    if not args.config:
        raise ConfigError("sweep --pbt: name a config (a path or a recipe in configs/)")
    sweep_dir, rows = pbt(args.config, args.overrides, 4 if args.population is None else args.population,
                          args.perturb_every, address=args.address, jobs=args.jobs, control=args.control)
    print(f"sweep: {sweep_dir}")
    return 1 if any(row["status"].startswith("error") for row in rows) else 0


def figure(value: float) -> str:
    """A measured figure: three significant digits below 100 (a ratio of 0.87 against a goal of 0.9 must not
    read 0.9), one decimal above, with thousands separators."""
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.1f}"


def format_figures(result: dict, indent: str = "") -> str:
    """A bench result as indented ``key: value`` lines, the headline ratio last."""
    lines = []
    for key, value in result.items():
        if key == "ratio":
            continue
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines.append(format_figures(value, indent + "  "))
        else:
            shown = figure(value) if isinstance(value, float) else value
            lines.append(f"{indent}{key}: {shown}")
    if "ratio" in result:
        if result["ratio"] is None:
            lines.append(f"{indent}ratio: none (neither side reached success)")
        else:
            bound = {"lower": ">", "upper": "<"}.get(result.get("ratio_bound"), "")
            lines.append(f"{indent}ratio: {bound}{figure(result['ratio'])}x")
    return "\n".join(lines)

