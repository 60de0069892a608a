"""What a person looks at: the pygame viewer of a run (watch.py) and learning curves (plot.py)."""
