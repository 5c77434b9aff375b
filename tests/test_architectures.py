"""The seven chapter-8 architectures: sizes, shapes, layouts and initialization."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import zoo

PARAMS = {
    "Net": 18_090,
    "NetWidth": 38_386,
    "NetDropout": 38_386,
    "NetBatchNorm": 38_482,
    "NetDepth": 16_130,
    "NetRes": 16_130,
    "NetResDeep": 159_330,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_all_seven_are_registered() -> None:
    assert set(PARAMS) <= set(zoo.list_models())


@pytest.mark.parametrize(("name", "expected"), sorted(PARAMS.items()))
def test_parameter_counts_match_the_book(name: str, expected: int) -> None:
    assert n_params(zoo.create_model(name)) == expected


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_the_classes_built_directly_are_the_registered_defaults(name: str) -> None:
    """``NetWidth()`` is what ``create_model("NetWidth")`` builds: the same layers and rates.

    The classes are public (the book's code constructs them with no arguments), so their
    own defaults are the book's settings, not only the specs' defaults.
    """
    registered = zoo.create_model(name)
    direct = type(registered)()
    assert n_params(direct) == PARAMS[name]
    assert ({k: v.shape for k, v in direct.state_dict().items()}
            == {k: v.shape for k, v in registered.state_dict().items()})
    assert ([m.p for m in direct.modules() if isinstance(m, nn.Dropout2d)]
            == [m.p for m in registered.modules() if isinstance(m, nn.Dropout2d)])
    with torch.no_grad():
        assert direct.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 2)


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("batch", [1, 7])
def test_output_shape_at_defaults(name: str, batch: int) -> None:
    model = zoo.create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, 32, 32))
    assert out.shape == (batch, 2)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_output_shape_at_other_size_channels_and_classes(name: str) -> None:
    model = zoo.create_model(name, num_classes=5, in_height=48, in_width=40, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 48, 40))
    assert out.shape == (3, 5)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_channels_last_forward_equals_contiguous(name: str) -> None:
    torch.manual_seed(0)
    model = zoo.create_model(name).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        got = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_resblock_initialization_is_kaiming_normal() -> None:
    torch.manual_seed(0)
    model = zoo.create_model("NetResDeep")
    blocks = list(model.resblocks)
    assert len(blocks) == 10
    for block in blocks:
        weight = block.conv.weight
        fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
        target = math.sqrt(2.0 / fan_in)
        assert abs(weight.std().item() - target) / target < 0.10
        assert weight.mean().abs().item() < 0.1 * target
        assert block.conv.bias is None
        assert torch.all(block.batch_norm.weight == 0.5)
        assert torch.all(block.batch_norm.bias == 0)


def test_resnetdeep_blocks_are_independent_by_default() -> None:
    model = zoo.create_model("NetResDeep")
    weights = [b.conv.weight for b in model.resblocks]
    assert len({id(w) for w in weights}) == 10
    assert not torch.equal(weights[0], weights[1])
    assert n_params(model) == 159_330


def test_shared_block_option_reproduces_the_book() -> None:
    model = zoo.create_model("NetResDeep", shared_block=True)
    blocks = list(model.resblocks)
    assert all(b is blocks[0] for b in blocks)
    assert n_params(model) == 75_810
    # A training step keeps them one block: gradients of all ten uses accumulate into it.
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    assert all(b.conv.weight is blocks[0].conv.weight for b in blocks)


def test_n_blocks_and_width_hyperparameters_take_effect() -> None:
    model = zoo.create_model("NetResDeep", n_blocks=3, n_chans1=8)
    assert len(model.resblocks) == 3
    assert model.resblocks[0].conv.weight.shape == (8, 8, 3, 3)
    assert zoo.create_model("NetWidth", n_chans1=64).conv2.out_channels == 32


def test_dropout_hyperparameter_and_eval_mode() -> None:
    model = zoo.create_model("NetDropout", dropout=0.25)
    assert model.conv1_dropout.p == 0.25
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


def test_smallest_accepted_input_size_runs() -> None:
    for name in PARAMS:
        size = zoo.get_spec(name).min_input_size
        model = zoo.create_model(name, in_height=size, in_width=size).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, size, size)).shape == (2, 2)


class BookNet(nn.Module):
    """Net exactly as the book's code writes it: activation, then pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.max_pool2d(torch.tanh(self.conv1(x)), 2)
        out = torch.nn.functional.max_pool2d(torch.tanh(self.conv2(out)), 2)
        out = out.view(-1, 8 * 8 * 8)
        out = torch.tanh(self.fc1(out))
        return self.fc2(out)  # type: ignore[no-any-return]


def test_pooling_before_the_activation_computes_the_books_net() -> None:
    torch.manual_seed(0)
    ours = zoo.create_model("Net")
    book = BookNet()
    book.load_state_dict(ours.state_dict())
    x = torch.randn(16, 3, 32, 32)
    out_ours, out_book = ours(x), book(x)
    assert torch.equal(out_ours, out_book)  # max of tanh == tanh of max, bit for bit
    out_ours.sum().backward()
    out_book.sum().backward()
    for (name, p), q in zip(ours.named_parameters(), book.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


# -- what the chapter-8 plugin declares (plugins/zoo_chapter8/specs.py) -----------------

#: (architecture, hyperparameter, default, lowest accepted, highest accepted); one past
#: either end is refused.
_BOUNDS = [
    *((a, "n_hidden", 32, 1, 4096) for a in ("Net", "NetWidth", "NetDropout", "NetBatchNorm",
                                             "NetDepth", "NetRes", "NetResDeep")),
    *((a, "n_chans1", 32, 2, 1024) for a in ("NetWidth", "NetDropout", "NetBatchNorm",
                                             "NetDepth", "NetRes")),
    ("NetResDeep", "n_chans1", 32, 1, 1024),
    ("NetResDeep", "n_blocks", 10, 1, 200),
]


@pytest.mark.parametrize(("arch", "name", "default", "low", "high"), _BOUNDS)
def test_chapter8_hyperparameters_have_their_declared_defaults_and_bounds(
        arch: str, name: str, default: int, low: int, high: int) -> None:
    from pydantic import ValidationError

    hparams = zoo.get_spec(arch).hparams
    assert getattr(hparams(), name) == default
    for ok in (low, high):
        assert getattr(hparams(**{name: ok}), name) == ok
    for bad in (low - 1, high + 1):
        with pytest.raises(ValidationError, match=name):
            hparams(**{name: bad})


def test_chapter8_dropout_and_shared_block_declarations() -> None:
    from pydantic import ValidationError

    dropout = zoo.get_spec("NetDropout").hparams
    assert dropout().dropout == 0.4
    assert dropout(dropout=0.0).dropout == 0.0
    for bad in (-0.01, 1.0):
        with pytest.raises(ValidationError, match="dropout"):
            dropout(dropout=bad)
    deep = zoo.get_spec("NetResDeep").hparams
    assert deep().shared_block is False and deep(shared_block=True).shared_block is True
    assert set(zoo.get_spec("Net").hparams.model_fields) == {"n_hidden"}
    assert set(zoo.get_spec("NetDepth").hparams.model_fields) == {"n_hidden", "n_chans1"}


@pytest.mark.parametrize(("arch", "min_size", "tags", "epochs", "crop", "lr"), [
    ("Net", 4, {"tanh"}, 40, 2, None),
    ("NetWidth", 4, {"tanh", "width"}, 40, 2, None),
    ("NetDropout", 4, {"tanh", "width", "dropout", "regularization"}, 100, 2, None),
    ("NetBatchNorm", 4, {"tanh", "width", "batchnorm", "regularization"}, 40, 2, None),
    ("NetDepth", 8, {"relu", "depth"}, 40, 2, None),
    ("NetRes", 8, {"relu", "depth", "residual"}, 40, 2, None),
    ("NetResDeep", 4, {"relu", "depth", "residual", "batchnorm"}, None, None, 0.05),
])
def test_chapter8_specs_declare_their_input_size_tags_and_recipe(
        arch: str, min_size: int, tags: set[str], epochs: int | None, crop: int | None,
        lr: float | None) -> None:
    spec = zoo.get_spec(arch)
    assert spec.min_input_size == min_size
    assert set(spec.tags) == {"chapter8", "cifar", *tags}
    assert spec.recipe.model_dump(exclude_none=True) == {
        k: v for k, v in (("epochs", epochs), ("crop_padding", crop), ("lr", lr))
        if v is not None}
    assert spec.source.startswith("Deep Learning with PyTorch") and "chapter 8" in spec.source
    assert spec.builder == f"zoo_chapter8.models:{arch.lower()}"


def test_the_plugin_publishes_the_books_validation_accuracies() -> None:
    """Chapter 8's comparison of the seven (figure 8.12), as zoo compare marks them."""
    book = {"Net": 0.89, "NetWidth": 0.90, "NetDropout": 0.88, "NetBatchNorm": 0.89,
            "NetDepth": 0.90, "NetRes": 0.90, "NetResDeep": 0.86}
    refs = zoo.default_registry().references(list(book))
    assert {arch: ref.value for arch, ref in refs.items()} == book
    assert {ref.source for ref in refs.values()} == {
        "Deep Learning with PyTorch (Stevens, Antiga, Viehmann), chapter 8"}
