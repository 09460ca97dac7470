"""Times the authors' full CAFE training step in PyTorch (ResNet-18 mask generator forward
+ backward + Adam, the CLIP feature given) on random inputs. `gfer bench train --python`
runs it beside gfer's step and prints the ratio; it prints one JSON line.

    python bench_train_step.py BATCH STEPS SIDE
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
setup_seed(3407)
model = Model([64, 128, 256, 512], 512, 7).train()
optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-4)
images = torch.randn(batch, 3, side, side)
features = 0.5 * torch.randn(batch, 512)
labels = torch.arange(batch) % 7
times = []
for step in range(steps + 1):
    drop = Mask(512, 7, 10)
    start = time.perf_counter()
    output, (loss_sep, loss_div) = model(images, features, labels, drop, phase="train")
    loss = nn.CrossEntropyLoss()(output, labels) + 5 * loss_div + 1.5 * loss_sep
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step > 0:  # the first step warms up
        times.append(time.perf_counter() - start)
times.sort()
print(json.dumps({
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "seconds_per_step": times[len(times) // 2],
}))
