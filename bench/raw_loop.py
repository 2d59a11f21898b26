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

Prints one JSON line: ``steps``, ``train_s`` (time inside training epochs, validation excluded),
``first_step_s`` (process start to the end of the first optimizer step) and ``test_acc``.

    python bench/raw_loop.py --model lenet5 --epochs 10 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time

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


def synthetic(seed: int, channels: int, size: int) -> dict[str, tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    n = {"train": 1440, "val": 160, "test": 400}  # 2,000 images split as data=synthetic does
    return {
        split: (torch.rand(k, channels, size, size, generator=g), torch.randint(0, 10, (k,), generator=g))
        for split, k in n.items()
    }


def network(name: str, channels: int) -> nn.Module:
    if name == "lenet5":  # conf/model/lenet5.yaml
        from ablab.models import LeNet5

        return LeNet5(in_channels=channels, num_classes=10, act="sigmoid", c1_padding=2)
    from ablab.models import ResNet  # conf/model/resnet20.yaml

    return ResNet(in_channels=channels, num_classes=10, block="basic", depths=[3, 3, 3],
                  widths=[16, 32, 64], stem="cifar", stem_width=16, norm="bn", act="relu",
                  shortcut="identity_pad")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["lenet5", "resnet20"], default="lenet5")
    parser.add_argument("--data", choices=["digits", "synthetic"], default="digits")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    splits = digits(args.seed) if args.data == "digits" else synthetic(args.seed, args.channels, args.size)
    x_train = splits["train"][0]
    mean = x_train.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = x_train.std(dim=(0, 2, 3)).clamp_min(1e-6).view(1, -1, 1, 1)
    net = network(args.model, args.channels)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / args.epochs))
    )
    order = torch.Generator().manual_seed(args.seed)

    def accuracy(split: str, model: nn.Module) -> float:
        model.eval()
        x, y = splits[split]
        correct = 0
        with torch.no_grad():
            for i in range(0, len(y), args.batch):
                logits = model((x[i : i + args.batch] - mean) / std)
                correct += int((logits.argmax(1) == y[i : i + args.batch]).sum())
        return correct / len(y)

    steps, train_s, first_step_s, best, best_state = 0, 0.0, None, -1.0, None
    for _ in range(args.epochs):
        net.train()
        tic = time.perf_counter()
        x, y = splits["train"]
        perm = torch.randperm(len(y), generator=order)
        for i in range(0, len(y), args.batch):
            idx = perm[i : i + args.batch]
            loss = F.cross_entropy(net((x[idx] - mean) / std), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if first_step_s is None:
                first_step_s = time.time() - START
        schedule.step()
        train_s += time.perf_counter() - tic
        acc = accuracy("val", net)
        if acc > best:
            best, best_state = acc, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    result = {
        "steps": steps,
        "train_s": train_s,
        "first_step_s": first_step_s,
        "test_acc": accuracy("test", net),
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
