"""An ensemble's spread: how far its members' predictions part, probed on the pendulum at rest at each angle,
written per trial to spread.csv and drawn as spread.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agents.core.config import RunConfig
from agents.core.envs import make_env
from agents.core.run import atomic_write

SPREAD_ANGLES = np.arange(-180, 180, 5)  # degrees from upright where an ensemble's spread is probed (pendulum)
SPREAD_STEPS = 10  # steps ahead of the probed spread
SPREAD_FILE, SPREAD_PLOT = "spread.csv", "spread.png"  # in the run directory, for an ensemble on the pendulum


def probe_frames(config: RunConfig) -> np.ndarray | None:
    """The frames an ensemble's spread is probed on: for each of SPREAD_ANGLES, the pole at rest there and one
    step later (no torque), `(angles, 2, C, H, W)` (two frames: the model's context on the pendulum). None for an
    env that cannot be reset to an angle (`reset(options={"angle": ...})`, the pixel pendulum's)."""
    env = make_env(config)
    try:
        frames = []
        for angle in SPREAD_ANGLES:
            first, _ = env.reset(seed=0, options={"angle": float(np.deg2rad(angle)), "angular_velocity": 0.0})
            second = env.step(np.zeros(env.action_space.shape, env.action_space.dtype))[0]
            frames.append(np.stack([first, second]))
    except ValueError:  # check_options: this env takes no angle
        return None
    finally:
        env.close()
    return np.stack(frames)


def append_spread(path: Path, trial: int, spread: np.ndarray) -> None:
    """One row of spread.csv: the trial and the spread at each of SPREAD_ANGLES (the header names them)."""
    new = not path.exists()
    with path.open("a") as file:
        if new:
            file.write("trial," + ",".join(f"{angle}" for angle in SPREAD_ANGLES) + "\n")
        file.write(f"{trial}," + ",".join(f"{value:.5g}" for value in spread) + "\n")


def plot_spread(path: Path, out: Path) -> Path:
    """spread.png: the ensemble's spread against the pole's angle, one line per controlled trial (light: early,
    dark: late). Written to a temporary name, then renamed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    angles = np.asarray(path.read_text().splitlines()[0].split(",")[1:], dtype=float)
    figure, axes = plt.subplots(figsize=(7, 4))
    colours = plt.cm.viridis(np.linspace(0.9, 0.0, len(table)))
    for row, colour in zip(table, colours, strict=True):
        axes.plot(angles, row[1:], color=colour, label=f"after trial {int(row[0]) - 1}")
    axes.set_xlabel("pole angle from upright (degrees), at rest")
    axes.set_ylabel(f"members' spread, {SPREAD_STEPS} steps ahead\n(latent std units)")
    axes.set_title("Where the ensemble disagrees")
    axes.legend(fontsize=7)
    figure.tight_layout()
    atomic_write(out, lambda file: figure.savefig(file, format="png", dpi=100))
    plt.close(figure)
    return out
