"""Times the authors' full CAFE training step in PyTorch (ResNet-18 mask generator forward
+ backward + Adam, the CLIP feature given) on random inputs. `gfer bench train --python`
runs it beside gfer's step and prints the ratio; it prints one JSON line.

    python bench_train_step.py BATCH STEPS SIDE [DEVICE]

DEVICE is PyTorch's (`cpu`, the default, or `cuda`, `cuda:N`). On a GPU the step runs with
PyTorch's defaults, as the authors' training did: cuDNN's convolutions may use TF32
(`torch.backends.cudnn.allow_tf32`, reported), cuDNN's autotuning is off; each timed step
ends with `torch.cuda.synchronize()`.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # beside reference/
import torch
import torch.nn as nn
from reference.cafe import Mask, Model, setup_seed

batch, steps, side = (int(a) for a in sys.argv[1:4])
device = torch.device(sys.argv[4] if len(sys.argv) > 4 else "cpu")
cuda = device.type == "cuda"


def sync():
    if cuda:
        torch.cuda.synchronize(device)


setup_seed(3407)
model = Model([64, 128, 256, 512], 512, 7).train().to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-4)
images = torch.randn(batch, 3, side, side).to(device)
features = (0.5 * torch.randn(batch, 512)).to(device)
labels = (torch.arange(batch) % 7).to(device)
times = []
for step in range(steps + 1):
    drop = Mask(512, 7, 10).to(device)
    sync()
    start = time.perf_counter()
    output, (loss_sep, loss_div) = model(images, features, labels, drop, phase="train")
    loss = nn.CrossEntropyLoss()(output, labels) + 5 * loss_div + 1.5 * loss_sep
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    sync()
    if step > 0:  # the first step warms up
        times.append(time.perf_counter() - start)
times.sort()
print(json.dumps({
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "device": f"{device} ({torch.cuda.get_device_name(device)}, cuDNN TF32 "
              f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'})" if cuda else "cpu",
    "seconds_per_step": times[len(times) // 2],
}))
