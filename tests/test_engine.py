import math
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepstep.engine.checkpoint import flatten, load_state, load_weights, save_checkpoint, unflatten
from deepstep.engine.loop import evaluate, train_one_epoch
from deepstep.engine.optim import build_optimizer, build_schedule, orthogonalize
from deepstep.engine.precision import Precision, resolve_precision
from deepstep.errors import CheckpointError, DeepstepError

FP32 = Precision("32", "cpu", "test")


def step(model, batch):
    x, y = batch
    out = model(x)
    return {"loss": F.cross_entropy(out, y), "output": out, "acc": (out.argmax(1) == y).float().mean()}


def _problem(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, n, 32)]


def _fit(epochs=5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = build_optimizer("sgd", model, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0)
    sched = build_schedule("none", opt, total_steps=epochs * 8, warmup_steps=0)
    history = [train_one_epoch(model, step, _problem(), opt, sched, FP32, FP32.grad_scaler())[0] for _ in range(epochs)]
    return model, opt, history


@pytest.mark.parametrize("micro_batch", [8, 12, 31])  # 32 in 4 parts; in 3 (11 + 11 + 10); in 2 (16 + 16)
def test_micro_batches_train_as_the_whole_batch_does(micro_batch):
    def fit(micro_batch):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        opt = build_optimizer("sgd", model, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0)
        sched = build_schedule("none", opt, total_steps=8, warmup_steps=0)
        means, count = train_one_epoch(
            model, step, _problem(), opt, sched, FP32, FP32.grad_scaler(), micro_batch=micro_batch
        )
        return model, means, count

    whole, whole_means, whole_count = fit(0)
    parts, parts_means, parts_count = fit(micro_batch)
    assert parts_count == whole_count == 256
    assert parts_means == pytest.approx(whole_means, rel=1e-5)
    for a, b in zip(whole.parameters(), parts.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    torch.manual_seed(0)
    assert not torch.allclose(whole[0].weight, nn.Linear(4, 16).weight)  # it trained


@pytest.mark.parametrize("scaled", [False, True])  # True: fp16's grad scaler, whose gradients are 1024x
def test_clip_grad_bounds_a_step_to_the_norm_given(scaled):
    # one SGD step at lr 1 without momentum moves the weights by the clipped gradient itself
    def moved(clip_grad):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        before = [p.detach().clone() for p in model.parameters()]
        opt = build_optimizer("sgd", model, lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0)
        sched = build_schedule("none", opt, total_steps=1, warmup_steps=0)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaled else FP32.grad_scaler()
        train_one_epoch(model, step, _problem()[:1], opt, sched, FP32, scaler, clip_grad=clip_grad)
        return torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])

    whole = moved(0.0)
    assert whole.norm().item() > 0.1
    clipped = moved(0.01)
    assert clipped.norm().item() == pytest.approx(0.01, rel=1e-3)
    assert torch.allclose(clipped / clipped.norm(), whole / whole.norm(), atol=1e-5)  # the same direction
    assert torch.equal(moved(10.0), whole)  # a norm above the gradient's changes nothing


def test_micro_batches_normalise_each_part_by_its_own_statistics():
    # Batch norm is the one difference: with parts, each is normalised alone (as ghost batch norm).
    def running_mean(micro_batch):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
        opt = build_optimizer("sgd", model, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)
        sched = build_schedule("none", opt, total_steps=1, warmup_steps=0)
        batch = [(torch.randn(32, 4) + torch.arange(32.0).unsqueeze(1), torch.randint(0, 2, (32,)))]
        train_one_epoch(model, step, batch, opt, sched, FP32, FP32.grad_scaler(), micro_batch=micro_batch)
        return model[1].running_mean.clone()

    assert not torch.allclose(running_mean(0), running_mean(16))


def test_training_lowers_the_loss_and_learns_the_rule():
    model, _, history = _fit()
    assert history[-1]["loss"] < history[0]["loss"] / 2
    means, kept = evaluate(model, step, _problem(seed=1), FP32, keep=("output",))
    assert means["acc"] > 0.9 and kept["output"].shape == (256, 2)


def test_the_epoch_means_weight_every_example_equally():
    model = nn.Linear(4, 2)
    batches = [
        (torch.zeros(3, 4), torch.zeros(3, dtype=torch.long)),
        (torch.zeros(1, 4), torch.ones(1, dtype=torch.long)),
    ]
    nn.init.zeros_(model.weight)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([1.0, 0.0]))
    means, _ = evaluate(model, step, batches, FP32)
    assert means["acc"] == pytest.approx(0.75)  # 3 of 4 examples, not the mean of 1.0 and 0.0


