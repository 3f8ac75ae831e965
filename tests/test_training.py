"""Models, the seed-batched trainer and checkpoints, on small data made here."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mnist_tl import dataset
from mnist_tl.modeling.models import MLP, build_model, frozen_parameter_names, transfer_model
from mnist_tl.modeling.train import (
    TrainConfig,
    Trained,
    _Stacked,
    dropout_mask,
    fit,
    fit_frozen_features,
    load_checkpoint,
    save_checkpoint,
    seeds_at_once,
    train_new,
)


def blobs(n: int = 600, classes: int = 10, noise: float = 2.0, seed: int = 0):
    """Noisy copies of fixed class prototypes in [0, 1]^784: learnable, not trivially.
    ``seed`` draws the samples; the prototypes are the same for every seed."""
    centers = torch.randn(classes, 784, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.sigmoid(centers[y] + noise * torch.randn(n, 784, generator=g))
    return x, y


def mlp(seed: int, hidden=(32,)) -> MLP:
    return build_model("mlp", 10, hidden=hidden, seed=seed)


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_training_drives_loss_down_and_beats_chance():
    x, y = blobs()
    xv, yv = blobs(300, seed=1)
    models = [mlp(0), build_model("softmax", seed=0)]
    for model in models:
        (history,) = fit([model], x, y, TrainConfig(lr=0.02, epochs=8), [0], x_eval=xv[:150],
                         y_eval=yv[:150], progress=False)
        assert history.train_loss[-1] < 0.5 * history.train_loss[0]
        assert history.eval_accuracy[-1] > 0.5  # chance is 0.1
        assert history.epochs_run == 8 and history.best_epoch == 8


class SameMaskDropout(torch.nn.Module):
    """nn.Dropout drawing its masks as fit does (uniform draws below 1 - p, from a
    generator seeded by the seed), so that the textbook loop sees the same masks."""

    def __init__(self, p: float, seed: int):
        super().__init__()
        self.p, self.generators = p, [torch.Generator().manual_seed(seed)]

    def forward(self, x):
        if not self.training:
            return x
        return x * dropout_mask(1, *x.shape, self.p, self.generators)[0]


def reference_loop(model, x, y, config: TrainConfig, seed: int):
    """The textbook loop (nn.Module, torch.optim, mini-batches), the same shuffling and,
    in place of nn.Dropout, the same dropout masks."""
    for module in list(model.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, torch.nn.Dropout):
                setattr(module, child_name, SameMaskDropout(child.p, seed))
    optimizer = (torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
                 if config.optimizer == "sgd"
                 else torch.optim.Adam(model.parameters(), lr=config.lr))
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(config.epochs):
        order = torch.randperm(len(y), generator=generator)
        total = 0.0
        for start in range(0, len(y), config.batch_size):
            idx = order[start:start + config.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(y))
    return losses


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_seed_batched_training_equals_training_each_seed_alone(optimizer):
    x, y = blobs(300)
    config = TrainConfig(optimizer=optimizer, epochs=3, batch_size=32)
    seeds = [3, 7, 11]
    together = [mlp(s) for s in seeds]
    histories = fit(together, x, y, config, seeds, progress=False)
    for seed, model, history in zip(seeds, together, histories, strict=True):
        alone = mlp(seed)
        (history_alone,) = fit([alone], x, y, config, [seed], progress=False)
        assert history_alone.train_loss == history.train_loss
        assert states_equal(alone, model)
        textbook = mlp(seed)
        losses = reference_loop(textbook, x, y, config, seed)
        assert losses == pytest.approx(history.train_loss, rel=1e-5)
        # Adam divides by the root of tiny second moments, amplifying float rounding.
        atol = 1e-5 if optimizer == "sgd" else 1e-4
        for key, value in textbook.state_dict().items():
            torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-4, atol=atol)


def models_for_backward(kind: str, seed: int):
    if kind == "softmax":
        return build_model("softmax", seed=seed)
    if kind == "dropout":
        return build_model("mlp", hidden=(48, 24), dropout=0.3, seed=seed)
    model = transfer_model(mlp(seed, hidden=(40, 20)), head="keep")  # first two layers frozen
    return model


@pytest.mark.parametrize("kind", ["softmax", "dropout", "frozen"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_written_out_backward_equals_autograd(kind, precision):
    """fit's hand-written gradients against autograd through the same forward pass."""
    x, y = blobs(3 * 40)
    xb, yb = x.view(3, 40, 784), y.view(3, 40)
    seeds = (0, 1, 2)
    net = _Stacked([models_for_backward(kind, s) for s in seeds], torch.device("cpu"),
                   precision, seeds=seeds)
    loss = net.loss_and_gradients(xb, yb)
    ours = [t.grad.clone() for t in net.trainable]
    for t in net.trainable:
        t.grad = None
        t.requires_grad_(True)
    net.generators = [torch.Generator().manual_seed(s) for s in seeds]  # the same masks
    net.per_model = False  # autograd through batched products (products into out= are not)
    logits = net(xb, per_model=True)
    expected = F.cross_entropy(logits.flatten(0, 1), yb.flatten(),
                               reduction="none").view(3, -1).mean(1)
    expected.sum().backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-6, atol=1e-6)
    assert len(ours) == (2 if kind in ("softmax", "frozen") else 6)
    for grad, t in zip(ours, net.trainable, strict=True):
        assert grad.dtype == torch.float32 and grad.shape == t.shape
        # bfloat16 products round to 8 bits, and mm and bmm may round one ulp apart
        rtol = 1e-5 if precision == "fp32" else 2**-7
        torch.testing.assert_close(grad, t.grad, rtol=rtol, atol=1e-7)


