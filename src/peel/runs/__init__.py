"""A run's life: its folder and the files in it (folder.py), resume, checkpoints, preemption,
tracking, Slurm jobs, the targets a command is pointed at, and the lifecycle every training loop
shares (lifecycle.py)."""
