"""`pixelpilot bench ddm`: trials to success of the DDM agent over seeds, against SB3's frames, and model quality.

    bench_ddm()                     5 seeds of configs/ddm_pendulum.yaml, SB3 figures from agents/ddm/baselines/
    bench_ddm(controller="policy")  the same with the learned feedback policy
    compare_model_quality()         joint DDM vs auto-encoder-then-dynamics on the same frames

The SB3 PPO baseline of each env (SB3_BASELINES: the pendulum's, cart-pole balance's and swing-up's) is run once
(`rerun_sb3=True` runs its config again: configs/sb3_ppo_pendulum.yaml takes about 16 minutes on a 2-core CPU)
and its figures are stored with the command that made them; `ratio` is SB3's frames to its first
success over the DDM agent's mean frames to success. `ratio_bound` says how to read it: "exact"; "lower"
when SB3 never succeeded within its budget (the budget stands in, the ratio reads "more than"); "upper"
when a DDM seed never succeeded (its frames used stand in, "less than"); null, with no ratio, for both.

The value-based rows (DQN and Rainbow with five discrete torques, configs/dqn_pendulum.yaml and
rainbow_pendulum.yaml) are stored the same way, per seed (`rerun_dqn=True`: 3 seeds of each, about 1.5 hours on
one core); `value_based` in the result holds them with their frames to first success. `sac` is SB3 SAC's stored
run (agents/ddm/baselines/sb3_sac_pendulum.json, made on the GPU machine; not rerun here).

`best_model_free` compares the DDM agent with the fewest frames any stored model-free row needed: each row's
frames to success (a row with unsolved seeds: its solved seeds' mean, too few; a row that never succeeded: its
budget, too few), the smallest one, and the ratio, bounded as `ratio_bound` says.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from agents.core.agent import train
from agents.core.bench import hardware
from agents.core.config import ConfigError, TrainConfig, config_from_dict, config_to_dict, load_config, merge
from agents.core.envs import make_env
from agents.ddm.agent import DDMAgent
from agents.ddm.data import TrialBuffer, Windows
from agents.ddm.fits import Fit, optimise
from agents.tune.tasks import map_tasks, ray_session, sigterm_as_ctrl_c
from nets.ddm import DeepDynamicalModel, prediction_errors

BASELINES = Path(__file__).resolve().parent / "baselines"
HELD_WITHIN = 10  # the headline: seeds whose pendulum is held (the env's success) within this many trials
PENDULUM = "pixelpilot/Pendulum-v0"
# Each env's stored SB3 PPO run (agents/ddm/baselines/) and the config `--rerun-sb3` trains it with: the frame
# ratio of a DDM recipe is against the baseline of its own env (none for an env not listed). The SAC and
# value-based rows are the pendulum's only.
SB3_BASELINES = {
    PENDULUM: ("sb3_pendulum.json", "configs/sb3_ppo_pendulum.yaml"),
    "pixelpilot/CartPoleBalance-v0": ("sb3_cartpole_balance.json", "configs/sb3_ppo_cartpole_balance.yaml"),
    "pixelpilot/CartPoleSwingUp-v0": ("sb3_cartpole_swingup.json", "configs/sb3_ppo_cartpole_swingup.yaml"),
}
SB3_RESULT = BASELINES / SB3_BASELINES[PENDULUM][0]
SAC_RESULT = BASELINES / "sb3_sac_pendulum.json"  # SB3 SAC (configs/sb3_sac_pendulum.yaml)
SB3_CONFIG = SB3_BASELINES[PENDULUM][1]
VALUE_BASED = {"dqn": "dqn_pendulum", "rainbow": "rainbow_pendulum"}  # row name -> config, stored as
VALUE_BASED_RESULT = BASELINES / "{config}.json"  # agents/ddm/baselines/<config>.json
VALUE_BASED_SEEDS = 3
VALUE_BASED_BUDGET = 40_000  # frames per seed


def run_seed(config_name: str, seed: int, overrides: Sequence[str], runs_dir: str) -> dict:
    """One agent run in-process (its run directory under `runs_dir`): its summary.json."""
    config = load_config(config_name, [f"seed={seed}", f"train.runs_dir={runs_dir}", *overrides])
    return json.loads((train(config, quiet=True) / "summary.json").read_text())


def run_seed_task(config_data: dict) -> dict:
    """One agent run as a Ray task: the config as plain data (so a cluster node needs no config file), one torch
    thread (parallel seeds share the cores), its run directory in a temporary folder of the node it runs on
    (under the config's train.runs_dir instead when that is not the default, `runs`: bench_ddm's `runs_dir`)."""
    torch.set_num_threads(1)
    if config_data["train"]["runs_dir"] != TrainConfig().runs_dir:
        return json.loads((train(config_from_dict(config_data), quiet=True) / "summary.json").read_text())
    with tempfile.TemporaryDirectory() as runs_dir:
        config = config_from_dict(merge(config_data, {"train": {"runs_dir": runs_dir}}))
        return json.loads((train(config, quiet=True) / "summary.json").read_text())


def seed_list(seeds: int | str | Sequence[int], start: int = 0) -> list[int]:
    """The seeds a bench runs: ``5`` (with ``start``: start..start+4), ``"1000-1019"`` (a block, both ends
    included), ``"3,7,11"``, or a list. A malformed or empty block is a ConfigError naming ``--seeds``."""
    text = str(seeds).strip()
    if isinstance(seeds, (list, tuple)):
        chosen = [int(seed) for seed in seeds]
    elif "-" in text.lstrip("-"):
        first, last = _integers(text, text.split("-", 1))
        chosen = list(range(first, last + 1))
        if not chosen:
            raise ConfigError(f"--seeds {text}: an empty block (the first seed is after the last)")
    elif "," in text:
        chosen = _integers(text, text.split(","))
    else:
        [count] = _integers(text, [text])
        if count < 1:
            raise ConfigError(f"--seeds {text}: must be >= 1")
        chosen = list(range(start, start + count))
    if not chosen or min(chosen) < 0 or len(set(chosen)) != len(chosen):
        raise ConfigError(f"--seeds {seeds}: expected distinct seeds >= 0, got {chosen}")
    return chosen


def _integers(text: str, items: Sequence[str]) -> list[int]:
    try:
        return [int(item) for item in items]
    except ValueError:  # (ConfigError is a ValueError: raised here, outside the try)
        pass
    raise ConfigError(f"--seeds {text}: expected a count (5), a block (1000-1019) or a list (3,7,11)")


def run_seeds(config_name: str, seeds: int | Sequence[int], overrides: Sequence[str], runs_dir: str, jobs: int = 1,
              address: str | None = None, keep: bool = False) -> list[dict]:
    """Seeds of a config (a count: 0..seeds-1; or the seeds themselves): their summary.json, in seed order.

    jobs 1 and no address: one after another in this process, run directories under `runs_dir`. Otherwise as
    Ray tasks, `jobs` at once, on an embedded Ray of `jobs` CPUs or the cluster at `address`; Ctrl-C or SIGTERM
    cancels them (their workers are killed) and the embedded Ray is shut down before the command ends. `keep`: the
    Ray tasks too write their run directories under `runs_dir` (of the node each runs on), not a temporary one."""
    seeds = seed_list(seeds)
    if jobs == 1 and address is None:
        return [run_seed(config_name, seed, overrides, runs_dir) for seed in seeds]

    kept = [f"train.runs_dir={Path(runs_dir).resolve()}"] if keep else []
    configs = [config_to_dict(load_config(config_name, [f"seed={seed}", *overrides, *kept])) for seed in seeds]
    with sigterm_as_ctrl_c(), ray_session(address, num_cpus=jobs):
        return map_tasks(run_seed_task, configs, jobs)


def read_sb3_result(path: Path = SB3_RESULT) -> dict | None:
    """The stored SB3 figures: frames to its first success (None if it never succeeded), its budget, command."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    keys = ("algo", "setup", "frame_budget", "frames_to_first_success", "wall_s", "hardware", "command")
    result = {key: data.get(key) for key in keys}
    run_summary = data.get("run_summary", {})
    # The run's summary.json: since 2026-12-06 frames_to_first_success is its first training success (the evaluated
    # one is eval_frames_to_first_success); the stored run before that named it frames_to_first_training_success.
    training_key = "frames_to_first_success" if "eval_frames_to_first_success" in run_summary else \
        "frames_to_first_training_success"
    result["frames_to_first_training_success"] = run_summary.get(training_key)
    return result


