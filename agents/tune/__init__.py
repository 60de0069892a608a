"""Distribution: the Ray cluster (cluster.py), Ray tasks (tasks.py), sweeps on Ray Tune (sweep.py) and
population-based training (pbt.py). Sweeps reach agents only through the registry and the protocol."""
