"""peel sweep CONFIG --grid key=v1,v2 [--grid ...] [--slurm key=value ...] [--local] | peel sweep --status DIR"""

from __future__ import annotations

import argparse

HELP = "Run a grid of configs: one run folder per point, here one after another or as Slurm jobs."
DESCRIPTION = """\
Expand --grid values into run folders under the config's output_dir, named after the swept
values (remove_coef=10,retain_coef=5, ...). With --local they run one after another in this
process; otherwise each is submitted through submitit as a Slurm job that runs torchrun across
its nodes and GPUs (preempted or timed-out jobs are requeued and resume from their checkpoint).
Running the sweep again skips completed runs and runs already submitted.

examples:
  peel sweep configs/lora_l2_retain.yaml --grid unlearn.remove_coef=10,20,30,40,50 --grid unlearn.retain_coef=5,50 \\
      --slurm partition=gpu --slurm gpus_per_node=4 --slurm time=12:00:00 --slurm account=myproject
  peel sweep configs/testbed_lora.yaml --grid train.lr=1e-4,5e-4 --local
  peel sweep --status runs/lora_l2_retain
  peel report runs/lora_l2_retain/*=*

--slurm keys: nodes, gpus_per_node (default 1), partition, time (minutes or [D-]HH:MM:SS,
default 240), account, qos, constraint, cpus_per_task (default 4 per GPU), mem_gb, cluster
(slurm, or submitit's local / debug executors for trying a sweep without a cluster).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config file; its output_dir becomes the sweep folder.")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="Dotted config overrides shared by every run.")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="A swept key and its values; repeat for more keys (every combination runs).")
    parser.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE", help="A Slurm job setting; repeat for more.")
    parser.add_argument("--local", action="store_true", help="Run every run in this process, one after another.")
    parser.add_argument("--status", metavar="DIR", help="List the runs of the sweep in DIR with their state.")
    parser.add_argument("--dry-run", action="store_true",
                        help="Check every run as peel unlearn --dry-run does, print the shared settings, each run's "
                        "swept values and steps, and the sweep's size (runs, steps, estimated evaluations); write nothing.")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peel import distributed, sweep
    from peel.runs import jobs
    from peel.errors import PeelError

    if args.status:
        if args.config or args.grid:
            raise PeelError("--status DIR takes no config or --grid")
        rows = sweep.status(Path(args.status))
        width = max(len(row["run"]) for row in rows)
        print(f"{'run':<{width}}  {'state':<9}  {'job':<12}  steps")
        for row in rows:
            print(f"{row['run']:<{width}}  {row['state']:<9}  {row['job']:<12}  {row['steps']}")
        return 0
    if not args.config:
        raise PeelError("give a CONFIG and --grid values, or --status DIR")
    if args.local and args.slurm:
        raise PeelError("--local runs here; --slurm settings are for submitted jobs: give one or the other")

    runs = sweep.plan(args.config, args.overrides, args.grid)
    if args.dry_run:
        from peel.unlearning.dry_run import sweep_lines
        from peel.unlearning.planning import prepare

        if not args.local:
            jobs.slurm_parameters(args.slurm)  # a bad --slurm word is found in a dry run too
        prepared = [prepare(run.config) for run in runs]  # each run checked as peel unlearn --dry-run would
        print("\n".join(["checked, nothing written:", *sweep_lines(runs, prepared, distributed.world_size())]))
        return 0
    if args.local:
        distributed.init()  # under torchrun every process runs each run together
        to_do = sweep.to_do(runs)
        if distributed.is_main():
            sweep.write(runs)
        distributed.barrier()
        failed = sweep.run_locally(to_do)
        return 1 if failed else 0
    parameters = jobs.slurm_parameters(args.slurm)
    executor = jobs.make_executor(Path(runs[0].folder).parent / "jobs", parameters)
    to_do = sweep.to_do(runs)
    sweep.write(runs)
    sweep.submit(to_do, executor, nproc_per_node=max(1, parameters["gpus_per_node"]))
    return 0
