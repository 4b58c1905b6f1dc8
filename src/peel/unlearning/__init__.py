"""The unlearning method: the phase loop (engine.py), the step (gradients.py, objectives.py,
losses.py, filters.py), what trains (weights.py), the schedules and batches, the adversaries, and
the tables through which each method choice describes itself (methods.py)."""
