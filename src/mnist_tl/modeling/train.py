"""Training: several seeds at once, each exactly as if trained alone.

:func:`fit` takes one initialised model per seed and trains them as stacked
tensors: every seed keeps its own initialisation, its own shuffling and dropout
masks (generators seeded by the seed) and its own optimizer state, and the
seeds' losses are summed, so each seed's gradient is its own. A seed's numbers
do not depend on which seeds train beside it (the tests check it), so how many
train together is a matter of speed alone (:func:`seeds_at_once`).

Where the time goes, measured on 2 CPU cores (``benchmarks/bench_training.py``):

- a large layer (the network's 784 x 500) is one matrix product per model
  (``torch.mm`` runs a batch-64 product at 90-95 % of the machine's matrix
  throughput; ``torch.bmm`` over the stacked seeds at 65-75 %); small layers
  are one batched product for all seeds;
- the weights and optimizer state of the seeds that train together should stay
  in the CPU's caches: models with large layers train one seed at a time, small
  ones (softmax regression) all seeds together, where per-step overheads dominate;
- SGD with momentum writes the weight gradient's product straight into the
  momentum buffer (``buf = momentum * buf + g h^T``, one GEMM with ``beta``)
  and then updates the weights as ``torch.optim.SGD`` does: one pass over the
  largest tensors fewer than the textbook ``backward(); optimizer.step()``.
  The buffer's rounding differs from torch's in the last bits: equal to the
  textbook loop within float tolerance (the tests check it), not bit for bit.
- Adam is ``torch.optim.Adam(fused=True)`` (a third of the foreach version's
  time), given each seed's tensors separately so that its vector loops round
  a seed's numbers the same whatever stands beside it;
- dropout masks are drawn as uniform numbers below ``1 - p``, a third of the
  time of ``bernoulli_`` (not nn.Dropout's draws; the tests' textbook loop
  draws its masks the same way).

The models are chains of Linear, ReLU and Dropout layers, so the backward
pass is written out (three products per layer, a mask per ReLU and dropout)
instead of recorded by autograd: the same gradients (the tests compare them),
no graph, and products whose precision we choose: ``precision="bf16"`` (opt-in)
runs them in bfloat16 with float32 weights, optimizer and loss.

Early stopping is per seed: a seed stops ``patience`` epochs after its best
validation loss, its history ends there, and its best weights are restored.

Inputs may stay uint8 pixels: each batch is scaled to [0, 1] as it is drawn
(:func:`as_inputs`, the same float32 division as :func:`mnist_tl.dataset.flatten`),
so a data set is resident at a quarter of the float32 memory.

This module imports torch and nothing heavier (no scikit-learn, scipy or
pandas): :func:`train_in_worker` runs in worker processes that import only it.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mnist_tl.io import atomic_path

OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("fp32", "bf16")
# Seeds train together while their weights and optimizer state fit in this many bytes.
CACHE_BYTES = 2 << 20
# MKL rounds a product with an output dimension below this differently with one thread and
# with several (measured); such products, tiny anyway, run on one thread.
NARROW = 16


@dataclass(frozen=True)
class TrainConfig:
    """How to train; validated on construction, before any computation."""

    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    batch_size: int = 64
    epochs: int = 100
    early_stopping: bool = False
    patience: int = 10
    precision: str = "fp32"  # "bf16": matrix products in bfloat16 (opt-in, faster on CPUs with it)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {self.precision!r}; choose one of {PRECISIONS}.")
        if not (isinstance(self.lr, int | float) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}.")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}.")
        for name in ("batch_size", "epochs", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")


@dataclass
class History:
    """Per-epoch record of one seed."""

    seed: int
    eval_split: str | None  # the set watched each epoch: "val", "test" or None
    train_loss: list[float] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    best_epoch: int | None = None  # 1-based; the weights kept under early stopping

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)

    def to_dict(self) -> dict:
        return asdict(self) | {"epochs_run": self.epochs_run}


def as_inputs(x: torch.Tensor) -> torch.Tensor:
    """Model inputs: uint8 pixels as float32 in [0, 1] (exactly as ``dataset.flatten``
    computes them); float inputs unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def linear_chain(module: nn.Module) -> list[nn.Module]:
    """``module`` as the sequence of layers its forward pass applies.

    Supported: the models of :mod:`mnist_tl.modeling.models` and any nesting of
    ``nn.Sequential`` over Linear, ReLU, Dropout and Identity layers.
    """
    from mnist_tl.modeling.models import MLP, SoftmaxRegression

    if isinstance(module, nn.Linear | nn.ReLU | nn.Dropout | nn.Identity):
        return [module]
    if isinstance(module, nn.Sequential):
        return [layer for child in module for layer in linear_chain(child)]
    if isinstance(module, SoftmaxRegression | MLP):
        return linear_chain(module.features) + linear_chain(module.head)
    raise TypeError(f"fit cannot train {type(module).__name__} layers; supported: Linear, "
                    "ReLU, Dropout, Identity, nn.Sequential of them, SoftmaxRegression, MLP")


