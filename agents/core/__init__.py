"""The platform core: configs, the agent protocol and registry, envs from configs, the run directory, episodes.

It never imports an agent package, Ray or the user interface; everything above it does import it.
"""