def rerun_sb3_baseline(path: Path = SB3_RESULT, config_path: str = SB3_CONFIG,
                       ddm_config: str = "ddm_pendulum") -> dict:
    """Train SB3 with `config_path` (the pendulum's: configs/sb3_ppo_pendulum.yaml) and store its figures (and the
    command that reruns it: `bench ddm --config ddm_config --rerun-sb3`) in `path`."""
    with tempfile.TemporaryDirectory() as runs_dir:
        config = load_config(config_path, [f"train.runs_dir={runs_dir}"])
        started = time.time()
        summary = json.loads((train(config, quiet=True) / "summary.json").read_text())  # --json: one object
    result = {"algo": config.agent.algo, "env_id": config.env.id, "env_kwargs": config.env.kwargs,
              "frame_budget": summary["env_steps"],
              "frames_to_first_success": summary.get("eval_frames_to_first_success"),  # the first evaluated success
              "wall_s": round(time.time() - started, 1), "hardware": json.dumps(hardware()),
              "date": time.strftime("%Y-%m-%d"),
              "command": f"pixelpilot bench ddm --config {ddm_config} --rerun-sb3 (pixelpilot train {config_path})",
              "definition": "frames = training env steps summed over the envs. frames_to_first_success: env steps at "
                            "the first evaluation (every agent.eval_every steps, agent.eval_episodes deterministic "
                            "episodes, their frames not counted) in which an episode met the env's is_success; "
                            "null: none within the budget",
              "run_summary": summary}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return read_sb3_result(path)