def test_a_loss_that_becomes_nan_stops_training_with_a_one_line_error():
    model = nn.Linear(4, 2)
    opt = build_optimizer("sgd", model, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)
    sched = build_schedule("none", opt, total_steps=1, warmup_steps=0)
    batches = [(torch.full((2, 4), float("nan")), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(DeepstepError, match="training loss became nan"):
        train_one_epoch(model, step, batches, opt, sched, FP32, FP32.grad_scaler())


def test_weights_round_trip_through_a_checkpoint_exactly(tmp_path):
    model, _, _ = _fit(2)
    save_checkpoint(tmp_path, "best", "e0002", model, {"model": {"name": "mlp"}})
    fresh = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    record = load_weights(tmp_path, "best", fresh)
    assert record["model"] == {"name": "mlp"}
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_state_round_trips_through_a_checkpoint(tmp_path):
    model, opt, _ = _fit(2)
    rng = np.random.get_state()
    save_checkpoint(tmp_path, "last", "e0002", model, {}, state={"optimizer": opt.state_dict(), "rng": rng})
    state = load_state(tmp_path, "last")
    again = build_optimizer("sgd", model, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0)
    again.load_state_dict(state["optimizer"])
    for key, value in opt.state_dict()["state"].items():
        assert torch.equal(value["momentum_buffer"], again.state_dict()["state"][key]["momentum_buffer"])
    assert state["rng"][0] == rng[0] and np.array_equal(state["rng"][1], rng[1]) and state["rng"][2:] == list(rng[2:])


def test_a_new_checkpoint_replaces_the_old_files_only_after_it_is_complete(tmp_path):
    model, _, _ = _fit(1)
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, "last", "e0001", model, {})
    save_checkpoint(folder, "last", "e0002", model, {})
    assert sorted(p.name for p in folder.iterdir()) == ["last-e0002.safetensors", "last.json"]


def test_a_damaged_checkpoint_is_refused_with_its_name(tmp_path):
    model, _, _ = _fit(1)
    save_checkpoint(tmp_path, "best", "e0001", model, {})
    weights = tmp_path / "best-e0001.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="best-e0001.safetensors is damaged"):
        load_weights(tmp_path, "best", nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)))


def test_nested_state_with_int_keys_and_tuples_survives_flattening():
    state = {"a": {0: torch.ones(2), 1: [torch.zeros(1), 3.5, None]}, "b": (1, "x")}
    tensors = {}
    restored = unflatten(flatten(state, "", tensors), tensors)
    assert torch.equal(restored["a"][0], torch.ones(2)) and restored["a"][1][1:] == [3.5, None]
    assert restored["b"] == [1, "x"] and set(tensors) == {"a.0", "a.1.0"}


@pytest.mark.parametrize("name", ["none", "step", "cosine", "onecycle", "linear"])
def test_every_schedule_starts_low_or_at_the_base_rate_and_ends_no_higher(name):
    model = nn.Linear(2, 2)
    opt = build_optimizer("sgd", model, lr=1.0, momentum=0.9, nesterov=False, weight_decay=0.0)
    sched = build_schedule(name, opt, total_steps=100, warmup_steps=10)
    rates = []
    for _ in range(100):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] <= 1.0 and rates[-1] <= rates[len(rates) // 2] + 1e-12
    assert max(rates) == pytest.approx(1.0)


def _rates(name, steps, **factors):
    opt = build_optimizer("sgd", nn.Linear(2, 2), lr=2.0, momentum=0.9, nesterov=False, weight_decay=0.0)
    sched = build_schedule(name, opt, total_steps=steps, warmup_steps=0 if name == "onecycle" else 10, **factors)
    rates = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.step()
        sched.step()
        rates.append(opt.param_groups[0]["lr"])
    return rates


@pytest.mark.parametrize("name", ["cosine", "onecycle", "linear"])
def test_the_schedule_starts_and_ends_at_the_given_fractions_of_the_rate(name):
    rates = _rates(name, 100, start_factor=0.2, end_factor=0.07)
    warmup = 100 // 4 if name == "onecycle" else 10
    assert rates[0] == pytest.approx(2.0 * (0.2 + 0.8 / warmup))  # the first step's rate, just above the start
    assert max(rates) == pytest.approx(2.0) and rates[-1] == pytest.approx(2.0 * 0.07)
    assert min(rates) == pytest.approx(2.0 * 0.07)  # never below the end
    assert _rates(name, 100)[-1] == pytest.approx(0.0)  # the defaults: from and to zero


def test_the_linear_schedule_without_a_warm_up_falls_straight_from_the_base_rate():
    opt = build_optimizer("sgd", nn.Linear(2, 2), lr=2.0, momentum=0.9, nesterov=False, weight_decay=0.0)
    sched = build_schedule("linear", opt, total_steps=100, warmup_steps=0)
    rates = []
    for _ in range(100):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] == 2.0 and rates[50] == pytest.approx(1.0) and rates[99] == pytest.approx(0.02)
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))


