"""The deep-dynamical-model agent (Assael, Wahlstroem, Schoen, Deisenroth 2015): agent.py (trials, acting, state),
data.py (trials and their windows), fits.py (model fits), planners.py (CEM, gradient shooting), policy.py (the
feedback policy searched through the model), spread.py (an ensemble's spread) and bench.py (trials to success over
seeds against SB3). baselines/ holds the stored SB3, DQN and Rainbow pendulum results the bench compares against."""

from agents.ddm.agent import DDMAgent

__all__ = ["DDMAgent"]