def rerun_value_based(name: str, seeds: int = VALUE_BASED_SEEDS, budget: int = VALUE_BASED_BUDGET,
                      jobs: int = 1, address: str | None = None) -> dict:
    """Train the value-based row `name` (a key of VALUE_BASED) for `seeds` seeds of `budget` frames and store
    each seed's frames to its first successful training episode (None: none within the budget). `jobs` and
    `address` as for run_seeds."""
    config = VALUE_BASED[name]
    overrides = [f"agent.total_steps={budget}"]
    started = time.time()
    with tempfile.TemporaryDirectory() as runs_dir:
        summaries = run_seeds(config, seeds, overrides, runs_dir, jobs, address)
    first = [summary.get("frames_to_first_success") for summary in summaries]
    result = {"config": f"configs/{config}.yaml", "frame_budget": budget, "seeds": list(range(seeds)),
              "frames_to_first_success": first, "solved_seeds": sum(frames is not None for frames in first),
              "final_success_rate": [summary.get("success_rate") for summary in summaries],
              "mean_return": [round(summary["mean_return"], 1) for summary in summaries],
              "wall_s": round(time.time() - started, 1), "hardware": json.dumps(hardware()),
              "date": time.strftime("%Y-%m-%d"),
              "command": f"pixelpilot bench ddm --rerun-dqn (pixelpilot train configs/{config}.yaml seed=N "
                         f"agent.total_steps={budget}, N = 0..{seeds - 1})",
              "definition": "frames = env steps of training; frames_to_first_success: env steps when a training "
                            "episode (epsilon-greedy, or noisy for Rainbow) first met the env's is_success (pole "
                            "within 20 deg of upright in each of the last 20 of 100 frames); null: not within the "
                            "budget. final_success_rate: over the last 100 training episodes.",
              "run_summaries": summaries}
    path = Path(str(VALUE_BASED_RESULT).format(config=config))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return read_value_based()[name]