@pytest.mark.parametrize("shape", [(64, 200), (200, 64), (8, 36)])
def test_orthogonalize_evens_out_the_singular_values_and_keeps_the_directions(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    out = orthogonalize(g)
    assert out.shape == g.shape and out.dtype == torch.float32
    values = torch.linalg.svdvals(out.double())
    assert values.min() > 0.5 and values.max() < 1.5  # from a spread of about 3.6x (64 x 200) to about even
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    assert F.cosine_similarity(out.double().flatten(), (u @ vh).flatten(), dim=0) > 0.97


def _muon_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_muon_orthogonalises_the_filters_momentum_and_steps_the_rest_as_sgd():
    model, twin = _muon_net(), _muon_net()
    opt = build_optimizer(
        "muon", model, lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.01, muon_lr=0.2, muon_momentum=0.6
    )
    sgd_params = [p for p in twin.parameters() if p.ndim != 4]
    sgd = build_optimizer("sgd", twin, lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.01)
    conv, filters = model[0].weight, twin[0].weight.detach().clone()
    grads = [[torch.randn_like(p) for p in model.parameters()] for _ in range(2)]
    buffer = None
    for step_grads in grads:
        for p, q, g in zip(model.parameters(), twin.parameters(), step_grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        sgd.step()
        g = step_grads[0]  # the filters': momentum 0.6, Nesterov, then orthogonalised; norm fixed first
        buffer = g.clone() if buffer is None else 0.6 * buffer + g
        filters = filters * 2.0 / filters.norm()  # sqrt(4 output channels)
        filters = filters - 0.2 * orthogonalize((g + 0.6 * buffer).reshape(4, -1)).view_as(filters)
    assert torch.allclose(conv, filters, atol=1e-6)
    others = [p for p in model.parameters() if p.ndim != 4]
    assert all(torch.allclose(p, q, atol=1e-7) for p, q in zip(others, sgd_params, strict=True))


def test_muon_needs_conv_filters():
    with pytest.raises(DeepstepError, match="--optimizer muon steps conv filters, and LSTM has none"):
        build_optimizer("muon", nn.LSTM(3, 4), lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0)


def test_norm_biases_learn_faster_and_are_decayed_as_much_per_step_as_the_weights():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))

    def groups(**kwargs):
        opt = build_optimizer("sgd", model, lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.01, **kwargs)
        return {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}

    default, scaled = groups(), groups(norm_lr_scale=64.0)
    bn, conv, fc = model[1], model[0], model[3]
    assert default[id(bn.bias)] == (0.5, 0.0) and default[id(conv.weight)] == (0.5, 0.01)
    lr, decay = scaled[id(bn.bias)]
    assert lr == 32.0 and lr * decay == pytest.approx(0.5 * 0.01)  # 64x the rate, the weights' decay per step
    for p in (bn.weight, conv.bias, fc.bias):  # other 1-d parameters: as before
        assert scaled[id(p)] == default[id(p)] == (0.5, 0.0)
    assert scaled[id(conv.weight)] == scaled[id(fc.weight)] == (0.5, 0.01)


