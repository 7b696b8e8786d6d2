"""PyTorch eager build of ../shared/spec/MODEL.md, timing BENCH.md's model workloads.

A peer measurement, not part of the product: run it beside `dilaseg bench`
on the same machine and compare medians taken in the same session.

    python3 docs/measure/torch_bench.py [--device cuda|cpu] [--threads N] [--tf32]
"""
import argparse
import json
import statistics
import time

import torch
from torch import nn

PRESETS = {
    "lungnet": dict(width=32, norm="instance", residual=False, dropout=0.5, head=(128, 32), out=2, loss="ce"),
    "seo2018": dict(width=3, norm="batch", residual=True, dropout=0.0, head=(3, 3), out=1, loss="mse"),
}
DILATIONS = (1, 1, 2, 3, 5, 8, 13, 21, 34, 55)


def norm(kind, c):
    if kind == "instance":
        return nn.InstanceNorm2d(c, eps=1e-3, affine=True)
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)


class ConvBlock(nn.Module):
    """act(t + Norm(t)) after a convolution: MODEL.md's conv_block."""

    def __init__(self, cin, cout, k, d, kind):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=d * (k // 2), dilation=d)
        self.norm = norm(kind, cout)

    def forward(self, x):
        t = self.conv(x)
        return torch.relu(t + self.norm(t))


class Net(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p
        self.input_norm = norm(p["norm"], 1)
        cin, self.dilated = 1, nn.ModuleList()
        for d in DILATIONS:
            self.dilated.append(ConvBlock(cin, p["width"], 3, d, p["norm"]))
            cin = p["width"]
        cin = 1 + len(DILATIONS) * p["width"]
        self.head = nn.ModuleList()
        for w in p["head"]:
            self.head.append(ConvBlock(cin, w, 1, 1, p["norm"]))
            cin = w
        self.out = nn.Conv2d(cin, p["out"], 1)
        self.drop = nn.Dropout(p["dropout"])

    def forward(self, x):
        x = x + self.input_norm(x)
        maps = [x]
        for i, layer in enumerate(self.dilated):
            y = layer(x)
            x = y + x if self.p["residual"] and i > 0 else y
            maps.append(x)
        h = self.drop(torch.cat(maps, 1))
        for layer in self.head:
            h = layer(h)
        return self.out(h)


def timed(fn, device, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def workload(name, preset, shape, train, device, warmup, runs):
    torch.manual_seed(0)
    p = PRESETS[preset]
    net = Net(p).to(device)
    x = torch.rand(shape, device=device)
    n, _, h, w = shape
    if p["loss"] == "ce":
        y = (torch.rand((n, h, w), device=device) > 0.5).long()
    else:
        y = (torch.rand((n, 1, h, w), device=device) > 0.5).float()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        out = net(x)
        if p["loss"] == "ce":
            loss = nn.functional.cross_entropy(out, y)
        else:
            loss = nn.functional.mse_loss(out, y)
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad():
            net(x).softmax(1).cpu()

    net.train(train)
    median, best = timed(step if train else infer, device, warmup, runs)
    return {"workload": name, "peer": f"pytorch {torch.__version__} eager", "device": device,
            "adapter": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "tf32": torch.backends.cudnn.allow_tf32,
            "runs": runs, "median_ms": round(median, 3), "min_ms": round(best, 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--tf32", action="store_true", help="let cuDNN/cuBLAS use TF32 (PyTorch's default for convolutions)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    # Strict f32 unless asked: dilaseg computes in f32, and TF32 would compare different arithmetic.
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    for name, preset, shape, train in [
        ("lungnet-256-infer", "lungnet", (1, 1, 256, 256), False),
        ("lungnet-256-train", "lungnet", (1, 1, 256, 256), True),
        ("lungnet-kaggle-infer", "lungnet", (1, 1, 420, 580), False),
        ("seo2018-256-train", "seo2018", (2, 1, 256, 256), True),
    ]:
        print(json.dumps(workload(name, preset, shape, train, a.device, a.warmup, a.runs)), flush=True)


if __name__ == "__main__":
    main()