def test_momentum_buffers_filled_by_the_weight_gradient_product_are_torchs():
    """SGD's weight-gradient product writes into the momentum buffer: after gradients
    g1 and g2 it holds 0.9 g1 + g2, as torch.optim.SGD's buffer does."""
    x, y = blobs(2 * 40)
    xb, yb = x.view(2, 40, 784), y.view(2, 40)
    fused = _Stacked([mlp(s, hidden=(48,)) for s in (0, 1)], torch.device("cpu"), momentum=0.9)
    plain = _Stacked([mlp(s, hidden=(48,)) for s in (0, 1)], torch.device("cpu"))
    grads = []
    for _ in range(2):
        fused.loss_and_gradients(xb, yb)
        plain.loss_and_gradients(xb, yb)
        grads.append([t.grad.clone() for t in plain.trainable])
    assert len(fused.buffers) == 4
    for buffer, g1, g2 in zip(fused.buffers, *grads, strict=True):
        torch.testing.assert_close(buffer, 0.9 * g1 + g2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_how_many_seeds_train_together_changes_nothing(optimizer):
    x, y = blobs(200)
    config = TrainConfig(optimizer=optimizer, epochs=2, batch_size=32)
    seeds = [0, 1, 2]
    runs = []
    for together in (1, 2, 3):
        models = [build_model("mlp", hidden=(32,), dropout=0.2, seed=s) for s in seeds]
        histories = fit(models, x, y, config, seeds, x_eval=x[:50], y_eval=y[:50],
                        progress=False, together=together)
        runs.append((models, [h.to_dict() for h in histories]))
    for models, histories in runs[1:]:
        assert histories == runs[0][1]
        assert all(states_equal(a, b) for a, b in zip(models, runs[0][0], strict=True))
    assert seeds_at_once(build_model("mlp")) == 1  # 784x500: one seed at a time
    assert seeds_at_once(build_model("softmax")) >= 5


def test_dropout_training_equals_the_textbook_loop():
    x, y = blobs(300)
    config = TrainConfig(optimizer="adam", epochs=2, batch_size=32)
    ours = build_model("mlp", hidden=(32,), dropout=0.5, seed=4)
    textbook = build_model("mlp", hidden=(32,), dropout=0.5, seed=4)
    (history,) = fit([ours], x, y, config, [4], progress=False)
    losses = reference_loop(textbook, x, y, config, 4)
    assert losses == pytest.approx(history.train_loss, rel=1e-5)
    for key, value in textbook.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=1e-4, atol=1e-4)


def test_bf16_is_an_opt_in_close_to_fp32():
    x, y = blobs(600)
    xv, yv = blobs(300, seed=1)
    runs = {}
    for precision in ("fp32", "bf16"):
        model = mlp(0)
        (history,) = fit([model], x, y, TrainConfig(lr=0.02, epochs=6, precision=precision),
                         [0], x_eval=xv, y_eval=yv, progress=False)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        runs[precision] = history
    assert TrainConfig().precision == "fp32"
    assert runs["bf16"].train_loss != runs["fp32"].train_loss  # it does round the products
    assert runs["bf16"].train_loss == pytest.approx(runs["fp32"].train_loss, rel=0.05)
    assert runs["bf16"].eval_accuracy[-1] == pytest.approx(runs["fp32"].eval_accuracy[-1],
                                                           abs=0.03)