def read_value_based() -> dict:
    """The stored value-based rows that exist: name -> frames to first success per seed, budget, command."""
    rows = {}
    for name, config in VALUE_BASED.items():
        path = Path(str(VALUE_BASED_RESULT).format(config=config))
        if path.exists():
            data = json.loads(path.read_text())
            solved = [frames for frames in data["frames_to_first_success"] if frames is not None]
            rows[name] = {key: data[key] for key in ("config", "frame_budget", "frames_to_first_success",
                                                      "solved_seeds", "command", "date")}
            rows[name]["frames_mean_solved"] = float(np.mean(solved)) if solved else None
    return rows


def value_based_rows(ddm_frames: float, ddm_solved: bool) -> dict:
    """The stored value-based rows, each with `ratio`: its solved seeds' mean frames to first success over the
    DDM agent's mean frames (only when every DDM seed succeeded). A value-based seed that never succeeded is left
    out of its mean, too few frames: `ratio_bound` "lower" then, else "exact"."""
    rows = read_value_based()
    for row in rows.values():
        if row["frames_mean_solved"] is not None and ddm_solved:
            row["ratio"] = row["frames_mean_solved"] / ddm_frames
            row["ratio_bound"] = "exact" if row["solved_seeds"] == len(row["frames_to_first_success"]) else "lower"
    return rows


def model_free_frames(result: dict) -> dict[str, tuple[float, bool]]:
    """Each stored model-free row of a bench result: (frames to success, whether every seed of it succeeded). A
    row that never succeeded gives its budget (its frames to success are more than that)."""
    rows = {}
    for name in ("sb3", "sac"):
        if result.get(name) is not None:
            frames = result[name]["frames_to_first_success"]
            rows[result[name]["algo"]] = (float(frames if frames is not None else result[name]["frame_budget"]),
                                          frames is not None)
    for name, row in result.get("value_based", {}).items():
        solved = row["frames_mean_solved"]
        rows[name] = (float(solved if solved is not None else row["frame_budget"]),
                      row["solved_seeds"] == len(row["frames_to_first_success"]))
    return rows


def best_model_free(rows: dict[str, tuple[float, bool]], ddm_frames: float, ddm_solved: bool) -> dict | None:
    """The model-free row with the fewest frames (see `model_free_frames`) and the DDM agent's ratio against it:
    "exact", "lower" when that row's figure is too few (unsolved seeds), "upper" when a DDM seed never succeeded,
    null (no ratio) for both. None without rows."""
    if not rows:
        return None
    name, (frames, complete) = min(rows.items(), key=lambda item: item[1][0])
    bound = {(True, True): "exact", (False, True): "lower", (True, False): "upper", (False, False): None}[
        (complete, ddm_solved)]
    return {"row": name, "frames": frames, "complete": complete, "ratio": frames / ddm_frames if bound else None,
            "ratio_bound": bound}


def frame_ratio(sb3_frames: int | None, sb3_budget: int, ddm_frames: float, ddm_solved: bool
                ) -> tuple[float | None, str | None]:
    """SB3's frames to success over the DDM agent's, and how to read it ("exact", "lower", "upper", None).

    SB3 never succeeding (``sb3_frames`` None) puts its budget in its place, too few: a lower bound. A DDM
    seed never succeeding puts the frames it used in their place, too few: an upper bound. Both at once
    bound nothing, and no ratio is claimed.
    """
    bound = {(True, True): "exact", (False, True): "lower", (True, False): "upper", (False, False): None}[
        (sb3_frames is not None, ddm_solved)]
    if bound is None:
        return None, None
    return float(sb3_frames if sb3_frames is not None else sb3_budget) / ddm_frames, bound


