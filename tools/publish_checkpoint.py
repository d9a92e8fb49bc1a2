"""Strip a training checkpoint to its weights for shipping, with the run's config beside it.

python tools/publish_checkpoint.py WORK_DIR/iter_N.pth OUT.pth --config WORK_DIR/<run>/config.py
writes OUT.pth (state_dict + meta: source iteration, code version) and OUT.py (the resolved config).
"""

import argparse
import shutil

import torch

from perception4d.engine.checkpoint import mmengine_checkpoint_globals


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--config", required=True)
    a = p.parse_args()
    with mmengine_checkpoint_globals():
        ckpt = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    meta = ckpt.get("meta", {})
    keep_meta = {k: meta[k] for k in ("iter", "epoch", "seed", "mmengine_version", "time") if k in meta}
    keep_meta["source"] = a.checkpoint
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save({"state_dict": state, "meta": keep_meta}, a.out)
    shutil.copyfile(a.config, a.out[:-4] + ".py" if a.out.endswith(".pth") else a.out + ".py")
    print(f"wrote {a.out} ({sum(v.numel() for v in state.values())} values)")


if __name__ == "__main__":
    main()