def seeds_at_once(model: nn.Module, optimizer: str = "sgd") -> int:
    """How many seeds of ``model`` train together: as many as keep their trainable
    weights and optimizer state (momentum; Adam's two moments and the gradient)
    within :data:`CACHE_BYTES`, at least one."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    copies = 2 if optimizer == "sgd" else 4
    return max(1, CACHE_BYTES // max(1, trainable * 4 * copies))


@dataclass
class _Layer:
    kind: str  # "linear", "relu" or "dropout"
    weight: torch.Tensor | None = None  # (S, out, in), as nn.Linear stores it
    bias: torch.Tensor | None = None  # (S, out, 1)
    trainable: bool = False
    p: float = 0.0  # dropout probability
    # Where the backward pass writes the weight's and the bias's gradient: SGD's momentum
    # buffers (accumulated), or the gradients Adam reads (overwritten).
    sinks: tuple[torch.Tensor, torch.Tensor] | None = None


class _Stacked:
    """S models of one linear-chain architecture as stacked tensors.

    Each Linear layer becomes a weight ``(S, out, in)`` and a bias ``(S, out, 1)``.
    Activations are feature-major, ``(S, features, batch)``: a layer is
    ``W @ h + b``, and its weight gradient ``g @ h^T``. For a narrow layer (10
    outputs) MKL runs these products 3-4 times faster than the batch-major
    ``h @ W^T`` (measured); for wide ones the two are equal. The tensors carry no
    autograd graph: :meth:`loss_and_gradients` writes each trainable tensor's
    gradient into its ``.grad`` or, with ``momentum`` (SGD), accumulates it into
    its momentum buffer (``buf = momentum * buf + gradient``).
    """

    def __init__(self, models: Sequence[nn.Module], device: torch.device,
                 precision: str = "fp32", *, seeds: Sequence[int] | None = None,
                 momentum: float | None = None):
        self.models = list(models)
        self.chains = [linear_chain(m) for m in self.models]
        shapes = {
            tuple((type(layer).__name__, tuple(getattr(layer, "weight", torch.empty(0)).shape),
                   tuple(p.requires_grad for p in layer.parameters())) for layer in chain)
            for chain in self.chains
        }
        if len(shapes) != 1:
            raise ValueError("all models must have the same architecture and frozen layers")
        self.layers: list[_Layer] = []
        for position, layer in enumerate(self.chains[0]):
            if isinstance(layer, nn.Linear):
                weight = torch.stack([c[position].weight.detach() for c in self.chains])
                bias = torch.stack([c[position].bias.detach() for c in self.chains])[..., None]
                self.layers.append(_Layer("linear", weight.contiguous().to(device),
                                          bias.contiguous().to(device),
                                          trainable=layer.weight.requires_grad))
            elif isinstance(layer, nn.ReLU):
                self.layers.append(_Layer("relu"))
            elif isinstance(layer, nn.Dropout):
                self.layers.append(_Layer("dropout", p=layer.p))
        trainable = [layer for layer in self.layers if layer.trainable]
        if not trainable:
            raise ValueError("nothing to train: every parameter of the model is frozen")
        self.trainable = [t for layer in trainable for t in (layer.weight, layer.bias)]
        self.momentum = momentum
        for layer in trainable:
            layer.sinks = (torch.zeros_like(layer.weight), torch.zeros_like(layer.bias))
            if momentum is None:
                layer.weight.grad, layer.bias.grad = layer.sinks
        # The input gradient of a layer is needed only if a trainable layer comes before it.
        first = next(i for i, layer in enumerate(self.layers) if layer.trainable)
        self.needs_input_grad = [i > first for i in range(len(self.layers))]
        self.low = torch.bfloat16 if precision == "bf16" else None
        # On the CPU, one product per model: faster than torch.bmm for the large layers,
        # and a model's numbers then cannot depend on how many train beside it (bmm's
        # rounding does, for some shapes). On a GPU, batched products.
        self.per_model = device.type == "cpu"
        self.threads = torch.get_num_threads()
        # Dropout masks: one generator per model, seeded by its seed, on the CPU (as the
        # global generator that nn.Dropout draws from in the textbook loop).
        seeds = range(len(self.models)) if seeds is None else seeds
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.training = True

    @property
    def buffers(self) -> list[torch.Tensor]:
        """The gradient sinks (momentum buffers for SGD), in the order of :attr:`trainable`."""
        return [b for layer in self.layers if layer.trainable for b in layer.sinks]

    @contextmanager
    def _threads_for(self, rows: int, columns: int):
        """One thread for a narrow product on the CPU (see :data:`NARROW`), so that its
        rounding is the same in a single-threaded worker process and here."""
        narrow = self.per_model and self.threads > 1 and min(rows, columns) < NARROW
        if narrow:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if narrow:
                torch.set_num_threads(self.threads)

    def _product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a @ b`` for each model: ``(S, m, k) @ (S, k, n)``, in float32."""
        if self.low is not None:
            a, b = a.to(self.low), b.to(self.low)
        if not self.per_model:
            return torch.bmm(a, b).float()
        out = a.new_empty(a.shape[0], a.shape[1], b.shape[2])
        with self._threads_for(a.shape[1], b.shape[2]):
            for i in range(a.shape[0]):
                torch.mm(a[i], b[i], out=out[i])
        return out.float()

    def _linear(self, layer: _Layer, h: torch.Tensor) -> torch.Tensor:
        """``W @ h + b`` for each model."""
        if self.low is not None:
            return self._product(layer.weight, h).add_(layer.bias)
        if not self.per_model:
            return torch.baddbmm(layer.bias, layer.weight, h)
        out = h.new_empty(h.shape[0], layer.weight.shape[1], h.shape[2])
        with self._threads_for(out.shape[1], out.shape[2]):
            for i in range(h.shape[0]):
                torch.addmm(layer.bias[i], layer.weight[i], h[i], out=out[i])
        return out

    def _weight_gradient(self, layer: _Layer, keep: torch.Tensor, grad: torch.Tensor) -> None:
        """``grad @ keep^T`` into the weight's sink, the bias's likewise: overwritten, or
        with momentum accumulated (``buf = momentum * buf + grad @ keep^T``)."""
        weight_buf, bias_buf = layer.sinks
        beta = self.momentum or 0.0
        if self.momentum is None:
            torch.sum(grad, 2, keepdim=True, out=bias_buf)
        else:
            bias_buf.mul_(beta).add_(grad.sum(2, keepdim=True))  # as torch.optim.SGD does
        if self.low is not None:
            weight_buf.mul_(beta).add_(self._product(grad, keep.transpose(1, 2)))
        elif self.per_model:
            with self._threads_for(*weight_buf.shape[1:]):
                for i in range(grad.shape[0]):
                    torch.addmm(weight_buf[i], grad[i], keep[i].t(), beta=beta,
                                out=weight_buf[i])
        else:
            torch.baddbmm(weight_buf, grad, keep.transpose(1, 2), beta=beta, out=weight_buf)

    def _forward(self, x: torch.Tensor, per_model: bool, saved: list | None) -> torch.Tensor:
        """Logits ``(S, C, B)`` (feature-major); ``saved`` gets what backward needs."""
        h = (x if per_model else x.expand(len(self.models), *x.shape)).transpose(1, 2)
        for layer in self.layers:
            keep = None
            if layer.kind == "linear":
                # bf16 keeps the input in bfloat16: the weight gradient's product reuses it
                keep = h if self.low is None else h.to(self.low)
                h = self._linear(layer, keep)
            elif layer.kind == "relu":
                h = keep = torch.relu(h)
            elif layer.p and self.training:
                keep = dropout_mask(h.shape[0], h.shape[2], h.shape[1], layer.p,
                                    self.generators).transpose(1, 2)
                h = h * keep
            if saved is not None:
                saved.append(keep)
        return h

    def forward(self, x: torch.Tensor, per_model: bool) -> torch.Tensor:
        """Logits ``(S, B, C)`` for inputs ``(S, B, D)`` or, shared, ``(B, D)``."""
        return self._forward(x, per_model, None).transpose(1, 2)

    __call__ = forward

    def loss_and_gradients(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each model's mean cross-entropy on its batch ``(S, B, D)``, ``(S, B)``; writes
        every trainable tensor's gradient of that loss (see the class docstring)."""
        saved: list = []
        log_probs = torch.log_softmax(self._forward(x, True, saved), dim=1)
        target = y[:, None, :]
        picked = log_probs.gather(1, target)
        loss = -picked.squeeze(1).mean(1)
        # d(mean CE)/d logits = (softmax - one_hot) / B
        grad = log_probs.exp_().scatter_add_(1, target, torch.full_like(picked, -1.0))
        grad.div_(y.shape[1])
        for i in reversed(range(len(self.layers))):
            layer, keep = self.layers[i], saved[i]
            if layer.kind == "linear":
                if layer.trainable:
                    self._weight_gradient(layer, keep, grad)
                if not self.needs_input_grad[i]:
                    break
                grad = self._product(layer.weight.transpose(1, 2), grad)
            elif layer.kind == "relu":
                grad = torch.ops.aten.threshold_backward(grad, keep, 0.0)  # autograd's own
            elif keep is not None:
                grad = grad.mul_(keep)
        return loss

    def write_back(self) -> None:
        """Copy the stacked weights into the original models."""
        linear = [layer for layer in self.layers if layer.kind == "linear"]
        for i, chain in enumerate(self.chains):
            modules = [module for module in chain if isinstance(module, nn.Linear)]
            with torch.no_grad():
                for module, layer in zip(modules, linear, strict=True):
                    module.weight.copy_(layer.weight[i])
                    module.bias.copy_(layer.bias[i, :, 0])


def dropout_mask(models: int, rows: int, columns: int, p: float,
                 generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Inverted-dropout masks ``(models, rows, columns)``: 1 / (1 - p) where a uniform
    draw from the model's own generator is below 1 - p, else 0."""
    mask = torch.empty(models, rows, columns)
    for one, generator in zip(mask, generators, strict=True):
        one.uniform_(generator=generator)
    return mask.lt_(1 - p).div_(1 - p)


class _Optimizer:
    """One step for the stacked tensors: SGD from the momentum buffers the backward pass
    filled (``param -= lr * buf``, as torch.optim.SGD), or torch's fused Adam on each
    seed's tensors (views of the stacked ones), their gradients the sinks' views."""

    def __init__(self, config: TrainConfig, net: _Stacked):
        self.net, self.lr = net, config.lr
        self.adam = None
        if config.optimizer == "adam":
            views = [(t[i], g[i]) for t, g in zip(net.trainable, net.buffers, strict=True)
                     for i in range(len(net.models))]
            for view, grad in views:
                view.grad = grad
            fused = net.trainable[0].device.type in ("cpu", "cuda")
            self.adam = torch.optim.Adam([v for v, _ in views], lr=config.lr, fused=fused)

    def step(self) -> None:
        if self.adam is not None:
            self.adam.step()
        else:
            torch._foreach_add_(self.net.trainable, self.net.buffers, alpha=-self.lr)


def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx.flatten()]``: the same copy, by index_select, several times faster than
    advanced indexing for a batch's rows."""
    return x.index_select(0, idx.flatten())


@torch.no_grad()
def _evaluate(net: _Stacked, x: torch.Tensor, y: torch.Tensor, per_model: bool,
              chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy of every stacked model on (x, y)."""
    net.training = False
    n = len(y)
    loss = torch.zeros(len(net.models), device=y.device)
    correct = torch.zeros(len(net.models), device=y.device)
    for start in range(0, n, chunk):
        xb = as_inputs(x[:, start:start + chunk] if per_model else x[start:start + chunk])
        yb = y[start:start + chunk]
        logits = net(xb, per_model)
        loss += F.cross_entropy(logits.flatten(0, 1), yb.repeat(len(net.models)),
                                reduction="none").view(len(net.models), -1).sum(1)
        correct += (logits.argmax(-1) == yb).sum(1)
    return loss / n, correct / n


@torch.no_grad()
def fit(
    models: Sequence[nn.Module],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    config: TrainConfig,
    seeds: Sequence[int],
    *,
    x_eval: torch.Tensor | None = None,
    y_eval: torch.Tensor | None = None,
    eval_split: str = "val",
    per_model_inputs: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    desc: str = "train",
    together: int | None = None,
) -> list[History]:
    """Train ``models[i]`` with seed ``seeds[i]``, in place; return one history per seed.

    Inputs are tensors ``(N, D)`` shared by all models (float, or uint8 pixels
    scaled per batch by :func:`as_inputs`), or float ``(S, N, D)`` one per model
    with ``per_model_inputs=True`` (features cached per model).
    ``x_eval`` is watched each epoch (train loss, eval loss and accuracy); with
    ``config.early_stopping`` it is the validation set that decides stopping.
    ``together`` seeds train at a time (default :func:`seeds_at_once`); the results
    are the same whatever it is.
    """
    if len(models) != len(seeds) or not models:
        raise ValueError(f"need one seed per model, got {len(models)} models, {len(seeds)} seeds")
    if config.early_stopping and x_eval is None:
        raise ValueError("early stopping needs a validation set (x_eval, y_eval)")
    if y_train.shape[0] == 0:
        raise ValueError("the training set is empty")
    together = together or seeds_at_once(models[0], config.optimizer)
    device = resolve_device(device)
    x_train, y_train = x_train.to(device), y_train.to(device)
    if x_eval is not None:
        x_eval, y_eval = x_eval.to(device), y_eval.to(device)
    histories: list[History] = []
    with tqdm(total=len(models) * config.epochs, desc=desc, disable=not progress,
              leave=False, unit="epoch") as bar:
        for start in range(0, len(models), together):
            group = slice(start, start + together)
            histories += _fit_group(
                models[group], x_train[group] if per_model_inputs else x_train, y_train,
                config, seeds[group], device, bar,
                x_eval=(x_eval[group] if per_model_inputs and x_eval is not None else x_eval),
                y_eval=y_eval, eval_split=eval_split, per_model_inputs=per_model_inputs)
    return histories


def _fit_group(models, x_train, y_train, config: TrainConfig, seeds, device, bar, *,
               x_eval, y_eval, eval_split, per_model_inputs) -> list[History]:
    n = y_train.shape[0]
    num_models = len(models)
    net = _Stacked(models, device, config.precision, seeds=seeds,
                   momentum=config.momentum if config.optimizer == "sgd" else None)
    optimizer = _Optimizer(config, net)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    # The batches are gathered as rows of one matrix: per-model inputs (S, N, D) as the
    # rows of (S * N, D), model i's from row i * N on.
    x_source = x_train.flatten(0, 1) if per_model_inputs else x_train
    offsets = torch.arange(num_models, device=device)[:, None] * n if per_model_inputs else None

    histories = [History(int(s), eval_split if x_eval is not None else None) for s in seeds]
    active = torch.ones(num_models, dtype=torch.bool)
    best_loss = torch.full((num_models,), math.inf)
    best_epoch = torch.zeros(num_models, dtype=torch.long)
    best = [t.clone() for t in net.trainable] if config.early_stopping else []

    start_count = bar.n
    for epoch in range(1, config.epochs + 1):
        net.training = True
        order = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)
        total = torch.zeros(num_models, device=device)
        for start in range(0, n, config.batch_size):
            idx = order[:, start:start + config.batch_size]
            rows = idx if offsets is None else idx + offsets
            xb = as_inputs(_rows(x_source, rows).view(*idx.shape, -1))
            loss = net.loss_and_gradients(xb, _rows(y_train, idx).view(idx.shape))
            optimizer.step()
            total += loss * idx.shape[1]
        train_loss = (total / n).cpu()
        if x_eval is not None:
            eval_loss, eval_acc = (t.cpu() for t in _evaluate(net, x_eval, y_eval,
                                                              per_model_inputs))
        for i in active.nonzero().flatten().tolist():
            histories[i].train_loss.append(train_loss[i].item())
            if x_eval is not None:
                histories[i].eval_loss.append(eval_loss[i].item())
                histories[i].eval_accuracy.append(eval_acc[i].item())
        postfix = {"train_loss": f"{train_loss[active].mean():.4f}"}
        if x_eval is not None:
            postfix[f"{eval_split}_loss"] = f"{eval_loss[active].mean():.4f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(num_models)

        if config.early_stopping:
            improved = active & (eval_loss < best_loss)
            if improved.any():
                mask = improved.to(device)
                for kept, current in zip(best, net.trainable, strict=True):
                    kept[mask] = current[mask]
                best_loss[improved] = eval_loss[improved]
                best_epoch[improved] = epoch
            active &= (epoch - best_epoch) < config.patience
            if not active.any():
                break
    bar.update(start_count + num_models * config.epochs - bar.n)  # epochs early stopping saved

    if config.early_stopping:
        for kept, current in zip(best, net.trainable, strict=True):
            current.copy_(kept)
    for i, history in enumerate(histories):
        history.best_epoch = int(best_epoch[i]) if config.early_stopping else history.epochs_run
    net.write_back()
    return histories


@torch.no_grad()
def features_of(models: Sequence[nn.Module], x: torch.Tensor, device: str | torch.device = "auto",
                chunk: int = 8192) -> torch.Tensor:
    """Each model's ``features(x)``, stacked ``(S, N, D)``: a frozen extractor, run once."""
    device = resolve_device(device)
    out = []
    for model in models:
        model = model.to(device).eval()
        out.append(torch.cat([model.features(as_inputs(x[i:i + chunk].to(device)))
                              for i in range(0, len(x), chunk)]))
        model.to("cpu")
    return torch.stack(out)


def fit_frozen_features(
    models: Sequence[nn.Module],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    config: TrainConfig,
    seeds: Sequence[int],
    *,
    x_eval: torch.Tensor | None = None,
    y_eval: torch.Tensor | None = None,
    eval_split: str = "val",
    device: str | torch.device = "auto",
    progress: bool = True,
    desc: str = "train head",
) -> list[History]:
    """:func:`fit` for models whose ``features`` are frozen: the same mathematics,
    with the features computed once instead of at every step. Only heads train.
    """
    for model in models:
        if any(p.requires_grad for p in model.features.parameters()):
            raise ValueError("fit_frozen_features needs models whose features are frozen")
        if any(isinstance(m, nn.Dropout | nn.BatchNorm1d) for m in model.features.modules()):
            raise ValueError("features with dropout or batch norm change at each step; use fit")
    train_features = features_of(models, x_train, device)
    eval_features = features_of(models, x_eval, device) if x_eval is not None else None
    return fit(
        [m.head for m in models], train_features, y_train, config, seeds,
        x_eval=eval_features, y_eval=y_eval, eval_split=eval_split, per_model_inputs=True,
        device=device, progress=progress, desc=desc,
    )


# ------------------------------------------------------------ whole networks, autograd


@torch.no_grad()
def evaluate_network(network: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     batch_size: int = 500, device: str | torch.device = "cpu"
                     ) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy and the predicted classes of ``network`` in evaluation mode."""
    network.eval()
    loss, predictions = 0.0, []
    for start in range(0, len(y), batch_size):
        logits = network(x[start:start + batch_size].to(device))
        loss += F.cross_entropy(logits, y[start:start + batch_size].to(device),
                                reduction="sum").item()
        predictions.append(logits.argmax(1).cpu())
    return loss / max(len(y), 1), torch.cat(predictions)


def fit_network(network: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                config: TrainConfig, seed: int, *, x_val: torch.Tensor, y_val: torch.Tensor,
                device: str | torch.device = "auto", progress: bool = True,
                desc: str = "train") -> History:
    """Train any network (convolutional ones included) with autograd and ``config``'s
    optimizer, mini-batches shuffled by a generator seeded by ``seed`` (dropout by the
    global one, seeded likewise); with ``config.early_stopping``, stop ``patience``
    epochs after the best validation loss and restore its weights. Inputs stay as they
    are in memory (uint8 images, cached activations); the network converts a batch."""
    device = resolve_device(device)
    network.to(device)
    torch.manual_seed(seed)
    parameters = [p for p in network.parameters() if p.requires_grad]
    optimizer = (torch.optim.Adam(parameters, lr=config.lr, fused=device.type == "cpu")
                 if config.optimizer == "adam" else
                 torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum))
    generator = torch.Generator().manual_seed(seed)
    history = History(seed, "val")
    best_loss, best_state, n = math.inf, None, len(y_train)
    steps = math.ceil(n / config.batch_size)
    bar = tqdm(total=config.epochs * steps, desc=desc, disable=not progress, leave=False,
               unit="batch")
    with torch.enable_grad():
        for epoch in range(1, config.epochs + 1):
            network.train()
            total = 0.0
            for idx in torch.randperm(n, generator=generator).split(config.batch_size):
                loss = F.cross_entropy(network(x_train[idx].to(device)), y_train[idx].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                bar.update()
            val_loss, predictions = evaluate_network(network, x_val, y_val, device=device)
            history.train_loss.append(total / n)
            history.eval_loss.append(val_loss)
            history.eval_accuracy.append((predictions == y_val).float().mean().item())
            bar.set_postfix(train_loss=f"{total / n:.4f}", val_loss=f"{val_loss:.4f}")
            if val_loss < best_loss:
                best_loss, history.best_epoch = val_loss, epoch
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            elif config.early_stopping and epoch - history.best_epoch >= config.patience:
                break
    bar.close()
    if config.early_stopping:
        network.load_state_dict(best_state)
    else:
        history.best_epoch = history.epochs_run
    network.cpu()
    return history


# ---------------------------------------------------------- new models, in any process


@dataclass
class Trained:
    """What :func:`train_new` returns: the models, their histories and how long it took."""

    models: list[nn.Module]  # on the CPU
    histories: list[History]
    seconds: float  # wall time of fit
    torch_threads: int  # of the process that trained them


def train_new(model: str, seeds: Sequence[int], x_train: torch.Tensor, y_train: torch.Tensor,
              config: TrainConfig, *, model_kwargs: dict | None = None,
              **fit_kwargs) -> Trained:
    """New ``model`` networks, one per seed (``build_model(model, seed=s, **model_kwargs)``),
    trained together by :func:`fit`."""
    from mnist_tl.modeling.models import build_model

    models = [build_model(model, seed=s, **(model_kwargs or {})) for s in seeds]
    start = time.perf_counter()
    histories = fit(models, x_train, y_train, config, seeds, **fit_kwargs)
    seconds = time.perf_counter() - start
    return Trained([m.cpu() for m in models], histories, seconds, torch.get_num_threads())


def train_in_worker(calls: Sequence[dict], threads: int, connection) -> None:
    """A worker process's work: ``train_new(**call)`` for each call, in turn, with
    ``threads`` torch threads; the list of :class:`Trained` (or the error, as text)
    goes back through ``connection``."""
    torch.set_num_threads(threads)
    try:
        # The first optimizer imports torch._dynamo (seconds): here, not in the first fit's time.
        torch.optim.SGD([torch.zeros(1, requires_grad=True)])
        answer = [train_new(**call, progress=False) for call in calls]
    except BaseException:
        answer = RuntimeError(f"a worker process failed:\n{traceback.format_exc()}")
    connection.send(answer)
    # Tensors travel as shared-memory handles that this process serves until they are
    # received: wait for the parent to close the connection (or to stop this process).
    try:
        connection.recv()
    except EOFError:
        pass


# ----------------------------------------------------------------------- checkpoints


def save_checkpoint(module: nn.Module, path: str | os.PathLike, /, **meta) -> Path:
    """A state dict and plain metadata, loadable with ``weights_only=True``."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": module.state_dict(), "meta": meta}, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None) -> dict:
    """Load a checkpoint safely (no pickled code); fill ``model`` if given."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if model is not None:
        model.load_state_dict(checkpoint["state_dict"])
    return checkpoint