def bench_ddm(
    seeds: int | str | Sequence[int] = 5,
    seed_start: int = 0,
    controller: str | None = None,
    rerun_sb3: bool = False,
    rerun_dqn: bool = False,
    config: str = "ddm_pendulum",
    overrides: Sequence[str] = (),
    model_quality: bool = True,
    jobs: int = 1,
    address: str | None = None,
    runs_dir: str | None = None,
) -> dict:
    """Trials to success per seed, frames, wall time per trial, SB3's figures and the frame ratio.

    `jobs` > 1 runs that many seeds at once as Ray tasks, each with one torch thread (so wall times per trial
    are those of one core, with the other jobs beside it); `address` runs them on that Ray cluster. `runs_dir`
    keeps the seeds' run directories there (otherwise in a temporary folder, removed at the end). `seeds`: a
    count (from `seed_start`), a block "1000-1019" or a list (see seed_list), so a fresh block is one command."""
    if jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {jobs}")
    seeds = seed_list(seeds, seed_start)
    overrides = [*overrides] + ([f"agent.controller={controller}"] if controller else [])
    run_config = load_config(config, overrides)  # bad overrides fail here, before any seed runs
    agent_config, env_id = run_config.agent, run_config.env.id
    if agent_config.kind != "ddm":
        raise ConfigError(f"{config}: agent.kind: bench ddm runs the ddm agent, got {agent_config.kind!r}")
    if rerun_sb3 and env_id not in SB3_BASELINES:
        raise ConfigError(f"--rerun-sb3: no SB3 baseline config for env.id {env_id} (there are: "
                          f"{', '.join(SB3_BASELINES)})")
    if rerun_dqn and env_id != PENDULUM:
        raise ConfigError(f"--rerun-dqn: the value-based rows are the pendulum's ({PENDULUM}), not {env_id}'s")
    per_seed = []
    with tempfile.TemporaryDirectory() as temporary:
        summaries = run_seeds(config, seeds, overrides, runs_dir or temporary, jobs, address, keep=runs_dir is not None)
        for seed, summary in zip(seeds, summaries, strict=True):
            per_seed.append({"seed": seed, "trials_to_success": summary["success_trial"],
                             "frames": summary["env_steps"], "wall_s": summary["wall_s"],
                             "wall_per_trial_s": summary["wall_s"] / summary["episodes"],
                             "returns": summary["returns"]})
    solved = [item for item in per_seed if item["trials_to_success"] is not None]
    # A seed that never succeeded counts with all its frames, fewer than it would need.
    ddm_frames = float(np.mean([item["frames"] for item in per_seed]))
    # The median of trials to success, an unsolved seed counted as its budget + 1 (above every solved one).
    trials = [item["trials_to_success"] or agent_config.trials + 1 for item in per_seed]
    result = {
        "config": config, "env_id": env_id, "controller": agent_config.controller, "overrides": list(overrides),
        "seeds": seeds, "solved_seeds": len(solved),
        "held_within_10": sum(item["trials_to_success"] <= HELD_WITHIN for item in solved),
        "median_trials": float(np.median(trials)),
        "trials_to_success": [item["trials_to_success"] for item in per_seed],
        "frames_per_seed": [item["frames"] for item in per_seed],
        "ddm_frames_mean": ddm_frames,
        "wall_per_trial_s": float(np.mean([item["wall_per_trial_s"] for item in per_seed])),
        "wall_per_seed_s": [round(item["wall_s"], 1) for item in per_seed],
        "jobs": jobs,
        # per job; on a cluster (address) the seeds ran on its nodes, not on this machine
        "hardware": {**hardware(), **({"torch_threads": 1} if jobs > 1 or address else {})},
    }
    pendulum = env_id == PENDULUM
    sac = read_sb3_result(SAC_RESULT) if pendulum else None
    if sac is not None:
        result["sac"] = sac
        result["sac"]["ratio"], result["sac"]["ratio_bound"] = frame_ratio(
            sac["frames_to_first_success"], sac["frame_budget"], ddm_frames, len(solved) == len(seeds))
    sb3 = None
    if env_id in SB3_BASELINES:
        name, sb3_config = SB3_BASELINES[env_id]
        sb3 = rerun_sb3_baseline(BASELINES / name, sb3_config, config) if rerun_sb3 else \
            read_sb3_result(BASELINES / name)
    if sb3 is None:
        result["sb3_missing"] = f"no SB3 baseline stored for {env_id} (agents/ddm/baselines/): no frame ratio"
    else:
        result["sb3"] = sb3
        result["ratio"], result["ratio_bound"] = frame_ratio(
            sb3["frames_to_first_success"], sb3["frame_budget"], ddm_frames, len(solved) == len(seeds))
        if sb3["frames_to_first_training_success"] is not None:
            # SB3's first success by a (stochastic) training episode, the most favourable figure for SB3.
            result["ratio_vs_sb3_first_training_success"] = (
                sb3["frames_to_first_training_success"] / ddm_frames if result["ratio_bound"] else None)
    if rerun_dqn:
        for name in VALUE_BASED:
            rerun_value_based(name, jobs=jobs, address=address)
    value_based = value_based_rows(ddm_frames, len(solved) == len(seeds)) if pendulum else {}
    if value_based:
        result["value_based"] = value_based
    best = best_model_free(model_free_frames(result), ddm_frames, len(solved) == len(seeds))
    if best is not None:
        result["best_model_free"] = best
    if model_quality:
        result["model_quality"] = compare_model_quality(config=config, overrides=overrides)
    return result


