"""PQN (agent.py): Q(lambda) on many envs stepped as one batch, no replay memory, no target network."""

from agents.pqn.agent import PQNAgent

__all__ = ["PQNAgent"]
