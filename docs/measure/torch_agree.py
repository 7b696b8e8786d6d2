"""Does a PyTorch model built from ../shared/spec/MODEL.md agree with dilaseg?

An outside check of the contract, not part of the product (which must not
depend on Python): the network below is written from MODEL.md, not from
dilaseg's code. Two checks, each driving the `dilaseg` binary:

- infer: dilaseg's `infer --npy` scores for an image against this model's,
  from the same checkpoint (`--model`, or fresh weights for `--preset` and
  `--config`); the eval-mode forward (batch norm from its running
  statistics), at the image's size, or with `--resized` at the training
  size and back as dilaseg infer runs by default.
- train: a checkpoint written here (fresh weights, the config in its
  metadata) trained for a few steps on one image, or a batch of two, by
  `dilaseg train --init`
  and by torch.optim here (Adam or SGD, with the loss, class weights,
  momentum and weight decay given); every tensor of the two results
  compared (weights, norm parameters and, for batch norm, running
  statistics). Dropout must be 0: the two draw different masks. SGD
  compares lr times the gradients; Adam's first steps are about lr times
  their signs, which differ wherever a gradient is zero within rounding.

    python3 docs/measure/torch_agree.py infer --dilaseg target/release/dilaseg \
        --model assets/seo2018-lung-cxr.safetensors --image assets/lung-cxr/images/CHNCXR_0001_0.png
    python3 docs/measure/torch_agree.py train --dilaseg target/release/dilaseg \
        --preset lungnet --image assets/lung-cxr/images/CHNCXR_0001_0.png \
        --mask assets/lung-cxr/masks/CHNCXR_0001_0.png --steps 3

Needs torch, numpy, pillow and safetensors (a scratch virtualenv is fine).
Prints one JSON line per check, with the largest differences found.
Results: docs/PYTORCH.md.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

# MODEL.md's preset table, for the train check's fresh checkpoints.
PRESETS = {
    "lungnet": dict(in_channels=1, width=32, dilations=[1, 1, 2, 3, 5, 8, 13, 21, 34, 55], norm="instance",
                    act="relu", layer_residual=False, dropout=0.5, head=[128, 32], output="softmax",
                    out_channels=2, init="he_normal"),
    "seo2018": dict(in_channels=1, width=3, dilations=[1, 1, 2, 3, 5, 8, 13, 21, 34, 55], norm="batch",
                    act="relu", layer_residual=True, dropout=0.0, head=[3, 3], output="linear",
                    out_channels=1, init={"normal_std": 0.05}),
}
EPS = 1e-3


class Norm(nn.Module):
    """MODEL.md's Norm: instance (per (n, c), no running statistics) or
    batch (per c, running statistics as BatchNorm2d), eps 1e-3, affine."""

    def __init__(self, kind, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.kind = kind
        if kind == "batch":
            self.register_buffer("running_mean", torch.zeros(c))
            self.register_buffer("running_var", torch.ones(c))

    def forward(self, t):
        if self.kind == "instance":
            return nn.functional.instance_norm(t, weight=self.weight, bias=self.bias, eps=EPS)
        return nn.functional.batch_norm(t, self.running_mean, self.running_var, self.weight, self.bias,
                                        training=self.training, momentum=0.1, eps=EPS)


class ConvBlock(nn.Module):
    """act(t + Norm(t)), t = conv(x): MODEL.md's conv_block."""

    def __init__(self, cfg, cin, cout, k, d):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=d * (k // 2), dilation=d)
        self.norm = Norm(cfg["norm"], cout) if cfg["norm"] != "none" else None
        self.cfg = cfg

    def forward(self, x):
        t = self.conv(x)
        if self.norm is not None:
            t = t + self.norm(t)
        if self.cfg["act"] == "leaky_relu":
            return nn.functional.leaky_relu(t, self.cfg.get("leaky_slope", 0.01))
        return torch.relu(t)


class Net(nn.Module):
    """MODEL.md's graph, with the checkpoint's tensor names."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.input_norm = Norm(cfg["norm"], cfg["in_channels"]) if cfg["norm"] != "none" else None
        cin = cfg["in_channels"]
        self.dilated = nn.ModuleList()
        for d in cfg["dilations"]:
            self.dilated.append(ConvBlock(cfg, cin, cfg["width"], 3, d))
            cin = cfg["width"]
        cin = cfg["in_channels"] + len(cfg["dilations"]) * cfg["width"]
        self.head = nn.ModuleList()
        for w in cfg["head"]:
            self.head.append(ConvBlock(cfg, cin, w, 1, 1))
            cin = w
        self.out = nn.Conv2d(cin, cfg["out_channels"], 1)

    def forward(self, x):
        if self.input_norm is not None:
            x = x + self.input_norm(x)
        maps = [x]
        for layer in self.dilated:
            y = layer(x)
            if self.cfg["layer_residual"] and y.shape[1] == x.shape[1]:
                y = y + x
            maps.append(y)
            x = y
        h = nn.functional.dropout(torch.cat(maps, 1), self.cfg["dropout"], self.training)
        for layer in self.head:
            h = layer(h)
        return self.out(h)

    def scores(self, logits):
        if self.cfg["output"] == "softmax":
            return logits.softmax(1)
        if self.cfg["output"] == "sigmoid":
            return logits.sigmoid()
        return logits

    def loss(self, logits, mask, sigmoid_loss="bce", class_weights=None):
        """The output's loss against a binary mask (N x H x W, {0, 1})."""
        if self.cfg["output"] == "softmax":
            w = None if class_weights is None else torch.tensor(class_weights)
            return nn.functional.cross_entropy(logits, mask.long(), weight=w)
        if self.cfg["output"] == "sigmoid":
            total = 0.0
            if "bce" in sigmoid_loss:
                total = total + nn.functional.binary_cross_entropy_with_logits(logits[:, 0], mask)
            if "dice" in sigmoid_loss:
                p = logits[:, 0].sigmoid()
                total = total + 1 - (2 * (p * mask).sum() + 1) / (p.sum() + mask.sum() + 1)
            return total
        return nn.functional.mse_loss(logits[:, 0], mask)


def read_checkpoint(path):
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "dilaseg/1":
        sys.exit(f"{path}: not a dilaseg/1 checkpoint (metadata {meta})")
    cfg = json.loads(meta["config"])
    return cfg, load_file(path)


def train_size(path):
    """The checkpoint's training size (H, W) from its metadata."""
    with safe_open(path, "pt") as f:
        size = (f.metadata() or {}).get("train_size")
    if not size:
        sys.exit(f"{path}: no train_size in its metadata, so dilaseg runs it at the image's size")
    return tuple(int(v) for v in size.split("x"))


def load_model(path):
    cfg, tensors = read_checkpoint(path)
    net = Net(cfg)
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        sys.exit(f"{path}: names differ from MODEL.md's: missing {missing}, unexpected {unexpected}")
    return cfg, net


def load_image(path, channels):
    """MODEL.md's input: grey by ITU-R 601 luma unless 3 channels, scaled to [0, 1]."""
    im = Image.open(path)
    wide = im.mode in ("I;16", "I;16B", "I", "I;16L")
    if channels == 3:
        a = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    elif wide:
        a = np.asarray(im, dtype=np.float32)[None]
    else:
        a = np.asarray(im.convert("L"), dtype=np.float32)[None]
    return torch.from_numpy(a / (65535.0 if wide else 255.0))[None]


def load_mask(path, cfg):
    """A binary mask (> 127 of 255), or for a multi-class softmax model a
    label map (the class index per pixel)."""
    im = Image.open(path)
    a = np.asarray(im)
    if a.ndim == 3:
        a = np.asarray(im.convert("L"))
    if cfg["output"] == "softmax" and cfg["out_channels"] > 2:
        return torch.from_numpy(a.astype(np.float32))[None]
    limit = 32767 if a.dtype == np.uint16 else 127
    return torch.from_numpy((a > limit).astype(np.float32))[None]


def run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def check_infer(args, work):
    if not args.model:
        args.model = os.path.join(work, "fresh.safetensors")
        fresh_checkpoint(train_config(args), args.model, args.seed)
    cfg, net = load_model(args.model)
    net.eval()
    x = load_image(args.image, cfg["in_channels"])
    size = train_size(args.model) if args.resized else None
    with torch.no_grad():
        if size:
            # At the training size and back, bilinear (half-pixel centres,
            # no antialiasing: F.interpolate's defaults).
            scores = net.scores(net(nn.functional.interpolate(x, size=size, mode="bilinear")))
            ours = nn.functional.interpolate(scores, size=x.shape[2:], mode="bilinear")[0].numpy()
        else:
            ours = net.scores(net(x))[0].numpy()
    out = os.path.join(work, "infer")
    native = [] if size else ["--native"]
    run([args.dilaseg, "infer", *native, "--npy", "--model", args.model, "--out", out, args.image])
    stem = os.path.splitext(os.path.basename(args.image))[0]
    theirs = np.load(os.path.join(out, stem + ".npy"))
    if theirs.shape != ours.shape:
        sys.exit(f"shapes differ: dilaseg {theirs.shape}, PyTorch {ours.shape}")
    diff = np.abs(theirs - ours)
    fg_ours = (ours[1] if cfg["output"] == "softmax" else ours[0]) >= 0.5
    fg_theirs = (theirs[1] if cfg["output"] == "softmax" else theirs[0]) >= 0.5
    return {"check": "infer", "model": args.model, "image": args.image, "shape": list(ours.shape), "run_at": size,
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "score_range": [float(ours.min()), float(ours.max())],
            "decisions_differing": int((fg_ours != fg_theirs).sum())}


def fresh_checkpoint(cfg, path, seed):
    torch.manual_seed(seed)
    net = Net(cfg)
    for name, p in net.named_parameters():
        if name.endswith("conv.weight") or name == "out.weight":
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            std = cfg["init"]["normal_std"] if isinstance(cfg["init"], dict) else (2.0 / fan_in) ** 0.5
            with torch.no_grad():
                p.normal_(0.0, std)
        elif name.endswith("conv.bias") or name == "out.bias":
            with torch.no_grad():
                p.normal_(0.0, 0.01)  # nonzero, so that their gradients show
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, path, metadata={"format": "dilaseg/1", "config": json.dumps(cfg)})
    return net