def test_same_seed_same_history_different_seed_different():
    x, y = blobs(200)
    config = TrainConfig(epochs=2)
    a = fit([mlp(0)], x, y, config, [0], x_eval=x, y_eval=y, progress=False)[0]
    b = fit([mlp(0)], x, y, config, [0], x_eval=x, y_eval=y, progress=False)[0]
    c = fit([mlp(1)], x, y, config, [1], x_eval=x, y_eval=y, progress=False)[0]
    assert a.to_dict() | {"seed": 0} == b.to_dict() | {"seed": 0}
    assert a.train_loss != c.train_loss


def test_early_stopping_stops_and_restores_the_best_epoch():
    # Few noisy training images and a large learning rate: validation loss
    # reaches a minimum and then rises as the network memorises.
    x, y = blobs(120, noise=4.0)
    xv, yv = blobs(300, noise=4.0, seed=1)
    config = TrainConfig(optimizer="adam", lr=0.01, epochs=60, early_stopping=True, patience=3)
    models = [mlp(0, hidden=(256,)), mlp(1, hidden=(256,))]
    histories = fit(models, x, y, config, [0, 1], x_eval=xv, y_eval=yv, progress=False)
    for model, history in zip(models, histories, strict=True):
        assert history.epochs_run < config.epochs, "validation loss never rose"
        best = min(range(history.epochs_run), key=history.eval_loss.__getitem__) + 1
        assert history.best_epoch == best
        assert history.epochs_run == best + config.patience
        with torch.no_grad():
            restored = F.cross_entropy(model(xv), yv).item()
        assert restored == pytest.approx(history.eval_loss[best - 1], rel=1e-5)


def test_early_stopping_needs_a_validation_set():
    x, y = blobs(50)
    with pytest.raises(ValueError, match="validation set"):
        fit([mlp(0)], x, y, TrainConfig(early_stopping=True), [0], progress=False)


