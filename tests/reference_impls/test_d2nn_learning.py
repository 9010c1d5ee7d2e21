"""D2NN learning rules against hand-computed values: ε schedule, mini-bag rewards, Q-targets,
the bag Q-loss, and the joint loss's pieces in the method."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.config import resolve_config
from benchmarks.engine import StepContext, get_method
from reference_impls.d2nn.learning import (
    bag_ids,
    bag_q_loss,
    bag_rewards,
    epsilon_at,
    f1_score,
    q_targets,
)


def test_epsilon_decays_linearly_over_the_first_60_percent_then_stays():
    assert epsilon_at(0.0) == 1.0
    assert epsilon_at(0.3) == pytest.approx(1.0 - 0.95 * 0.5)
    assert epsilon_at(0.6) == pytest.approx(0.05)
    assert epsilon_at(0.8) == pytest.approx(0.05) and epsilon_at(1.0) == pytest.approx(0.05)
    values = [epsilon_at(i / 100) for i in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert epsilon_at(0.5, start=0.5, end=0.1, decay_fraction=1.0) == pytest.approx(0.3)


def test_f1_of_a_bag_and_its_empty_case():
    assert float(f1_score(torch.tensor(1), torch.tensor(1), torch.tensor(1))) == pytest.approx(0.5)
    assert float(f1_score(torch.tensor(0), torch.tensor(0), torch.tensor(0))) == 1.0  # nothing to find
    assert float(f1_score(torch.tensor(0), torch.tensor(2), torch.tensor(0))) == 0.0


def test_mini_bag_reward_on_a_hand_computed_example():
    # bag 0: predictions 1,0,1,0 vs targets 1,1,0,0 -> tp 1, fp 1, fn 1 -> F1 = 2/4 = 0.5;
    #        costs 0.2, 0.4, 0.6, 0.8 -> E = -0.5; r = 0.8 * 0.5 + 0.2 * (-0.5) = 0.3
    # bag 1: predictions 0,0 vs targets 0,0 -> F1 = 1 (nothing to find, nothing found);
    #        costs 1.0, 0.5 -> E = -0.75; r = 0.8 - 0.15 = 0.65
    predictions = torch.tensor([1, 0, 1, 0, 0, 0])
    targets = torch.tensor([1, 1, 0, 0, 0, 0])
    cost = torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0, 0.5])
    bags = bag_ids(6, 4)
    assert bags.tolist() == [0, 0, 0, 0, 1, 1]
    rewards = bag_rewards(predictions, targets, cost, 0.8, bags, "f1")
    assert rewards.tolist() == pytest.approx([0.3] * 4 + [0.65] * 2)
    # accuracy bags: bag 0 has 2 of 4 right -> 0.8 * 0.5 - 0.2 * 0.5 = 0.3; bag 1 all right
    assert bag_rewards(predictions, targets, cost, 0.8, bags, "accuracy").tolist() == pytest.approx([0.3] * 4 + [0.65] * 2)
    # one sample per bag is per-sample reward
    single = bag_rewards(predictions, targets, cost, 0.5, bag_ids(6, 1), "accuracy")
    assert single.tolist() == pytest.approx([0.5 * c - 0.5 * k for c, k in zip([1, 0, 0, 1, 1, 1], cost.tolist(), strict=True)])
    with pytest.raises(ValueError, match="lambda"):
        bag_rewards(predictions, targets, cost, 1.5, bags)


def test_q_targets_on_a_hand_built_episode():
    # three control nodes in topological order; sample 0 visits c0, c1, c2; sample 1 visits
    # c0 then c2 (its path skips c1); sample 2 visits only c0 (it stopped there).
    visited = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 0, 0]], dtype=torch.bool)
    best_next = torch.tensor([[0.1, 0.7, 0.4], [0.2, 9.0, 0.3], [0.5, 9.0, 9.0]])
    rewards = torch.tensor([1.0, 2.0, 3.0])
    targets = q_targets(visited, best_next, rewards)
    expected = torch.tensor(
        [
            [0.7, 0.4, 1.0],  # c0 -> max Q of c1, c1 -> max Q of c2, c2 -> final reward
            [0.3, 0.0, 2.0],  # c0 -> max Q of c2 (the next control it visits)
            [3.0, 0.0, 0.0],  # its only decision is its last: the final reward
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(targets, expected)


def test_bag_q_loss_on_a_hand_computed_example():
    taken = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    visited = torch.tensor([[1, 1], [1, 0], [1, 1]], dtype=torch.bool)
    bags = torch.tensor([0, 0, 1])
    # bag 0, control 0: mean Q (1+3)/2 = 2, mean target 0.5 -> 2.25; control 1: only sample 0
    # visited it: (2-1)^2 = 1.  bag 1: (5-2)^2 + (4-2)^2 = 13.  Average over 2 bags: 16.25/2
    loss = bag_q_loss(taken, targets, visited, bags)
    assert loss.item() == pytest.approx((2.25 + 1.0 + 13.0) / 2)
    loss.backward()
    # d/dQ of sample 0 at control 0: 2 * (2 - 0.5) * (1/2) / 2 bags = 0.75; unvisited: 0
    assert taken.grad[0, 0].item() == pytest.approx(0.75)
    assert taken.grad[1, 1].item() == 0.0
    # with bags of one it is per-sample Q-learning
    per_sample = bag_q_loss(taken.detach(), targets, visited, torch.arange(3))
    assert float(per_sample) == pytest.approx(((1 + 1) + 4 + (9 + 4)) / 3)


def _method(lam: float = 0.8, **args):
    cfg = resolve_config({
        "name": "t",
        "model": {"name": "d2nn_highlow", "kwargs": {"width": 4}},
        "dataset": {"name": "digits", "options": {"positive_classes": [0]}},
        "method": "d2nn",
        "method_args": {"lam": lam, **args},
        "train": {"epochs": 1},
        "stages": [{"name": "pretrain"}, {"name": "joint"}],
    })
    return cfg, get_method("d2nn")(cfg)


def test_joint_loss_combines_ce_and_bag_q_loss_from_the_trace(monkeypatch):
    from benchmarks.data import load_split

    cfg, method = _method(lam=0.8, bag_size=4)
    torch.manual_seed(0)
    model = method.build_model(method.info).train()
    split = load_split("digits", "train", options=cfg["dataset"]["options"])  # "0 vs rest"
    images, targets = split.images[:16], split.targets[:16]
    stage = method.stages()[1]
    ctx = StepContext(stage, epoch=0, step=30, total_steps=100)  # progress 0.3
    monkeypatch.setattr(torch, "rand", lambda n, **kw: torch.ones(n))  # no exploration draws win
    loss, logs = method.loss(model, images, targets, ctx)
    assert logs["epsilon"] == pytest.approx(epsilon_at(0.3))
    assert float(logs["loss"]) == pytest.approx(float(logs["ce"]) + float(logs["q_loss"]))
    # the cost term is the routing trace's MACs over the reference (High NN) path
    from benchmarks.routing import trace

    with torch.no_grad(), trace() as t:
        model(images)
    reference = model.reference_macs(images[:1])
    assert logs["macs_ratio"] == pytest.approx(float(t.macs_theoretical.double().mean()) / reference)
    loss.backward()
    assert all(p.grad is not None for p in model.nodes["q"].parameters())


def test_pretrain_loss_sums_the_exits_cross_entropies():
    from benchmarks.data import load_split

    cfg, method = _method()
    torch.manual_seed(0)
    model = method.build_model(method.info).train()
    split = load_split("digits", "train", options=cfg["dataset"]["options"])
    images, targets = split.images[:16], split.targets[:16]
    ctx = StepContext(method.stages()[0], 0, 0, 10)
    loss, _ = method.loss(model, images, targets, ctx)
    torch.manual_seed(0)
    reference = method.build_model(method.info).train()
    run = reference(images, policy="all", return_run=True)
    expected = sum(torch.nn.functional.cross_entropy(run.outputs[e], targets) for e in ("high", "low"))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert math.isfinite(loss.item())


def test_stage_kinds_and_method_args_are_validated():
    from benchmarks.errors import ConfigError

    with pytest.raises(ConfigError, match="method_args.lam' must be in"):
        _method(lam=1.5)
    with pytest.raises(ConfigError, match="method_args.bag_size"):
        _method(bag_size=0)
    with pytest.raises(ConfigError, match="unknown key 'method_args.gamma'"):
        _method(gamma=0.9)
    with pytest.raises(ConfigError, match="method_args.epsilon"):
        _method(epsilon={"begin": 1.0})
    cfg, method = _method()
    method.cfg = {**cfg, "stages": [{"name": "finetune"}]}
    with pytest.raises(ConfigError, match="'pretrain' or 'joint'"):
        method.stages()


def test_control_nodes_can_learn_at_their_own_rate_in_the_joint_stage():
    from benchmarks.engine.optim import build_optimizer

    cfg, method = _method(q_lr_scale=10)
    assert _method()[1].q_lr_scale == 10.0  # the default
    torch.manual_seed(0)
    model = method.build_model(method.info)
    pretrain, joint = method.stages()
    assert isinstance(method.trainable_parameters(model, pretrain), list)
    joint = type(joint)(**{**joint.__dict__, "optimizer": {"name": "adam", "lr": 0.002}})
    groups = method.trainable_parameters(model, joint)
    optimizer = build_optimizer(groups, joint.optimizer)
    control = {id(p) for p in model.nodes["q"].parameters()}
    regular_group, control_group = optimizer.param_groups
    assert regular_group["lr"] == pytest.approx(0.002) and control_group["lr"] == pytest.approx(0.02)
    assert {id(p) for p in control_group["params"]} == control
    assert len(regular_group["params"]) + len(control) == len(list(model.parameters()))
