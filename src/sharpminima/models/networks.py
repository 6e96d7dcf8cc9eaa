"""The paper's networks (Keskar et al. 2017, Appendix B).

All networks take inputs shaped ``(B, *input_shape)`` and return logits ``(B, num_classes)``.
The fully connected nets flatten their input; the conv nets accept any ``(C, H, W)`` image
shape (so they also run on MNIST as an offline stand-in for CIFAR), computing the size of
their first dense layer from a dummy forward pass at construction.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """F1 / F2: ``depth`` x [Linear(width), BatchNorm1d, ReLU] -> Linear(num_classes).

    Args:
        in_features: Flattened input size (784 for MNIST, 360 for TIMIT features).
        num_classes: Output classes.
        depth: Number of hidden layers (5 for F1, 7 for F2).
        width: Hidden units per layer (512 in the paper).
        batch_norm: Whether each hidden layer has BatchNorm (True in the paper).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int,
        width: int = 512,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_features
        for _ in range(depth):
            layers.append(nn.Linear(fan_in, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
            fan_in = width
        layers.append(nn.Linear(fan_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, num_classes)`` for inputs ``(B, ...)``."""
        return self.net(x)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride=1, padding=kernel // 2),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def _num_features(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        was_training = features.training
        features.eval()
        out = features(torch.zeros(1, *input_shape))
        features.train(was_training)
    return int(math.prod(out.shape[1:]))


class ShallowConv(nn.Module):
    """C1 / C3, AlexNet-like: 2 x [conv 64 5x5, BN, ReLU, max-pool 3x3 stride 2] -> 384 -> 192.

    We follow the authors' code for the stride: the convolutions are stride 1 with 'same'
    padding, and the 3x3 stride-2 max-pools (padding 1, i.e. Keras 'same') do the
    downsampling, giving 64 x 8 x 8 = 4096 features into the first dense layer on 32x32
    inputs. (The paper's "[64,5,5,2]" notation could be read as conv stride 2; that would
    give 64 x 2 x 2 features on CIFAR, which is not what the released code trains.)
    BatchNorm follows every layer; dropout 0.5 follows the two dense layers.

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: Output classes (10 for C1, 100 for C3).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        c = input_shape[0]
        self.features = nn.Sequential(
            *_conv_bn_relu(c, 64, 5),
            nn.MaxPool2d(3, stride=2, padding=1),
            *_conv_bn_relu(64, 64, 5),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Flatten(),
        )
        n = _num_features(self.features, input_shape)
        self.classifier = nn.Sequential(
            nn.Linear(n, 384),
            nn.BatchNorm1d(384),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(384, 192),
            nn.BatchNorm1d(192),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(192, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits for images ``(B, C, H, W)``."""
        return self.classifier(self.features(x))


# VGG-16 blocks of C2 / C4 (the authors' code): channels per conv, max-pool after each block.
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3)


class DeepConv(nn.Module):
    """C2 / C4, VGG-16-like, as in the authors' Keras code.

    3x3 'same' convs with BN + ReLU in blocks 64,64 | 128,128 | 256x3 | 512x3 | 512x3, a 2x2
    max-pool after each block; dropout 0.3 after the first conv and 0.4 after every conv that
    is not last in its block; then dropout 0.5 -> dense 512 -> BN -> ReLU -> dropout 0.5 ->
    classes. Images smaller than 32x32 (MNIST) skip the pools that would shrink a side below 1.

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: Output classes (10 for C2, 100 for C4).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, side = input_shape[0], min(input_shape[1:])
        first = True
        for block in VGG16_BLOCKS:
            for i, c_out in enumerate(block):
                layers += _conv_bn_relu(c_in, c_out, 3)
                if i < len(block) - 1:
                    layers.append(nn.Dropout(0.3 if first else 0.4))
                first = False
                c_in = c_out
            if side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        n = _num_features(self.features, input_shape)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(n, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits for images ``(B, C, H, W)``."""
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: ``y = relu(shortcut(x) + gate * (BN conv3x3 -> ReLU -> BN conv3x3)(x))``.

    With BatchNorm the gate is the constant 1 (He et al. 2016). Without BatchNorm the convs
    carry biases and the residual branch is multiplied by a learnable scalar ``gate``
    initialised to 0 (SkipInit, De and Smith 2020), so at initialisation every block is its
    shortcut and the signal's scale does not grow with depth; that is what lets the
    BatchNorm-free network train at the same learning rate.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the first conv (2 halves the side); the shortcut is a strided
            1x1 conv (with BN if ``batch_norm``) when the shape changes, else the identity.
        batch_norm: Whether to use BatchNorm.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool) -> None:
        super().__init__()

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if batch_norm else nn.Identity()

        bias = not batch_norm
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=bias)
        self.bn2 = norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), norm(c_out))
        self.gate = None if batch_norm else nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block's output ``(B, c_out, H / stride, W / stride)``."""
        branch = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.gate is not None:
            branch = branch * self.gate
        return torch.relu(self.shortcut(x) + branch)


class ResNet18(nn.Module):
    """ResNet-18 for CIFAR-shaped images (the common 3x3-stem variant of He et al. 2016).

    Stem: conv 3x3 (``width`` channels, stride 1) -> BN -> ReLU, no max-pool; then 4 stages
    of 2 :class:`BasicBlock` with ``width x (1, 2, 4, 8)`` channels (64-128-256-512 by
    default), the first block of stages 2-4 with stride 2; global average pool; a linear
    layer. 11,173,962 parameters for 10 classes at width 64. Any ``(C, H, W)`` input works
    (the pool is adaptive), so it also runs on MNIST.

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: Output classes.
        width: Channels of the stem and first stage.
        batch_norm: ``False`` replaces every BatchNorm by the identity, gives the convs
            biases and He-normal weights (zero biases), and gates each residual branch by a
            zero-initialised scalar (see :class:`BasicBlock`).
    """

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, width: int = 64, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], width, 3, stride=1, padding=1, bias=not batch_norm),
            nn.BatchNorm2d(width) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        c_in = width
        for stage in range(4):
            c_out = width * 2**stage
            for i in range(2):
                blocks.append(BasicBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1, batch_norm))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c_in, num_classes)
        if not batch_norm:
            # Without BN nothing rescales the signal: PyTorch's default conv init shrinks its
            # variance about 6x per layer (with ReLU), so use He init (as SkipInit does).
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, num_classes)`` for images ``(B, C, H, W)``."""
        return self.fc(self.pool(self.blocks(self.stem(x))))
