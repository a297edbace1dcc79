"""torchrun worker for tests/test_train.py: trains the synthetic preset on 2 gloo ranks, dumps each rank's weights."""

import sys
from pathlib import Path

import torch

from depthg.presets import load_preset
from depthg.training.train import build_training, train


def main(data_dir: str, out: str) -> None:
    import os

    rank = int(os.environ["RANK"])
    cfg = load_preset(
        "synthetic",
        [
            f"data.data_dir={data_dir}",
            "train.iterations=4",
            "train.threads=1",
            "data.batch_size=4",
            "train.checkpoint_every=4",
            "train.device=cpu",
        ],
    )
    if rank == 0:  # the weights every rank starts from after DDP's broadcast (rank 0's init)
        torch.manual_seed(cfg.train.seed)
        model, step, _ = build_training(cfg, torch.device("cpu"))
        torch.save({f"head.{k}": v for k, v in model.head.state_dict().items()}, Path(out) / "init.pt")
    result = {}

    import depthg.training.train as T

    real = T.save_checkpoint

    def spy(run, iteration):  # capture this rank's trained weights at the final save
        result.update({f"head.{k_}": v.clone() for k_, v in run.model.head.state_dict().items()})
        result.update({f"cp.{k_}": v.clone() for k_, v in run.model.cluster_probe.state_dict().items()})
        result.update({f"lp.{k_}": v.clone() for k_, v in run.model.linear_probe.state_dict().items()})
        return real(run, iteration)

    T.save_checkpoint = spy
    train(cfg, run_name="ddp", results_dir=out, progress=False)
    torch.save(result, Path(out) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