class _Hinted(nn.Sequential):
    """conv, BN, flatten, linear; the conv asks for its bias to train as the norm shifts do, its
    rate falling to 0 by the end of epoch 2."""

    def __init__(self, hint: dict | None = None):
        super().__init__(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
        self.hint = hint or {"norm_bias": True, "stop_epoch": 2}

    def optimizer_hints(self):
        return [{"params": [self[0].bias], **self.hint}]


def _group_of(optimizer, parameter):
    return next(g for g in optimizer.param_groups if any(p is parameter for p in g["params"]))


def test_a_hinted_bias_trains_as_the_norm_shifts_and_its_rate_falls_to_zero_by_its_stop_epoch():
    model = _Hinted()
    opt = build_optimizer("sgd", model, lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.01, norm_lr_scale=64.0)
    sched = build_schedule("linear", opt, total_steps=40, warmup_steps=0, steps_per_epoch=5)
    hinted, norm, weights = (_group_of(opt, p) for p in (model[0].bias, model[1].bias, model[0].weight))
    assert hinted is not norm and len(hinted["params"]) == 1  # a group of its own
    assert hinted["lr"] == norm["lr"] == 32.0 and hinted["weight_decay"] == norm["weight_decay"] == 0.01 / 64
    rates = []
    for _ in range(40):
        rates.append((hinted["lr"], norm["lr"], weights["lr"]))
        opt.step()
        sched.step()
    assert [r[0] for r in rates[:11]] == pytest.approx([32.0 * (1 - step / 10) for step in range(11)])
    assert all(r[0] == 0.0 for r in rates[10:])  # and stays at 0 after epoch 2
    assert rates[10][1:] == pytest.approx((32.0 * 30 / 40, 0.5 * 30 / 40))  # the others: the run's schedule


def test_a_hint_without_norm_bias_keeps_the_rate_and_decay_and_muon_keeps_its_stop_epoch():
    model = _Hinted({"stop_epoch": 1})
    opt = build_optimizer("sgd", model, lr=0.5, momentum=0.9, nesterov=False, weight_decay=0.01, norm_lr_scale=64.0)
    assert (_group_of(opt, model[0].bias)["lr"], _group_of(opt, model[0].bias)["weight_decay"]) == (0.5, 0.0)
    model = _Hinted()
    model.optimizer_hints = lambda: [{"params": [model[0].weight], "stop_epoch": 1}]  # a conv filter bank
    opt = build_optimizer("muon", model, lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.01, muon_lr=0.2)
    filters = _group_of(opt, model[0].weight)
    assert filters["muon"] and filters["stop_epoch"] == 1 and filters["lr"] == 0.2
    sched = build_schedule("none", opt, total_steps=10, warmup_steps=0, steps_per_epoch=4)
    for _ in range(4):
        opt.step()
        sched.step()
    assert filters["lr"] == 0.0 and _group_of(opt, model[3].weight)["lr"] == 0.5


def test_a_stop_epoch_without_steps_per_epoch_is_refused():
    opt = build_optimizer("sgd", _Hinted(), lr=0.5, momentum=0.9, nesterov=False, weight_decay=0.0)
    with pytest.raises(ValueError, match="needs the schedule's steps_per_epoch"):
        build_schedule("linear", opt, total_steps=10, warmup_steps=0)


def test_weight_decay_skips_biases_and_norm_scales():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    opt = build_optimizer("adamw", model, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.5)
    decayed = [g for g in opt.param_groups if g["weight_decay"] > 0]
    assert [p.shape for p in decayed[0]["params"]] == [torch.Size([3, 3])]


def test_rmsprop_is_torch_s_with_the_groups_weight_decay_and_fits_a_line():
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    opt = build_optimizer("rmsprop", model, lr=0.05, momentum=0.9, nesterov=False, weight_decay=1e-4)
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["momentum"] == 0  # --momentum is SGD's
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 1e-4]  # the bias is not decayed
    x = torch.linspace(-1, 1, 64).unsqueeze(1)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), 3 * x - 1).backward()
        opt.step()
    assert float(model.weight) == pytest.approx(3, abs=0.1) and float(model.bias) == pytest.approx(-1, abs=0.1)


def test_nesterov_without_sgd_momentum_is_a_one_line_error():
    with pytest.raises(DeepstepError, match="--nesterov needs --optimizer sgd or muon and a --momentum above 0"):
        build_optimizer("sgd", nn.Linear(2, 2), lr=0.1, momentum=0.0, nesterov=True, weight_decay=0.0)


def test_fp32_precision_autocast_changes_nothing():
    precision = resolve_precision("32", torch.device("cpu"))
    with precision.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert not precision.grad_scaler().is_enabled()


def test_bf16_precision_runs_matrix_work_in_bf16_on_the_cpu():
    precision = resolve_precision("bf16", torch.device("cpu"))
    with precision.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert math.isclose(float((torch.ones(2, 2) @ torch.ones(2, 2))[0, 0]), 2.0)


def test_fp16_on_a_cpu_runs_but_says_it_will_be_slow_and_names_bf16():
    precision = resolve_precision("16", torch.device("cpu"))
    assert precision.name == "16" and "30-350x slower in training" in precision.reason and "bf16" in precision.reason
    assert "slower" not in resolve_precision("16", torch.device("cuda")).reason


def test_auto_bf16_on_a_cpu_falls_back_to_fp32_for_gru_and_rnn_layers_and_for_small_steps(monkeypatch):
    from deepstep.engine import precision as prec

    monkeypatch.setattr(prec, "_recurrent_error", lambda kind, device, name: None)  # every layer runs in bf16
    auto = prec.Precision("bf16", "cpu", "auto: bf16 autocast, this CPU has AMX/AVX-512-BF16")
    for layer, name in ((nn.GRU(2, 3), "GRU"), (nn.RNN(2, 3), "RNN")):
        fallback = prec.supported_by(auto, nn.Sequential(nn.Linear(2, 2), layer), auto=True)
        assert (fallback.name, fallback.reason) == ("32", f"auto: fp32; {name} layers run slower in bf16 on a CPU")
        assert prec.supported_by(auto, layer, auto=False) is auto  # asked for explicitly: kept
    assert prec.supported_by(auto, nn.LSTM(2, 3), auto=True) is auto  # the LSTM gains from bf16
    on_gpu = prec.Precision("bf16", "cuda", "auto: bf16 autocast, supported by this GPU")
    assert prec.supported_by(on_gpu, nn.GRU(2, 3), auto=True) is on_gpu

    assert prec.pays_off(auto, 32_000_000, auto=True) is auto
    small = prec.pays_off(auto, 31_999_999, auto=True)
    assert small.name == "32" and small.reason.endswith("from 32 M multiply-adds a step, and this one has 32.0 M")
    assert prec.pays_off(auto, 1, auto=False) is auto and prec.pays_off(on_gpu, 1, auto=True) is on_gpu