def compare_model_quality(
    config: str = "ddm_pendulum",
    overrides: Sequence[str] = (),
    seed: int = 0,
    train_trials: int = 5,
    test_trials: int = 2,
    updates: int = 1500,
    steps: Sequence[int] = (1, 5, 10),
) -> dict:
    """Multi-step pixel prediction error (MSE, pixels in [0, 1]) on held-out trials of two models fitted
    to the same random trials with the same networks and number of updates:

    joint:       the DDM's joint loss (reconstruction + multi-step latent and pixel prediction + reward)
    sequential:  the auto-encoder alone (reconstruction), then the transition and reward on its frozen latents

    `overrides` (the bench's) shape both models' networks alike.
    """
    results = {}
    for variant in ("joint", "sequential"):
        run_config = load_config(config, [*overrides, f"seed={seed}"])
        agent = DDMAgent(run_config, torch.device("cpu"))
        env = make_env(run_config)
        trials = [agent.play(env, seed=seed * 1000 + index, controlled=False)[0]
                  for index in range(train_trials + test_trials)]
        env.close()
        buffer = TrialBuffer.of(trials[:train_trials])
        fit = run_config.agent.fit
        started = time.time()
        if variant == "joint":
            fit.joint(agent.model, agent.model_optimizer, buffer, updates)
        else:
            fit_separately(agent.model, fit, buffer, updates)
        errors = []
        for trial in trials[train_trials:]:
            frames = torch.from_numpy(trial.frames)
            predictions = agent.model.predict_frames(frames, torch.from_numpy(trial.actions), max(steps))
            errors.append(prediction_errors(predictions, frames, steps, agent.model.context))
        results[variant] = {f"error_{k}": float(np.mean([item[k] for item in errors])) for k in steps}
        results[variant]["train_s"] = round(time.time() - started, 1)
    return results


def fit_separately(model: DeepDynamicalModel, fit: Fit, buffer: TrialBuffer, updates: int) -> None:
    """The baseline the joint fit is compared with: `updates` updates of the auto-encoder on reconstruction
    alone, then `updates` of the transition and reward head on the joint loss's latent and reward terms, the
    encoder frozen (the same windows, batch size, learning-rate schedule and gradient clipping as the joint
    fit)."""
    length = model.context + fit.prediction_horizon
    phases = (([*model.encoder.parameters(), *model.decoder.parameters()], ("reconstruction",)),
              ([*model.transition_net.parameters(), *model.reward_net.parameters()], ("prediction_latent", "reward")))
    weights = {"reconstruction": 1.0, "prediction_latent": fit.latent_weight, "reward": fit.reward_weight}
    model.train()
    for parameters, terms in phases:
        def loss(windows: Windows, update: int, terms: tuple[str, ...] = terms) -> tuple[torch.Tensor, dict]:
            values = model.loss(*windows, latent_weight=fit.latent_weight, reward_weight=fit.reward_weight)
            return sum(weights[name] * getattr(values, name) for name in terms), {}

        optimizer = torch.optim.Adam(parameters, lr=fit.lr)
        optimise(updates, lambda: buffer.sample(length, fit.batch_size, fit.focus), loss, optimizer,
                 fit.scheduler(optimizer, updates), clip=(list(model.parameters()), 100.0))
    model.eval()
