"""Evaluate a checkpoint: python tools/test.py CONFIG CHECKPOINT [--work-dir DIR]."""

import argparse
import json

from perception4d.engine.runner import DictAction, test


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--work-dir")
    p.add_argument("--cfg-options", nargs="+", action=DictAction)
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--out-json", help="also write the metrics to this JSON file")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0)
    a = p.parse_args()
    metrics = test(a.config, a.checkpoint, a.work_dir, a.cfg_options, a.launcher)
    text = json.dumps(metrics, indent=2, default=float)
    print(text)
    if a.out_json:
        with open(a.out_json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