@pytest.mark.parametrize("cached", [False, True])
def test_fine_tuning_changes_the_head_and_not_the_frozen_features(cached):
    x, y = blobs(200)
    source = mlp(0)
    fit([source], x, y, TrainConfig(epochs=1), [0], progress=False)
    model = transfer_model(source, head="keep")
    assert frozen_parameter_names(model) == ["features.0.weight", "features.0.bias"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = fit_frozen_features if cached else fit
    train([model], x, (y + 1) % 10, TrainConfig(optimizer="adam", epochs=2), [0],
          progress=False)
    after = model.state_dict()
    assert torch.equal(after["features.0.weight"], before["features.0.weight"])
    assert torch.equal(after["features.0.bias"], before["features.0.bias"])
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert states_equal(source, source)  # the source model is untouched by the copy
    assert not torch.equal(source.head.weight, model.head.weight)


def test_cached_features_give_the_same_training_as_the_full_model():
    x, y = blobs(300)
    source = mlp(0)
    config = TrainConfig(optimizer="adam", epochs=3)
    full, cached = transfer_model(source, "fresh", seed=5), transfer_model(source, "fresh", seed=5)
    h_full = fit([full], x, y, config, [5], x_eval=x[:100], y_eval=y[:100], progress=False)
    h_cached = fit_frozen_features([cached], x, y, config, [5], x_eval=x[:100],
                                   y_eval=y[:100], progress=False)
    assert h_cached[0].train_loss == pytest.approx(h_full[0].train_loss, rel=1e-5)
    torch.testing.assert_close(cached.head.weight, full.head.weight, rtol=1e-4, atol=1e-6)


def test_cached_features_of_several_sources_train_each_head_as_alone():
    """Each model's head trains on its own source's features, as if trained alone."""
    x, y = blobs(300)
    config = TrainConfig(optimizer="sgd", epochs=2, batch_size=32)
    seeds = [5, 6, 7]
    together = [transfer_model(mlp(s), "fresh", seed=s) for s in seeds]
    histories = fit_frozen_features(together, x, y, config, seeds, progress=False)
    for seed, model, history in zip(seeds, together, histories, strict=True):
        alone = transfer_model(mlp(seed), "fresh", seed=seed)
        (history_alone,) = fit_frozen_features([alone], x, y, config, [seed], progress=False)
        assert history_alone.train_loss == history.train_loss
        assert states_equal(alone, model)


@pytest.mark.parametrize("cached", [False, True])
def test_uint8_pixels_train_exactly_as_the_flattened_floats(cached):
    """Pixels kept as uint8 and scaled per batch give the same weights and histories,
    bit for bit, as the whole set scaled up front by dataset.flatten."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (300, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (300,), generator=g)
    config = TrainConfig(optimizer="adam", epochs=2, batch_size=32)
    runs = []
    for x in (pixels.reshape(300, -1), dataset.flatten(pixels)):
        source = mlp(0)
        if cached:
            model = transfer_model(source, "fresh", seed=1)
            histories = fit_frozen_features([model], x[:200], y[:200], config, [1],
                                            x_eval=x[200:], y_eval=y[200:], progress=False)
        else:
            model = source
            histories = fit([model], x[:200], y[:200], config, [1], x_eval=x[200:],
                            y_eval=y[200:], progress=False)
        runs.append((model, [h.to_dict() for h in histories]))
    (as_uint8, h_uint8), (as_float, h_float) = runs
    assert h_uint8 == h_float
    assert states_equal(as_uint8, as_float)


def test_train_new_builds_trains_and_times():
    x, y = blobs(100)
    trained = train_new("mlp", [3, 4], x, y, TrainConfig(epochs=1),
                        model_kwargs=dict(hidden=(16,)), progress=False)
    assert isinstance(trained, Trained) and len(trained.models) == len(trained.histories) == 2
    assert trained.models[0].features[0].out_features == 16
    assert [h.seed for h in trained.histories] == [3, 4]
    assert trained.seconds > 0 and trained.torch_threads == torch.get_num_threads()
    alone = mlp(3, hidden=(16,))
    fit([alone], x, y, TrainConfig(epochs=1), [3], progress=False)
    assert states_equal(alone, trained.models[0])


def test_the_worker_side_imports_no_scikit_learn_scipy_or_pandas():
    # Each worker process holds what it imports; these three are ~80 MB it does not need.
    code = ("import sys, mnist_tl.modeling.train; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', "
            "'pandas'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_kept_and_fresh_heads_behave_as_named():
    source = mlp(0)
    kept = transfer_model(source, head="keep")
    fresh_a = transfer_model(source, head="fresh", seed=1)
    fresh_b = transfer_model(source, head="fresh", seed=1)
    fresh_c = transfer_model(source, head="fresh", seed=2)
    assert torch.equal(kept.head.weight, source.head.weight)
    assert not torch.equal(fresh_a.head.weight, source.head.weight)
    assert torch.equal(fresh_a.head.weight, fresh_b.head.weight)  # seeded
    assert not torch.equal(fresh_a.head.weight, fresh_c.head.weight)
    for model in (kept, fresh_a):
        assert torch.equal(model.features[0].weight, source.features[0].weight)
        assert model.head.weight.requires_grad and not model.features[0].weight.requires_grad
    with pytest.raises(ValueError, match="Unknown head mode"):
        transfer_model(source, head="new")


def test_default_initialisation_is_pytorchs():
    torch.manual_seed(4)
    expected = torch.nn.Linear(784, 500)
    model = build_model("mlp", seed=4)
    assert torch.equal(model.features[0].weight, expected.weight)


@pytest.mark.parametrize("kwargs, message", [
    ({"optimizer": "rmsprop"}, "Unknown optimizer 'rmsprop'"),
    ({"lr": 0}, "lr must be a positive number"),
    ({"lr": -1e-3}, "lr must be a positive number"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"patience": 1.5}, "patience must be a positive integer"),
    ({"momentum": 1.0}, "momentum must be in"),
    ({"precision": "fp16"}, r"Unknown precision 'fp16'.*bf16"),
])
def test_bad_training_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_unknown_model_fails_with_the_choices():
    with pytest.raises(ValueError, match=r"Unknown model 'cnn'.*softmax"):
        build_model("cnn")


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    model = mlp(0)
    path = save_checkpoint(model, tmp_path / "m.pt", seed=0, history={"train_loss": [1.0]})
    loaded = mlp(1)
    checkpoint = load_checkpoint(path, loaded)
    assert states_equal(model, loaded)
    assert checkpoint["meta"] == {"seed": 0, "history": {"train_loss": [1.0]}}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    torch.save({"evil": object()}, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_checkpoint(tmp_path / "bad.pt")


def test_matmul_throughput_is_the_best_timing_of_every_product(monkeypatch):
    from mnist_tl import throughput

    # three timings of 2, 1 and 4 seconds: the best (1 s) counts, for 5 products of 64 x 64
    clock = iter([0.0, 2.0, 10.0, 11.0, 20.0, 24.0])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    assert throughput.matmul_gflops(size=64, products=5, repeat=3) == \
        pytest.approx(2 * 64**3 * 5 / 1.0 / 1e9)
    monkeypatch.undo()
    assert 0 < throughput.matmul_gflops(size=64, products=1, repeat=1) < float("inf")
