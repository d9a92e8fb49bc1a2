"""Train a model from a config: python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]."""

import argparse

from perception4d.engine.runner import DictAction, train


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("config")
    p.add_argument("--work-dir")
    p.add_argument("--resume", nargs="?", const=True, default=False,
                   help="resume from the latest checkpoint in the work dir, or from the one given")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 autocast) on GPU")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config keys, e.g. a.b=1")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                   help="'pytorch' under torchrun for multi-GPU DDP")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0)
    a = p.parse_args()
    train(a.config, a.work_dir, a.resume, a.cfg_options, a.launcher, a.amp)


if __name__ == "__main__":
    main()
