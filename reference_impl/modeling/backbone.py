"""ResNet-50 (FrozenBN or BN) and the FPN on top of it (P2-P6).

Parameter names follow torchvision's ResNet (conv1, bn1, layer1..4, Bottleneck conv1..3/bn1..3,
downsample.0/1) so ImageNet checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (buffers, not parameters): y = x * scale +
    shift."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # present in BatchNorm2d checkpoints
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x):
        scale, shift = self.scale_shift()
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d in ``module`` with a FrozenBatchNorm2d holding its statistics."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = cls(module.num_features, module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new = cls.convert(child)
            if new is not child:
                setattr(module, name, new)
        return module


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor, fold: bool) -> torch.Tensor:
    """``norm(conv(x))``; with ``fold`` and a FrozenBN, one convolution whose weights carry the scale and
    whose bias is the shift: the same function (equal up to fp32 rounding, gradients included), without
    the two passes over the activations that the separate affine costs forward and the one backward."""
    if not (fold and type(norm) is FrozenBatchNorm2d):
        return norm(conv(x))
    scale, shift = norm.scale_shift()
    weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return F.conv2d(x, weight, bias.to(weight.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)


def norm_layer(kind: str):
    return {"FrozenBN": FrozenBatchNorm2d, "BN": nn.BatchNorm2d, "SyncBN": nn.SyncBatchNorm}[kind]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, norm):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=stride, padding=1, bias=False
        )  # stride on the 3x3 (ResNet v1.5)
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = norm(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), norm(out_channels)
            )
        self.fold_norm = False  # ResNet.fold_frozen_bn

    def forward(self, x):
        fold = self.fold_norm
        identity = (
            x if self.downsample is None else conv_norm(self.downsample[0], self.downsample[1], x, fold)
        )
        out = F.relu_(conv_norm(self.conv1, self.bn1, x, fold))
        out = F.relu_(conv_norm(self.conv2, self.bn2, out, fold))
        out = conv_norm(self.conv3, self.bn3, out, fold)
        return F.relu_(out + identity)


class ResNet(nn.Module):
    """ResNet body returning the outputs of stages res2..res5 (strides 4, 8, 16, 32)."""

    def __init__(self, *, depth: int = 50, norm: str = "FrozenBN", freeze_at: int = 2):
        super().__init__()
        if depth != 50:
            raise ValueError(f"only ResNet-50 is implemented, got depth {depth}")
        bn = norm_layer(norm)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = bn(64)
        blocks, widths, strides = (3, 4, 6, 3), (64, 128, 256, 512), (1, 2, 2, 2)
        in_channels = 64
        for i, (n, width, stride) in enumerate(zip(blocks, widths, strides), start=1):
            layers = []
            for b in range(n):
                layers.append(Bottleneck(in_channels, width, stride if b == 0 else 1, bn))
                in_channels = width * Bottleneck.expansion
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.out_channels = [256, 512, 1024, 2048]
        self.fold_norm = False
        self._init_weights()
        self.freeze(freeze_at)

    def fold_frozen_bn(self, enabled: bool = True) -> ResNet:
        """Compute each conv + FrozenBN pair as one convolution (:func:`conv_norm`)."""
        self.fold_norm = enabled
        for m in self.modules():
            if isinstance(m, Bottleneck):
                m.fold_norm = enabled
        return self

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (1) and stages res2.. up to ``freeze_at``: no gradients, and any BatchNorm
        in them becomes FrozenBN (Detectron2's rule), so their statistics do not drift."""
        stages = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]
        for names in stages[:freeze_at]:
            for name in names:
                module = getattr(self, name)
                for p in module.parameters():
                    p.requires_grad_(False)
                setattr(self, name, FrozenBatchNorm2d.convert(module))

    def forward(self, x):
        x = F.relu_(conv_norm(self.conv1, self.bn1, x, self.fold_norm))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs


def norm_layers(module: nn.Module) -> list[nn.Module]:
    """Every norm layer of ``module`` with running statistics (FrozenBN, BatchNorm, SyncBatchNorm), in
    order."""
    return [
        m for m in module.modules() if isinstance(m, (FrozenBatchNorm2d, nn.modules.batchnorm._BatchNorm))
    ]


@torch.no_grad()
def calibrate_norm_statistics(body: ResNet, images: torch.Tensor) -> int:
    """Set the running mean and variance of every norm layer of ``body`` to those of its input over the
    batch ``images`` (normalised, [N, 3, H, W]), for a network with no pretrained statistics.

    One forward pass of the whole batch: each layer, before it runs, takes the per-channel mean and
    (biased) variance of its input over the batch and its pixels as its statistics, so the layers after it
    see what they will see once every statistic is frozen, and what each layer measures is exact for the
    frozen network. Weights and biases are left as they are. Returns how many layers were set."""
    if images.dim() != 4 or not len(images):
        raise ValueError(
            "calibrate_norm_statistics: expected a batch [N, 3, H, W] of N >= 1 images, got "
            f"{tuple(images.shape)}"
        )
    layers = norm_layers(body)

    def measure(module, args):
        var, mean = torch.var_mean(args[0], dim=(0, 2, 3), correction=0)
        module.running_mean.copy_(mean)
        module.running_var.copy_(var)

    handles = [m.register_forward_pre_hook(measure) for m in layers]
    fold, training = body.fold_norm, body.training
    body.fold_frozen_bn(False).eval()  # a folded FrozenBN is never called: its input would go unseen
    try:
        body(images)
    finally:
        for h in handles:
            h.remove()
        body.fold_frozen_bn(fold).train(training)
    return len(layers)


class FPN(nn.Module):
    """Feature Pyramid Network: lateral 1x1 and output 3x3 convs per stage, nearest-neighbour top-down
    path, and P6 as a stride-2 max-pool of P5. Returns [P2, P3, P4, P5, P6]."""

    def __init__(self, *, in_channels: list[int], out_channels: int = 256):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)
        self.out_channels = out_channels
        self.strides = [4, 8, 16, 32, 64]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        last = self.lateral[-1](feats[-1])
        results = [self.output[-1](last)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.lateral[i](feats[i])
            top_down = F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            last = lateral + top_down
            results.insert(0, self.output[i](last))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        return results


class ResNetFPN(nn.Module):
    def __init__(
        self, *, depth: int = 50, norm: str = "FrozenBN", freeze_at: int = 2, out_channels: int = 256
    ):
        super().__init__()
        self.body = ResNet(depth=depth, norm=norm, freeze_at=freeze_at)
        self.fpn = FPN(in_channels=self.body.out_channels, out_channels=out_channels)
        self.out_channels = out_channels

    @classmethod
    def from_config(cls, cfg) -> ResNetFPN:
        b = cfg.backbone
        return cls(depth=b.depth, norm=b.norm, freeze_at=b.freeze_at, out_channels=b.fpn_out_channels)

    def forward(self, x):
        return self.fpn(self.body(x))
