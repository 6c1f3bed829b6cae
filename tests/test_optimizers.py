"""train.optimizer: each choice builds the named torch optimizer and takes a step; 8-bit AdamW is
refused off CUDA with the fix."""

from __future__ import annotations

import pytest
import torch

from tuneloop.config.recipe import TrainConfig
from tuneloop.errors import UserError
from tuneloop.train.optimizers import decay_groups, make_optimizer


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 1))


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD),
                                       ("adafactor", torch.optim.Adafactor)])
def test_each_optimizer_steps_and_lowers_the_loss(name, cls):
    net, x, y = model(), torch.randn(64, 8), torch.randn(64, 1)
    optimizer = make_optimizer(decay_groups(net, 0.01), TrainConfig(optimizer=name, learning_rate=1e-2))
    assert type(optimizer) is cls
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]  # no decay on norms/biases
    first = None
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(net(x), y)
        first = first if first is not None else float(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < first


def test_adamw_8bit_needs_cuda():
    with pytest.raises(UserError, match="adamw_8bit needs a CUDA GPU"):
        make_optimizer(decay_groups(model(), 0.0), TrainConfig(optimizer="adamw_8bit"), "cpu")