def test_unwrap_finds_the_plain_module_under_torch_compile():
    from deepstep.engine.checkpoint import unwrap

    plain = nn.Linear(2, 2)
    assert unwrap(torch.compile(plain)) is plain  # compiled lazily: no compilation happens here
    assert set(unwrap(torch.compile(plain)).state_dict()) == {"weight", "bias"}


def test_compile_on_a_cpu_leaves_out_torchs_line_about_a_missing_cuda_runtime(caplog):
    import logging

    from deepstep.engine.distributed import SINGLE, wrap

    wrap(nn.Linear(2, 2), SINGLE, torch.device("cpu"), compile=True)  # compiled lazily
    logger = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        logger.warning("another of its warnings")
    assert [r.getMessage() for r in caplog.records] == ["another of its warnings"]


def test_a_truncated_checkpoint_names_the_intact_one_to_use_instead(tmp_path):
    model, _, _ = _fit(1)
    save_checkpoint(tmp_path, "best", "e0001", model, {"epoch": 1})
    save_checkpoint(tmp_path, "last", "e0002", model, {"epoch": 2}, state={"step": 7})
    weights = tmp_path / "last-e0002.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(
        CheckpointError,
        match=r"last-e0002.safetensors is damaged .*; the best checkpoint \(epoch 1\) is intact \(evaluate, predict and export take --checkpoint best\)",
    ):
        load_weights(tmp_path, "last", nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)))


def test_lookahead_averages_ever_more_strongly_from_30_percent_of_the_steps_and_epochs_end_on_an_update():
    from deepstep.engine.optim import Lookahead

    model = nn.Linear(1, 1, bias=False)
    lookahead = Lookahead(model, total_steps=24, steps_per_epoch=8)

    def weight(value=None):
        with torch.no_grad():
            if value is not None:
                model.weight.fill_(value)
            return model.weight.item()

    def rho(step):
        return 0.95**5 * (step / 24) ** 3

    weight(1.0)
    lookahead.after_step(5)  # before 30% of 24 steps: nothing
    assert lookahead.slow is None
    lookahead.after_step(8)  # an epoch ends, but there is no slow copy yet
    assert lookahead.slow is None and weight() == 1.0
    weight(2.0)
    lookahead.after_step(10)  # the slow copy starts from the model
    assert lookahead.slow[0].item() == 2.0 and weight() == 2.0
    weight(4.0)
    lookahead.after_step(15)
    slow = rho(15) * 2.0 + (1 - rho(15)) * 4.0  # rho 0.19: still weak
    assert weight() == pytest.approx(slow)  # training goes on from the slow copy
    weight(10.0)
    lookahead.after_step(16)  # an epoch ends between updates: one more, so the step since 15 is kept
    slow = rho(16) * slow + (1 - rho(16)) * 10.0
    assert weight() == pytest.approx(slow) and lookahead.slow[0].item() == pytest.approx(slow)
    weight(20.0)
    lookahead.after_step(17)  # between updates the fast weights are free
    assert weight() == 20.0
    lookahead.after_step(20)
    slow = rho(20) * slow + (1 - rho(20)) * 20.0
    assert weight() == pytest.approx(slow)
    weight(30.0)
    lookahead.after_step(24)  # the last update is the strongest, rho = 0.95**5, and the run ends on it
    assert weight() == pytest.approx(0.95**5 * slow + (1 - 0.95**5) * 30.0)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)