def train_config(args):
    """The preset's config without dropout, then --config's fields."""
    return {**PRESETS[args.preset], "dropout": 0.0, **json.loads(args.config or "{}")}


def check_train(args, work):
    cfg = train_config(args)
    if cfg["dropout"] != 0:
        sys.exit("the train check needs dropout 0 (the two draw different masks)")
    init = os.path.join(work, "init.safetensors")
    net = fresh_checkpoint(cfg, init, args.seed)
    # One or two training images, every step one batch of all of them (in
    # some order, which neither the batch statistics nor the mean loss see).
    pairs = [(args.image, args.mask)] + ([(args.image2, args.mask2)] if args.image2 else [])
    data = os.path.join(work, "data")
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(data, sub))
    for name, (image, mask) in zip("ab", pairs):
        shutil.copy(image, os.path.join(data, "images", name + os.path.splitext(image)[1]))
        shutil.copy(mask, os.path.join(data, "masks", name + os.path.splitext(mask)[1]))
    run_dir = os.path.join(work, "run")
    cmd = [args.dilaseg, "train", "--init", init, "--data", data, "--out", run_dir, "--max-steps", str(args.steps),
           "--batch", str(len(pairs)), "--val-fraction", "0", "--lr", str(args.lr), "--optimizer", args.optimizer,
           "--momentum", str(args.momentum), "--weight-decay", str(args.weight_decay), "--loss", args.loss]
    if args.class_weights:
        cmd += ["--class-weights", args.class_weights]
    run(cmd)
    x = torch.cat([load_image(image, cfg["in_channels"]) for image, _ in pairs])
    mask = torch.cat([load_mask(m, cfg) for _, m in pairs])
    net.train()
    if args.optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    weights = [float(v) for v in args.class_weights.split(",")] if args.class_weights else None
    losses = []
    for _ in range(args.steps):
        opt.zero_grad(set_to_none=True)
        loss = net.loss(net(x), mask, args.loss, weights)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    ours = net.state_dict()
    result = os.path.join(run_dir, args.result)
    _, theirs = read_checkpoint(result)
    start = load_file(init)
    worst, worst_rel = ("", 0.0), ("", 0.0)
    moved, apart, elements = 0.0, 0, 0
    for name, t in ours.items():
        diff = (theirs[name] - t).abs()
        step = (t - start[name]).abs().max().item()
        moved = max(moved, step)
        rel = diff.max().item() / step if step > 0 else 0.0
        worst = max(worst, (name, diff.max().item()), key=lambda p: p[1])
        worst_rel = max(worst_rel, (name, rel), key=lambda p: p[1])
        # Elements off by more than 1% of their tensor's largest move.
        apart += int((diff > 0.01 * step).sum())
        elements += t.numel()
    with open(os.path.join(run_dir, "loss.csv")) as f:
        rows = [line.strip().split(",") for line in f if line.strip()]
    return {"check": "train", "config": cfg, "optimizer": args.optimizer, "steps": args.steps, "lr": args.lr,
            "momentum": args.momentum, "weight_decay": args.weight_decay, "loss": args.loss,
            "class_weights": args.class_weights, "losses_pytorch": losses, "loss_csv": rows,
            "images": [image for image, _ in pairs], "result": args.result, "tensors": len(ours),
            "largest_move_from_init": moved, "max_abs_diff": worst[1], "at": worst[0],
            "max_diff_over_move": worst_rel[1], "at_rel": worst_rel[0],
            "elements_off_by_1pct_of_move": apart, "elements": elements}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", choices=["infer", "train"])
    ap.add_argument("--dilaseg", default="target/release/dilaseg")
    ap.add_argument("--model", help="infer: the checkpoint (else fresh weights for --preset and --config)")
    ap.add_argument("--image", required=True)
    ap.add_argument("--mask", help="train: the image's mask")
    ap.add_argument("--image2", help="train: a second image (and --mask2), for batches of two")
    ap.add_argument("--mask2")
    ap.add_argument("--resized", action="store_true",
                    help="infer: at the checkpoint's training size and back, as dilaseg infer runs by default")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="lungnet")
    ap.add_argument("--config", help='JSON fields over the preset\'s, e.g. {"output": "sigmoid", "out_channels": 1}')
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--result", default="last.safetensors", help="train: the run folder's checkpoint to compare")
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                    help="train: the optimiser, in both")
    ap.add_argument("--momentum", type=float, default=0.0, help="train: SGD's")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="train: L2, PyTorch's form")
    ap.add_argument("--loss", choices=["bce", "dice", "bce+dice"], default="bce", help="train: a sigmoid output's")
    ap.add_argument("--class-weights", help="train: cross-entropy class weights, e.g. 0.5,2")
    ap.add_argument("--keep", help="keep the scratch folder here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.keep:
        os.makedirs(args.keep)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or scratch
        report = check_infer(args, work) if args.check == "infer" else check_train(args, work)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
