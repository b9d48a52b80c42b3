"""ModelEMA: parameters move by (1 - decay) towards the model, buffers are copied, no aliasing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dtkd_pipeline.train.ema import ModelEMA


def small_model() -> nn.Module:
    """Parameters (conv, batch-norm affine) and buffers (running statistics, batch count)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))


def test_ema_is_a_frozen_copy_not_the_trained_model() -> None:
    model = small_model()
    ema = ModelEMA(model, decay=0.999)
    assert ema.module is not model
    for mine, theirs in zip(ema.module.parameters(), model.parameters(), strict=True):
        assert mine is not theirs and mine.data_ptr() != theirs.data_ptr()
        assert torch.equal(mine, theirs) and not mine.requires_grad
    assert not ema.module.training
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)  # training the model leaves the EMA copy alone until update()
    assert not torch.equal(ema.module[0].weight, model[0].weight)


def test_one_update_with_decay_half_gives_the_midpoint() -> None:
    model = small_model()
    ema = ModelEMA(model, decay=0.5)
    old = {name: p.detach().clone() for name, p in ema.module.named_parameters()}
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 3.0)
    ema.update(model)
    for name, param in model.named_parameters():
        expected = (old[name] + param.detach()) / 2
        torch.testing.assert_close(dict(ema.module.named_parameters())[name], expected)
    # A second update moves half of the remaining distance again.
    ema.update(model)
    for name, param in model.named_parameters():
        expected = old[name] / 4 + param.detach() * 3 / 4
        torch.testing.assert_close(dict(ema.module.named_parameters())[name], expected)


def test_an_update_keeps_decay_of_the_average_and_takes_one_minus_decay_of_the_model() -> None:
    """decay 0.9: 0.9 old + 0.1 new (at 0.5 the two weights are indistinguishable)."""
    model = small_model()
    ema = ModelEMA(model, decay=0.9)
    old = {name: p.detach().clone() for name, p in ema.module.named_parameters()}
    with torch.no_grad():
        for param in model.parameters():
            param.add_(10.0)
    ema.update(model)
    for name, param in model.named_parameters():
        expected = 0.9 * old[name] + 0.1 * param.detach()
        torch.testing.assert_close(dict(ema.module.named_parameters())[name], expected)


def test_update_copies_buffers_and_does_not_share_them() -> None:
    model = small_model().train()
    ema = ModelEMA(model, decay=0.9)
    model(torch.randn(2, 3, 8, 8) * 5 + 2)  # a training step moves the batch-norm statistics
    ema.update(model)
    for (name, mine), theirs in zip(ema.module.named_buffers(), model.buffers(), strict=True):
        assert torch.equal(mine, theirs), name
        assert mine.data_ptr() != theirs.data_ptr(), name
    assert int(ema.module[1].num_batches_tracked) == 1
    model(torch.randn(2, 3, 8, 8))
    assert not torch.equal(ema.module[1].running_mean, model[1].running_mean)


def test_state_dict_round_trip_and_decay_range() -> None:
    model = small_model()
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(2.0)
    ema.update(model)
    restored = ModelEMA(small_model(), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    for key, value in ema.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="decay"):
            ModelEMA(model, decay=bad)