def test_keep_freed_memory_stops_training_steps_page_faulting_on_fresh_memory():
    # in a fresh process, as the setting is process-wide. glibc's own bar starts at 128 KiB and is
    # raised after frees in a way that varies from run to run (some runs fault 0 times a step
    # without help), so the test pins the starting bar first: every 16 MiB block is then mapped
    code = """
import ctypes, resource, statistics, torch
from torch import nn
from deepstep.engine.backends import M_MMAP_THRESHOLD, keep_freed_memory
ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 128 * 1024)
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.Flatten())
images = torch.randn(128, 3, 32, 32)  # each layer's output is a 16 MiB block
def faults_per_step():
    counts = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(images).sum().backward()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return statistics.median(counts[2:])
print(faults_per_step(), keep_freed_memory(), faults_per_step())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    default, kept, after = float(out[0]), out[1], float(out[2])
    assert kept == "True"
    assert default > 1000 and after < default / 4


@pytest.mark.parametrize(
    "kernel, padding, bias, channels_last",
    [(3, 1, False, True), (3, 0, True, True), (5, 2, True, False), ((3, 5), (1, 2), False, True), (1, 0, True, True)],
)
def test_the_matmul_weight_gradient_equals_the_convolutions_gradients(kernel, padding, bias, channels_last):
    from deepstep.engine.backends import Columns, _MatmulWeightGrad

    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, kernel, padding=padding, bias=bias).double()
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad_out = torch.randn_like(conv(x))
    expected = torch.autograd.grad(conv(x), (x, conv.weight, *([conv.bias] if bias else [])), grad_out)
    out = _MatmulWeightGrad.apply(x, conv.weight, conv.bias, conv.padding, Columns())
    got = torch.autograd.grad(out, (x, conv.weight, *([conv.bias] if bias else [])), grad_out)
    torch.testing.assert_close(out, conv(x))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def _grad_fn_names(output: torch.Tensor) -> set[str]:
    names, todo = set(), [output.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None:
            names.add(type(fn).__name__)
            todo += [next_fn for next_fn, _ in fn.next_functions]
    return names


def test_matmul_grad_convs_take_over_only_bf16_training_of_outputs_up_to_7x7():
    from deepstep.engine.backends import MatmulGradConv2d, use_matmul_weight_grad

    torch.manual_seed(0)
    plain = nn.Conv2d(64, 32, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    conv = nn.Conv2d(64, 32, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    conv.load_state_dict(plain.state_dict())
    assert use_matmul_weight_grad(conv) == 1 and isinstance(conv, MatmulGradConv2d)
    small, large = torch.randn(8, 64, 7, 7), torch.randn(8, 64, 8, 8)
    ours = "_MatmulWeightGradBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours in _grad_fn_names(conv(small))
        assert ours not in _grad_fn_names(conv(large))  # 8x8 outputs: oneDNN's own gradient is faster
        with torch.no_grad():
            assert conv(small).grad_fn is None
    assert ours not in _grad_fn_names(conv(small))  # fp32

    grads = []
    for layer in (plain, conv):
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(small)
        out.float().square().sum().backward()
        grads.append(layer.weight.grad)
    assert grads[1].dtype == torch.float32
    assert (grads[1] - grads[0]).abs().max() <= 0.01 * grads[0].abs().max()  # both round to bf16


def test_use_matmul_weight_grad_changes_only_stride_1_convs_from_64_channels_and_keeps_their_parameters():
    from deepstep.engine.backends import MatmulGradConv2d, use_matmul_weight_grad

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(64, 64, 3, padding=1),
        nn.Conv2d(64, 64, 3, stride=2),
        nn.Conv2d(64, 64, 3, groups=2),
        nn.Conv2d(64, 64, 3, dilation=2),
        nn.Conv2d(64, 64, 3, padding="same"),
        nn.Conv2d(64, 63, 3),
        nn.Conv2d(63, 64, 3),  # fewer input channels: oneDNN's gradient is faster
        nn.Sequential(nn.Conv2d(64, 4, 1)),
    )
    params, state = list(model.parameters()), {k: v.clone() for k, v in model.state_dict().items()}
    assert use_matmul_weight_grad(model) == 3
    assert [type(m) is MatmulGradConv2d for m in model.modules() if isinstance(m, nn.Conv2d)] == [
        True, False, False, False, False, True, False, True
    ]  # fmt: skip
    assert list(model.parameters()) == params  # the same objects: an optimizer made before still steps them
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model[0].columns is model[7][0].columns  # one buffer for the model


def test_the_im2col_buffer_is_reused_from_step_to_step():
    from deepstep.engine.backends import use_matmul_weight_grad

    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 8, 1))
    assert use_matmul_weight_grad(model) == 2
    x = torch.randn(2, 64, 6, 6)
    pointers = []
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().sum().backward()
        pointers.append(model[0].columns.buffer.data_ptr())
    assert len(set(pointers)) == 1 and model[0].columns.buffer.numel() == 2 * 6 * 6 * 9 * 64  # the larger layer's


def test_cpu_kernels_take_the_matmul_weight_gradient_only_in_bf16_on_a_cpu_with_fast_bf16(monkeypatch):
    from deepstep.engine import backends

    net = nn.Sequential(nn.Conv2d(64, 4, 3))
    bf16, fp32 = Precision("bf16", "cpu", ""), Precision("32", "cpu", "")
    monkeypatch.setattr(backends, "cpu_has_fast_bf16", lambda: True)
    choice = backends.choose_cpu_kernels(net, 64, bf16)
    assert choice.matmul_weight_grad and "weight gradients" in choice.describe()
    assert not backends.choose_cpu_kernels(net, 64, fp32).matmul_weight_grad
    assert not backends.choose_cpu_kernels(nn.Linear(2, 2), 64, bf16).matmul_weight_grad
    monkeypatch.setattr(backends, "cpu_has_fast_bf16", lambda: False)  # emulated bf16: not measured
    assert not backends.choose_cpu_kernels(net, 64, bf16).matmul_weight_grad


def test_the_lr_range_test_suggests_a_rate_below_where_sgd_diverges_and_stops_there():
    from deepstep.engine.fit import Training, find_lr

    # least squares with inputs of unit variance: the loss's curvature is 2, so SGD diverges above lr 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=g)
    y = x @ torch.tensor([3.0, -2.0, 1.0, 0.5]) + 0.1 * torch.randn(512, generator=g)
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)]

    def mse_step(model, batch):
        inputs, target = batch
        return {"loss": F.mse_loss(model(inputs).squeeze(1), target)}

    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD([{"params": [model.weight], "lr": 0.01}, {"params": [model.bias], "lr": 0.005}])
    sched = build_schedule("none", opt, total_steps=100, warmup_steps=0)
    finding = find_lr(
        Training(model, mse_step, mse_step, batches, None, opt, sched, FP32), base_lr=0.01, progress=False
    )
    assert 1e-3 < finding.suggestion < 1
    assert finding.stopped.endswith(("the loss passed 4x its lowest", "the loss became inf", "the loss became nan"))
    assert 1 < finding.lrs[-1] < 10 and len(finding.lrs) == len(finding.losses) < 100  # stopped once it diverged
    assert finding.lrs[0] == pytest.approx(1e-7) and finding.lrs[1] / finding.lrs[0] == pytest.approx(10 ** (8 / 99))
    assert opt.param_groups[1]["lr"] == pytest.approx(opt.param_groups[0]["lr"] / 2)  # each group kept its share
    flat = find_lr(Training(nn.Linear(4, 1), mse_step, mse_step, [(x, 0 * y)] , None, torch.optim.SGD(nn.Linear(4, 1).parameters(), lr=0.01), sched, FP32), base_lr=0.01, steps=20, progress=False)  # fmt: skip
    assert flat.suggestion is None  # an optimizer that trains nothing: the loss never falls, nothing to suggest
    assert flat.withheld == "flat" and finding.withheld == ""


def test_the_lr_range_test_suggests_nothing_when_the_fall_is_within_the_noise_between_batches():
    from deepstep.engine.fit import LR_FIND_MIN_SIGNAL, Training, _steepest, find_lr

    # The loss is the batch's own number whatever the rate: nothing is learned, only batches differ.
    levels = torch.tensor([1.5, 1.4, 1.45, 1.0, 1.2, 1.05, 1.3, 1.1, 1.25, 1.0, 1.35, 1.15])  # high first, by chance
    batches = [(levels[i : i + 1],) for i in range(len(levels))]
    model = nn.Linear(1, 1)

    def step(model, batch):
        return {"loss": batch[0].sum() + 0 * model.weight.sum()}

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = build_schedule("none", opt, total_steps=30, warmup_steps=0)
    finding = find_lr(
        Training(model, step, step, batches, None, opt, sched, FP32), base_lr=0.01, steps=30, progress=False
    )
    # the old rule alone reads a "fall" of more than 5% in it and suggests a rate
    assert _steepest(finding.lrs, finding.losses, skip=3, half=2) is not None
    assert finding.suggestion is None and finding.fall < LR_FIND_MIN_SIGNAL * finding.noise
    assert finding.withheld == "noise"
    assert finding.noise == pytest.approx(levels[:6].std().item() / 5**0.5, rel=1e-5)


def test_the_plateau_schedule_lowers_the_rate_after_patience_stalled_epochs_and_keeps_the_warm_up():
    from deepstep.engine.optim import Plateau

    model = nn.Linear(2, 2)
    opt = build_optimizer("sgd", model, lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0)
    plateau = Plateau(factor=0.5, patience=2)
    sched = build_schedule("plateau", opt, total_steps=100, warmup_steps=4, plateau=plateau)

    def rate():
        return opt.param_groups[0]["lr"]

    for _ in range(4):
        opt.step()
        sched.step()
    assert rate() == 1.0  # the warm-up done: 0, 0.25, 0.5, 0.75, then the full rate
    assert [plateau.after_epoch(improved, opt) for improved in (True, False, True, False)] == [False] * 4
    assert rate() == 1.0  # an improvement resets the count: never 2 stalled epochs in a row
    assert plateau.after_epoch(False, opt) is True and rate() == 0.5  # lowered at once, not a step later
    opt.step()
    sched.step()
    assert rate() == 0.5  # and the schedule keeps it
    assert plateau.after_epoch(False, opt) is False  # the count starts again after lowering
    assert plateau.after_epoch(False, opt) is True and rate() == 0.25
    again = Plateau(factor=0.5, patience=2)
    again.load_state_dict(plateau.state_dict())
    assert again.scale == 0.25 and again.stale == 0


def test_balanced_class_weights_are_n_over_k_counts_and_weigh_each_example_s_loss():
    from deepstep.config import TrainConfig
    from deepstep.tasks.runs import class_weights, weighted_mean

    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 3])  # class 2 has no train example
    weights = class_weights(TrainConfig(class_weights="balanced"), labels, ["a", "b", "c", "d"])
    assert weights.tolist() == pytest.approx([9 / (3 * 6), 9 / (3 * 2), 0.0, 9 / (3 * 1)])
    assert float(weights[torch.from_numpy(labels)].mean()) == pytest.approx(1.0)  # 1 on average over the examples
    assert class_weights(TrainConfig(), labels, ["a", "b", "c", "d"]) is None
    losses, targets = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 1, 3])
    assert float(weighted_mean(losses, targets, weights)) == pytest.approx((0.5 * 1 + 1.5 * 2 + 3 * 4) / 3)
    shares = torch.tensor([[0.75, 0.25, 0, 0], [0, 1.0, 0, 0], [0.5, 0, 0, 0.5]])  # mixed images' labels
    expected = ((0.75 * 0.5 + 0.25 * 1.5) * 1 + 1.5 * 2 + (0.5 * 0.5 + 0.5 * 3) * 4) / 3
    assert float(weighted_mean(losses, shares, weights)) == pytest.approx(expected)


def test_the_classification_loss_of_mixed_labels_is_the_cross_entropy_with_their_shares():
    from deepstep.tasks.image_classification import classification_step

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    shares = torch.tensor([[0.3, 0.7, 0.0], [0.0, 0.6, 0.4]])
    result = classification_step(label_smoothing=0.1)(lambda x: x, (logits, shares))
    smoothed = shares * 0.9 + 0.1 / 3
    assert float(result["loss"]) == pytest.approx(float(-(smoothed * logits.log_softmax(1)).sum(1).mean()))
    assert result["target"].tolist() == [1, 1] and float(result["acc"]) == 0.5  # the larger share is the label


def test_balanced_class_weights_make_a_rare_class_predicted_and_micro_batches_still_add_up():
    from deepstep.config import TrainConfig
    from deepstep.tasks.image_classification import classification_step
    from deepstep.tasks.runs import class_weights

    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.zeros(180, dtype=torch.long), torch.ones(20, dtype=torch.long)])
    x = torch.randn(200, 1, generator=g) + y.unsqueeze(1).float()  # overlapping: 1 standard deviation apart
    batches = [(x[i : i + 50], y[i : i + 50]) for i in range(0, 200, 50)]
    weights = class_weights(TrainConfig(class_weights="balanced"), y.numpy(), ["common", "rare"])

    def fit(weights, micro_batch=0):
        torch.manual_seed(0)
        model = nn.Linear(1, 2)
        opt = build_optimizer("sgd", model, lr=0.5, momentum=0.9, nesterov=False, weight_decay=0.0)
        sched = build_schedule("none", opt, total_steps=400, warmup_steps=0)
        for _ in range(100):
            train_one_epoch(model, classification_step(weights=weights), batches, opt, sched, FP32,
                            FP32.grad_scaler(), micro_batch=micro_batch)  # fmt: skip
        return model

    plain, weighted = fit(None), fit(weights)
    with torch.no_grad():
        called_rare = [int((m(x).argmax(1) == 1).sum()) for m in (plain, weighted)]
    assert called_rare[0] < 10 and called_rare[1] > 30  # unweighted, the rare class is hardly ever called
    parts = fit(weights, micro_batch=20)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(weighted.parameters(), parts.parameters(), strict=True))


def test_a_sequence_classifier_s_loss_weighs_each_sequence_by_its_class():
    from deepstep.tasks.sequence_classification import sequence_step

    class Fixed(nn.Module):  # one logit per sequence, as two-class models give
        def forward(self, x, lengths):
            return torch.tensor([[0.0], [2.0], [-1.0]])

    batch = (torch.zeros(3, 4, 1), torch.tensor([4, 4, 4]), torch.tensor([0, 1, 1]))
    each = F.binary_cross_entropy_with_logits(
        torch.tensor([0.0, 2.0, -1.0]), torch.tensor([0.0, 1.0, 1.0]), reduction="none"
    )
    assert float(sequence_step(Fixed(), batch)["loss"]) == pytest.approx(float(each.mean()))
    weighted = sequence_step(Fixed(), batch, weights=torch.tensor([3.0, 0.5]))["loss"]
    assert float(weighted) == pytest.approx(float((each * torch.tensor([3.0, 0.5, 0.5])).mean()))


def test_the_weight_average_warms_up_then_moves_by_one_minus_decay_and_copies_counts():
    from deepstep.engine.optim import WeightAverage

    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    ema = WeightAverage(model, decay=0.99)
    assert not any(p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update()  # warming up: d = min(0.99, 1 / 10)
    assert torch.allclose(ema.module[0].weight, torch.full((2, 2), 0.9))
    assert int(ema.module[1].num_batches_tracked) == 7  # counts are copied, not averaged
    for _ in range(1000):
        ema.update()
    assert torch.allclose(ema.module[0].weight, torch.ones(2, 2), atol=1e-4)
    ema.updates = 10_000  # long past the warm-up: d = 0.99
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    before = ema.module[0].weight.clone()
    ema.update()
    assert torch.allclose(ema.module[0].weight, before + 0.01 * (2.0 - before))
    assert model[0].weight.requires_grad and float(model[0].weight[0, 0]) == 2.0  # the model is untouched
