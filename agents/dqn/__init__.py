"""DQN and Rainbow (agent.py), its replay memory (replay.py), acting (actor.py), Ape-X rollout workers on Ray
(distributed.py) and its benchmarks (bench.py: env steps/s against SB3; bench_ray.py: rollout workers' scaling)."""

from agents.dqn.agent import DQNAgent

__all__ = ["DQNAgent"]
