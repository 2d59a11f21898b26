"""The hand-written PyTorch loop ablab is measured against (``bench/run.py``, ``make bench``).

The same arithmetic as ``python -m ablab.train`` on the same network class, data, split, batch,
optimizer and schedule, with nothing else: no Lightning, Hydra, MLflow, metrics library, progress
bar or checkpoint files. Every epoch trains on a fresh shuffle and validates (eval mode,
``torch.no_grad``, top-1 accuracy); the best epoch's weights are kept in memory and tested at the
end, as ablab tests its best checkpoint.

- ``--data digits``: scikit-learn's digits, /16, resized to 28 px (bilinear, antialiased, clamped),
  stratified test (0.2) then validation (0.1) splits with ``random_state=seed``, per-channel
  standardisation with training statistics: ``data=digits`` exactly.
- ``--data synthetic``: random images of ``--size`` px and ``--channels`` channels, as many as
  ``data=synthetic`` makes (200 per class, 10 classes; the content does not change the speed).

- ``--device cuda`` with ``--amp bf16``, ``--channels-last``, ``--compile``: what
  ``trainer=gpu trainer.precision=bf16-mixed trainer.channels_last=true trainer.compile=true`` do
  (autocast around forward and loss, channels-last weights and batches, ``torch.compile``). The
  data stays on the CPU and each batch is copied, as ablab's DataLoader batches are.

Prints one JSON line: ``epochs`` (per epoch: ``train_s``, from the epoch's start to the end of its
last optimizer step, validation excluded; ``start`` and ``batch_ends``, ``time.time()`` at the
epoch's start and after each optimizer step, and ``images``, each step's batch size, as
``bench/clock.py`` records ablab's; ``steps``), ``step_s`` (seconds per step over
epochs >= 1: epoch 0 is warm-up, as ``bench/clock.py`` counts ablab's), ``images_per_s`` (the same
epochs), ``start_time`` and ``first_step_time`` (``time.time()`` at process start, before the
imports, and at the end of the first optimizer step), ``models_import_s`` (importing
the network's family from ``ablab.models`` and building it, inside that start-up) and ``test_acc``. On a GPU each epoch's start
and last step synchronise, so queued kernels count in their epoch.

With ``--stop-file PATH`` it stops after the epoch during which PATH appears: ``bench/run.py``
runs it beside an ablab job (a paired measurement) and creates the file when that job has ended.

    python bench/raw_loop.py --model lenet5 --epochs 10 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

START = time.time()  # before the imports: a process's start-up includes them

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402


def digits(seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)
    x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True).clamp_(0.0, 1.0)
    y = torch.from_numpy(bunch.target).long()

    def split(x: Tensor, y: Tensor, fraction: float):
        keep, held = train_test_split(
            torch.arange(len(y)).numpy(), test_size=fraction, stratify=y.numpy(), random_state=seed
        )
        keep, held = torch.as_tensor(keep), torch.as_tensor(held)
        return (x[keep], y[keep]), (x[held], y[held])

    train, test = split(x.contiguous(), y, 0.2)
    train, val = split(*train, 0.1)
    return {"train": train, "val": val, "test": test}


def synthetic(
    seed: int, channels: int, size: int, per_class: int
) -> dict[str, tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    total = 10 * per_class
    test = round(0.2 * total)  # data=synthetic: test_fraction 0.2, then val_fraction 0.1
    val = round(0.1 * (total - test))
    n = {"train": total - test - val, "val": val, "test": test}  # 1440 / 160 / 400 at 200
    return {
        split: (
            torch.rand(k, channels, size, size, generator=g),
            torch.randint(0, 10, (k,), generator=g),
        )
        for split, k in n.items()
    }


def network(name: str, channels: int) -> nn.Module:
    """The network class ablab trains (imported here: ablab.models loads one family at a time,
    so LeNet-5 alone does not import ResNet's blocks and timm)."""
    if name == "lenet5":  # conf/model/lenet5.yaml
        from ablab.models import LeNet5

        return LeNet5(in_channels=channels, num_classes=10, act="sigmoid", c1_padding=2)
    from ablab.models import ResNet

    if name == "resnet18":  # conf/model/resnet18.yaml
        return ResNet(in_channels=channels, num_classes=10, block="basic", depths=[2, 2, 2, 2],
                      widths=[64, 128, 256, 512], stem="imagenet", stem_width=64, norm="bn",
                      act="relu", shortcut="projection")  # fmt: skip
    # conf/model/resnet20.yaml
    return ResNet(in_channels=channels, num_classes=10, block="basic", depths=[3, 3, 3],
                  widths=[16, 32, 64], stem="cifar", stem_width=16, norm="bn", act="relu",
                  shortcut="identity_pad")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["lenet5", "resnet20", "resnet18"], default="lenet5")
    parser.add_argument("--data", choices=["digits", "synthetic"], default="digits")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--per-class", type=int, default=200, help="synthetic images per class")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--barrier", help="a folder: start training with the paired process")
    parser.add_argument(
        "--stop-file",
        help="stop after the epoch during which this file appears (a paired run: the other "
        "process is done); --epochs then only sets the cosine schedule's length",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if args.data == "digits":
        splits = digits(args.seed)
    else:
        splits = synthetic(args.seed, args.channels, args.size, args.per_class)
    x_train = splits["train"][0]
    mean = x_train.mean(dim=(0, 2, 3)).view(1, -1, 1, 1).to(device)
    std = x_train.std(dim=(0, 2, 3)).clamp_min(1e-6).view(1, -1, 1, 1).to(device)
    tic = time.perf_counter()
    net = network(args.model, args.channels)  # timed: importing its family is start-up
    models_import_s = time.perf_counter() - tic
    net = net.to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / args.epochs))
    )
    model = torch.compile(net) if args.compile else net
    order = torch.Generator().manual_seed(args.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def batch(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        return (x - mean) / std, y.to(device, non_blocking=True)

    def accuracy(split: str) -> float:
        model.eval()
        x, y = splits[split]
        correct = 0
        with torch.no_grad(), autocast:
            for i in range(0, len(y), args.batch):
                xb, yb = batch(x[i : i + args.batch], y[i : i + args.batch])
                correct += int((model(xb).argmax(1) == yb).sum())
        return correct / len(y)

    barrier_wait_s = 0.0
    if args.barrier:  # a paired measurement: start training with the other process
        from barrier import meet  # bench/barrier.py, beside this file

        barrier_wait_s = meet(Path(args.barrier), stop=args.stop_file and Path(args.stop_file))
    epochs, first_step_time, best, best_state = [], None, -1.0, None
    for _ in range(args.epochs):
        model.train()
        sync()
        tic, started, batch_ends, images = time.perf_counter(), time.time(), [], []
        x, y = splits["train"]
        perm = torch.randperm(len(y), generator=order)
        steps = 0
        for i in range(0, len(y), args.batch):
            xb, yb = batch(x[perm[i : i + args.batch]], y[perm[i : i + args.batch]])
            with autocast:
                loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if i + args.batch >= len(y):
                sync()  # the epoch's queued kernels end inside its last step, as bench/clock.py
            batch_ends.append(time.time())
            images.append(len(yb))
            if first_step_time is None:
                sync()
                first_step_time = time.time()
        sync()
        epochs.append(
            {"train_s": time.perf_counter() - tic, "start": started, "batch_ends": batch_ends,
             "steps": steps, "images": images}
        )  # fmt: skip
        schedule.step()
        acc = accuracy("val")
        if acc > best:
            best, best_state = acc, copy.deepcopy(net.state_dict())
        if args.stop_file and os.path.exists(args.stop_file):
            break
    net.load_state_dict(best_state)
    timed = epochs[1:] or epochs  # epoch 0 is warm-up (one-epoch runs keep it)
    seconds = sum(e["train_s"] for e in timed)
    result = {
        "epochs": epochs,
        "step_s": seconds / sum(e["steps"] for e in timed),
        "images_per_s": sum(sum(e["images"]) for e in timed) / seconds,
        "start_time": START,
        "first_step_time": first_step_time,
        "models_import_s": models_import_s,
        "barrier_wait_s": barrier_wait_s,
        "test_acc": accuracy("test"),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "pid": os.getpid(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
