"""The chapter-8 networks, layer by layer as the book builds them.

Generalized over input channels, input size and class count; flattening uses
``torch.flatten`` so that channels_last inputs work too.

Where the book writes ``max_pool2d(act(x))`` with a monotonic activation (tanh,
ReLU), this code writes ``act(max_pool2d(x))``: the maximum of a monotonic
function is the function of the maximum, so outputs and gradients are the same,
and the activation runs on a quarter of the elements. In a CPU training step
each convolution with its pooling and activation runs as one fused kernel, and
a pooling with its activation after a BatchNorm as another
(``zoo_chapter8.fused``), and the two linear layers at the end with their activation as a
third (``zoo_chapter8.fused_head``); everywhere else, as the plain PyTorch layers. NetRes
keeps the book's order where the skip is added before pooling. Two flaws of the
book's code are fixed: ``NetResDeep`` builds independent blocks (the book's
``n_blocks * [ResBlock(...)]`` repeats one instance; ``shared_block=True``
reproduces it), and evaluation mode is the trainer's business.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from zoo import InputShape
from zoo_chapter8.fused import conv_pool_relu, conv_pool_tanh, conv_relu_add_pool
from zoo_chapter8.fused_bn import bn_pool_tanh, stem_bn_pool_tanh
from zoo_chapter8.fused_head import RELU, TANH, linear_head
from zoo_chapter8.fused_step import ConvLayer, Head, train_step
from zoo_chapter8.kernels import library
from zoo_chapter8.specs import DropoutHParams, NetHParams, ResDeepHParams, WidthHParams


def _pooled(size: int, times: int) -> int:
    for _ in range(times):
        size //= 2
    return size


def _flat_features(shape: InputShape, channels: int, pools: int) -> int:
    return channels * _pooled(shape.height, pools) * _pooled(shape.width, pools)


class WholeBatches:
    """Asks the trainer for whole batches where the fused kernels run (``zoo_batch_split``).

    The kernels divide a batch's images between the intra-op threads themselves, so
    parallel batch parts (``zoo.trainer.batchsplit``) only add work: on two cores Net,
    NetWidth, NetDepth and NetRes train 1.1 to 1.3 times faster whole. Where the kernels
    are off, the plain PyTorch layers leave the choice to the trainer.
    """

    @property
    def zoo_batch_split(self) -> int | None:
        """1 while the fused kernels are in use, else None (no preference)."""
        return 1 if library() is not None else None


def _defined_by(cls: type, name: str) -> type | None:
    return next((c for c in cls.__mro__ if name in vars(c)), None)


class FusedStep:
    """A whole training step on the fused kernels (``zoo_train_step``:
    :mod:`zoo_chapter8.fused_step`) for a network whose forward pass is only fused layers:
    ``_chain`` names them, in the class that defines ``forward``. A subclass that defines
    its own ``forward`` without its own ``_chain`` (NetDropout, NetBatchNorm, a user's)
    trains through autograd."""

    def _chain(self) -> tuple[list[ConvLayer], Head] | None:
        return None

    def zoo_train_step(self, x: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``loss(self(x))`` with every parameter's gradient added to its ``.grad`` as
        ``backward()`` adds it, and the logits; None (nothing done) where autograd must run."""
        cls = type(self)
        if (not isinstance(self, nn.Module) or "forward" in vars(self)
                or _defined_by(cls, "forward") is not _defined_by(cls, "_chain")):
            return None
        chain = self._chain()
        if chain is None:
            return None
        return train_step(self, chain[0], chain[1], x, loss)


class Net(WholeBatches, FusedStep, nn.Module):
    """conv(16) → tanh → pool → conv(8) → tanh → pool → linear(32) → tanh → linear."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, height: int = 32,
                 width: int = 32, n_hidden: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, kernel_size=3, padding=1)
        shape = InputShape(channels=in_channels, height=height, width=width)
        features = _flat_features(shape, 8, 2)
        self.fc1 = nn.Linear(features, n_hidden)
        self.fc2 = nn.Linear(n_hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_pool_tanh(self.conv1, x, self.training)
        out = conv_pool_tanh(self.conv2, out, self.training)
        return linear_head(self.fc1, self.fc2, out, TANH, self.training)

    def _chain(self) -> tuple[list[ConvLayer], Head] | None:
        return ([ConvLayer(self.conv1, TANH), ConvLayer(self.conv2, TANH)],
                Head(self.fc1, self.fc2, TANH))


class NetWidth(WholeBatches, FusedStep, nn.Module):
    """Net with ``n_chans1`` channels in the first convolution and half in the second."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, height: int = 32,
                 width: int = 32, n_chans1: int = 32, n_hidden: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, n_chans1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(n_chans1, n_chans1 // 2, kernel_size=3, padding=1)
        features = _flat_features(InputShape(channels=in_channels, height=height, width=width),
                                  n_chans1 // 2, 2)
        self.fc1 = nn.Linear(features, n_hidden)
        self.fc2 = nn.Linear(n_hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_pool_tanh(self.conv1, x, self.training)
        out = conv_pool_tanh(self.conv2, out, self.training)
        return linear_head(self.fc1, self.fc2, out, TANH, self.training)

    def _chain(self) -> tuple[list[ConvLayer], Head] | None:
        return ([ConvLayer(self.conv1, TANH), ConvLayer(self.conv2, TANH)],
                Head(self.fc1, self.fc2, TANH))


class NetDropout(NetWidth):
    """NetWidth with ``Dropout2d(p)`` after each convolution block."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, height: int = 32,
                 width: int = 32, n_chans1: int = 32, n_hidden: int = 32,
                 dropout: float = 0.4) -> None:
        super().__init__(in_channels, num_classes, height, width, n_chans1, n_hidden)
        self.conv1_dropout = nn.Dropout2d(p=dropout)
        self.conv2_dropout = nn.Dropout2d(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_pool_tanh(self.conv1, x, self.training)
        out = self.conv1_dropout(out)
        out = conv_pool_tanh(self.conv2, out, self.training)
        out = self.conv2_dropout(out)
        return linear_head(self.fc1, self.fc2, out, TANH, self.training)


class NetBatchNorm(NetWidth):
    """NetWidth with BatchNorm2d after each convolution, before the activation."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, height: int = 32,
                 width: int = 32, n_chans1: int = 32, n_hidden: int = 32) -> None:
        super().__init__(in_channels, num_classes, height, width, n_chans1, n_hidden)
        self.conv1_batchnorm = nn.BatchNorm2d(num_features=n_chans1)
        self.conv2_batchnorm = nn.BatchNorm2d(num_features=n_chans1 // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = stem_bn_pool_tanh(self.conv1, self.conv1_batchnorm, x, self.training)
        out = bn_pool_tanh(self.conv2_batchnorm, self.conv2(out), self.training)
        return linear_head(self.fc1, self.fc2, out, TANH, self.training)


class NetDepth(WholeBatches, FusedStep, nn.Module):
    """Three ReLU convolutions, each followed by max-pooling, then two linear layers."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, height: int = 32,
                 width: int = 32, n_chans1: int = 32, n_hidden: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, n_chans1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(n_chans1, n_chans1 // 2, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(n_chans1 // 2, n_chans1 // 2, kernel_size=3, padding=1)
        features = _flat_features(InputShape(channels=in_channels, height=height, width=width),
                                  n_chans1 // 2, 3)
        self.fc1 = nn.Linear(features, n_hidden)
        self.fc2 = nn.Linear(n_hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_pool_relu(self.conv1, x, self.training)
        out = conv_pool_relu(self.conv2, out, self.training)
        out = conv_pool_relu(self.conv3, out, self.training)
        return linear_head(self.fc1, self.fc2, out, RELU, self.training)

    def _chain(self) -> tuple[list[ConvLayer], Head] | None:
        return ([ConvLayer(self.conv1, RELU), ConvLayer(self.conv2, RELU),
                 ConvLayer(self.conv3, RELU)], Head(self.fc1, self.fc2, RELU))


class NetRes(NetDepth):
    """NetDepth with the third convolution's input added back to its output (a skip)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_pool_relu(self.conv1, x, self.training)
        out = conv_pool_relu(self.conv2, out, self.training)
        out = conv_relu_add_pool(self.conv3, out, self.training)  # pool(relu(conv3) + out)
        return linear_head(self.fc1, self.fc2, out, RELU, self.training)

    def _chain(self) -> tuple[list[ConvLayer], Head] | None:
        return ([ConvLayer(self.conv1, RELU), ConvLayer(self.conv2, RELU),
                 ConvLayer(self.conv3, RELU, residual=True)], Head(self.fc1, self.fc2, RELU))


class ResBlock(nn.Module):
    """conv (no bias, Kaiming-normal for ReLU) → BatchNorm (weight 0.5, bias 0) → ReLU, plus x."""

    def __init__(self, n_chans: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_chans, n_chans, kernel_size=3, padding=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(num_features=n_chans)
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
        nn.init.constant_(self.batch_norm.weight, 0.5)
        nn.init.zeros_(self.batch_norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        out = self.batch_norm(out)
        out = torch.relu(out)
        return out + x


class NetResDeep(nn.Module):
    """A convolution, ``n_blocks`` residual blocks, pooling, then two linear layers.

    With ``shared_block=True`` the blocks are one instance repeated, exactly as
    the book's code builds them (75,810 parameters instead of 159,330 at the
    defaults); by default every block has its own weights.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, height: int = 32,
                 width: int = 32, n_chans1: int = 32, n_blocks: int = 10, n_hidden: int = 32,
                 shared_block: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, n_chans1, kernel_size=3, padding=1)
        if shared_block:
            self.resblocks = nn.Sequential(*(n_blocks * [ResBlock(n_chans=n_chans1)]))
        else:
            self.resblocks = nn.Sequential(*(ResBlock(n_chans=n_chans1) for _ in range(n_blocks)))
        features = _flat_features(InputShape(channels=in_channels, height=height, width=width),
                                  n_chans1, 2)
        self.fc1 = nn.Linear(features, n_hidden)
        self.fc2 = nn.Linear(n_hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_pool_relu(self.conv1, x, self.training)
        out = self.resblocks(out)
        out = F.max_pool2d(out, 2)
        return linear_head(self.fc1, self.fc2, out, RELU, self.training)


def _shape_kwargs(input_shape: InputShape, num_classes: int) -> dict[str, int]:
    return {"in_channels": input_shape.channels, "num_classes": num_classes,
            "height": input_shape.height, "width": input_shape.width}


def net(hparams: NetHParams, *, input_shape: InputShape, num_classes: int) -> Net:
    return Net(**_shape_kwargs(input_shape, num_classes), n_hidden=hparams.n_hidden)


def netwidth(hparams: WidthHParams, *, input_shape: InputShape, num_classes: int) -> NetWidth:
    return NetWidth(**_shape_kwargs(input_shape, num_classes), **hparams.model_dump())


def netdropout(hparams: DropoutHParams, *, input_shape: InputShape,
               num_classes: int) -> NetDropout:
    return NetDropout(**_shape_kwargs(input_shape, num_classes), **hparams.model_dump())


def netbatchnorm(hparams: WidthHParams, *, input_shape: InputShape,
                 num_classes: int) -> NetBatchNorm:
    return NetBatchNorm(**_shape_kwargs(input_shape, num_classes), **hparams.model_dump())


def netdepth(hparams: WidthHParams, *, input_shape: InputShape, num_classes: int) -> NetDepth:
    return NetDepth(**_shape_kwargs(input_shape, num_classes), **hparams.model_dump())


def netres(hparams: WidthHParams, *, input_shape: InputShape, num_classes: int) -> NetRes:
    return NetRes(**_shape_kwargs(input_shape, num_classes), **hparams.model_dump())


def netresdeep(hparams: ResDeepHParams, *, input_shape: InputShape,
               num_classes: int) -> NetResDeep:
    return NetResDeep(**_shape_kwargs(input_shape, num_classes), n_chans1=hparams.n_chans1,
                      n_blocks=hparams.n_blocks, n_hidden=hparams.n_hidden,
                      shared_block=hparams.shared_block)
