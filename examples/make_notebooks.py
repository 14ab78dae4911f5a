"""Write the example notebooks ``examples/0*.ipynb`` (nbformat v4, no outputs).

The notebooks are generated from the cell sources below so that they stay reviewable as
Python and are committed without outputs or execution counts. Run
``python examples/make_notebooks.py`` after editing, then ``pytest tests/test_notebooks.py``.
Each notebook reads ``TVWJAX_SMALL=1`` (set by the test suite and CI) to pick a small
configuration that runs in well under a minute.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''\
import os
import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import tvwjax

sys.path.insert(0, os.path.dirname(os.getcwd()))  # the repository root, from examples/
from examples import digits  # noqa: E402

SMALL = os.environ.get("TVWJAX_SMALL", "") not in ("", "0")  # the test suite's configuration
print("small configuration" if SMALL else "full configuration", "| jax", jax.__version__)'''

MASKS = [
    ("md", """\
# 1. Sparsity patterns on a trained layer

Every pattern of `tvwjax` turns non-negative scores of a `(K, N)` weight (Flax's `(in, out)`
kernel layout, `K` the contraction axis) and a target sparsity into a boolean keep-mask.
We train the small digits CNN for a moment, take its `fc1` kernel (1024 x 128) and derive
every pattern from its magnitudes, then look at the masks, validate them with
`tvwjax.check`, and compare per-layer with global selection over the whole model."""),
    ("code", SETUP),
    ("code", '''\
xtr, ytr, xte, yte = digits.load_data()
model = digits.SMALL_CNN                      # conv2 288x64, fc1 1024x128
steps = 60 if SMALL else 400
tx = optax.adam(2e-3)
params = digits.init_params(0, model)
params, _, losses = digits.make_train_fn(tx, model)(
    params, tx.init(params), *digits.batches(xtr, ytr, steps, 64, seed=0))
print(f"{steps} steps, loss {float(losses[-1]):.3f}, "
      f"test accuracy {digits.evaluate(params, xte, yte, model):.3f}")'''),
    ("md", """\
## Every pattern at 75% (2:4 at its fixed 50%)

Tile sizes scale with the layer width: tiles of 32 columns for `N = 128` (the paper uses
128 for BERT's 768). `TW(tile)` is TW-1D, the default: row *segments* inside each tile of
consecutive columns, every tile keeping at least one row. The paper's TW-2D is explicit,
`TW(tile, column_share=0.5)`: half of the sparsity (in log-density) prunes whole columns
(output features), the other half row segments. TVW is TW-1D followed by 2:4 along `K`
inside each tile's kept rows (75% TVW = 50% TW x 2:4)."""),
    ("code", '''\
w = params["fc1"]["kernel"]
scores = jnp.abs(w)
patterns = {
    "EW": (tvwjax.EW(), 0.75),
    "BW 16x16": (tvwjax.BW(16, 16), 0.75),
    "VW 16": (tvwjax.VW(16), 0.75),
    "2:4": (tvwjax.NM(2, 4), 0.5),
    "TW-1D": (tvwjax.TW(tile=32), 0.75),
    "TW-2D": (tvwjax.TW(tile=32, column_share=0.5), 0.75),
    "TEW": (tvwjax.TEW(tile=32, delta=0.05), 0.75),
    "TVW": (tvwjax.TVW(tile=32), 0.75),
}
layer_masks = {}
for name, (pattern, s) in patterns.items():
    m = pattern.mask(scores, s)
    tvwjax.check(m, pattern, s, name=name)   # raises PatternViolationError if wrong
    layer_masks[name] = m
fig = tvwjax.plot_masks(layer_masks, ncols=4, max_size=128)   # top-left 128x128 corner'''),
    ("md", """\
Dark = kept. EW is salt-and-pepper; BW keeps squares; VW and 2:4 keep a fixed share of each
short vertical vector; TW keeps whole row segments per tile of columns (horizontal bars,
different heights per tile) and TW-2D also drops whole columns; TEW adds back scattered
single weights; TVW thins the TW bars to 2 of every 4 kept rows.

How much of the layer's weight mass does each pattern keep, and what does pruning `fc1`
alone, without any fine-tuning, cost in accuracy?"""),
    ("code", '''\
total = float(jnp.sum(w ** 2))
print(f"{'pattern':10} {'sparsity':>8} {'kept |w|^2':>10} {'acc, no fine-tune':>18}")
for name, m in layer_masks.items():
    pruned = {**params, "fc1": {**params["fc1"], "kernel": jnp.where(m, w, 0.0)}}
    acc = digits.evaluate(pruned, xte, yte, model)
    kept_mass = float(jnp.sum(jnp.where(m, w, 0) ** 2)) / total
    print(f"{name:10} {1 - float(m.mean()):8.3f} {kept_mass:10.3f} {acc:18.3f}")'''),
    ("md", """\
`check` is an independent validator: it re-derives the structure from the mask alone.
Break one TW row segment and it says where:"""),
    ("code", '''\
bad = np.array(layer_masks["TW-2D"])
k, n = np.argwhere(bad)[0]
bad[k, n] = False                            # prune one weight of a kept segment
try:
    tvwjax.check(bad, tvwjax.TW(tile=32), 0.75, name="fc1/kernel")
except tvwjax.PatternViolationError as e:
    print("PatternViolationError:", e)'''),
    ("md", """\
## Whole models: layer scope vs global scope

`tvwjax.masks` works on any pytree (Linen params, `nnx.State`, dicts). By default it prunes
floating `kernel` leaves with `ndim >= 2` (conv kernels as their `(kh*kw*Cin, Cout)` im2col
matrix); `where=` picks leaves. `scope="layer"` prunes each leaf to the target;
`scope="global"` uses one threshold over all selected leaves (as in the paper's BERT runs),
so layers end at different sparsities while the total hits the target. `summary` reports
both."""),
    ("code", '''\
where = lambda path, leaf: path in ("conv2/kernel", "fc1/kernel")
tw = tvwjax.TW(tile=16)                      # 16 divides both widths (64 and 128)
per_layer = tvwjax.masks(params, tw, 0.75, where=where, scope="layer")
global_ = tvwjax.masks(params, tw, 0.75, where=where, scope="global")
tvwjax.check_tree(per_layer, tw)
tvwjax.check_tree(global_, tw)
print("layer scope\\n" + tvwjax.format_summary(tvwjax.summary(per_layer)))
print("\\nglobal scope\\n" + tvwjax.format_summary(tvwjax.summary(global_)))
for name, mt in (("layer", per_layer), ("global", global_)):
    acc = digits.evaluate(tvwjax.apply_masks(params, mt), xte, yte, model)
    print(f"{name} scope, one-shot, no fine-tune: test accuracy {acc:.3f}")'''),
    ("code", '''\
fig = tvwjax.plot_masks({"conv2, layer": per_layer["conv2"]["kernel"],
                         "conv2, global": global_["conv2"]["kernel"],
                         "fc1, layer": per_layer["fc1"]["kernel"],
                         "fc1, global": global_["fc1"]["kernel"]}, ncols=4)'''),
]

TRAINING = [
    ("md", """\
# 2. Training with the Optax transform

`tvwjax.prune(pattern, schedule)` is an Optax `GradientTransformation`: chain it *after* the
optimizer. Its state holds the masks; on the steps the schedule says, it recomputes them
from the weights the step produces, and its updates leave every pruned weight exactly zero
(no separate hook to forget). Here: the digits CNN, trained dense, then gradually pruned to
75% with TVW and, for comparison, EW (unstructured), with accuracy measured along the way."""),
    ("code", SETUP),
    ("md", """\
## Schedules

A schedule is a pure function of the step: `schedule(step) -> (sparsity, update_masks)`.
`Polynomial` is Zhu & Gupta's gradual cubic schedule; `Staged` is the paper's recipe (prune
to a level once, fine-tune, next level); `OneShot` prunes once; `tvwjax.fixed_masks` keeps given
masks. TVW rounds any non-zero sparsity below 50% up to 50% (its 2:4 half); the transform
records the effective sparsity."""),
    ("code", '''\
budget = digits.SMALL if SMALL else digits.Budget(pretrain_steps=400, prune_steps=300,
                                                  finetune_steps=200, frequency=20)
poly = tvwjax.Polynomial(0.75, begin_step=0, end_step=budget.prune_steps,
                         frequency=budget.frequency)
staged = tvwjax.Staged((0.5, 0.6, 0.7, 0.75), finetune_steps=budget.prune_steps // 4)
steps = np.arange(budget.steps)
fig, ax = plt.subplots(figsize=(6, 3))
for name, sched in (("Polynomial (cubic)", poly), ("Staged", staged)):
    s, update = jax.vmap(sched)(steps)
    ax.plot(steps, s, label=name)
    ax.plot(steps[np.asarray(update)], np.asarray(s)[np.asarray(update)], "k.", ms=3)
ax.set_xlabel("step after dense pretraining"); ax.set_ylabel("target sparsity")
ax.legend(); ax.set_title("sparsity schedules (dots: mask updates)");'''),
    ("md", "## Dense pretraining"),
    ("code", '''\
xtr, ytr, xte, yte = digits.load_data()
model = digits.SMALL_CNN
pre_tx = digits.inner_optimizer(budget, budget.pretrain_steps)
dense = digits.init_params(0, model)
dense, _, _ = digits.make_train_fn(pre_tx, model)(
    dense, pre_tx.init(dense), *digits.batches(xtr, ytr, budget.pretrain_steps, budget.batch, 0))
dense_acc = digits.evaluate(dense, xte, yte, model)
print(f"dense: {budget.pretrain_steps} steps, test accuracy {dense_acc:.4f}")'''),
    ("md", """\
## Pruning: `optax.chain(adam, tvwjax.prune(...))`

The training loop is an ordinary jitted `lax.scan` (`digits.make_train_fn`); we run it in
chunks to evaluate between them. The optimizer state, including the prune state's step
count and masks, carries over from chunk to chunk."""),
    ("code", '''\
where = lambda path, leaf: path in ("conv2/kernel", "fc1/kernel")
xs, ys = digits.batches(xtr, ytr, budget.steps, budget.batch, seed=1000)
chunk = budget.frequency * (1 if SMALL else 2)
curves, final = {}, {}
for name, pattern in (("TVW", tvwjax.TVW(tile=16)), ("EW", tvwjax.EW())):
    tx = optax.chain(digits.inner_optimizer(budget, budget.steps),
                     tvwjax.prune(pattern, poly, where=where))
    train = digits.make_train_fn(tx, model)
    params, state = dense, tx.init(dense)
    curve = [(0, 0.0, dense_acc)]
    for i in range(0, budget.steps, chunk):
        params, state, _ = train(params, state, xs[i:i + chunk], ys[i:i + chunk])
        masks = tvwjax.get_masks(state)
        curve.append((i + chunk, tvwjax.summary(masks)["total"]["sparsity"],
                      digits.evaluate(params, xte, yte, model)))
    curves[name], final[name] = np.array(curve), (params, masks, pattern)
    print(f"{name}: sparsity {curve[-1][1]:.3f}, test accuracy {curve[-1][2]:.4f}")'''),
    ("code", '''\
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.2))
for name, c in curves.items():
    a1.plot(c[:, 0], c[:, 1], marker=".", label=name)
    a2.plot(c[:, 0], 100 * c[:, 2], marker=".", label=name)
a1.set_ylabel("sparsity of conv2 + fc1"); a2.set_ylabel("test accuracy (%)")
a2.axhline(100 * dense_acc, color="k", ls="--", lw=1, label="dense")
for a in (a1, a2):
    a.set_xlabel("step after dense pretraining"); a.legend()
fig.tight_layout()'''),
    ("md", """\
The masks in the optimizer state are the model's masks: the weights are exactly zero where
they are pruned, and the masks follow the pattern."""),
    ("code", '''\
params, masks, pattern = final["TVW"]
tvwjax.check_tree(masks, pattern)
print(tvwjax.format_summary(tvwjax.summary(masks)))
zero = jax.tree.map(lambda m, p: None if m is None else bool(jnp.all(jnp.where(m, True, p == 0))),
                    masks, params, is_leaf=lambda v: v is None)
print("pruned weights exactly zero:", zero)
print(f"zeros in conv2 + fc1: {digits.pruned_sparsity(params):.4f}")'''),
]

INFERENCE = [
    ("md", """\
# 3. Compressed inference: formats, `matmul`, speed, memory, Flax modules

After training, `tvwjax.compress` (one weight) or `tvwjax.nn.compress_params` (a params
tree) packs the kept weights of a TW / TVW / 2:4 / block mask into a compressed pytree;
`tvwjax.matmul(x, w)` multiplies by it under `jit` (on the CPU: a gather of the kept
activation rows and one batched GEMM per bucket of tiles; on a GPU: Pallas kernels).
The Flax layers `tvwjax.nn.SparseDense` (Linen) and `SparseLinear` (NNX) take either dense
or compressed kernels."""),
    ("code", SETUP),
    ("md", """\
## One weight: compress, matmul, bytes"""),
    ("code", '''\
rng = np.random.default_rng(0)
w = jnp.asarray(rng.standard_normal((4096, 1024)), jnp.float32)
x = jnp.asarray(rng.standard_normal((16, 4096)), jnp.float32)
for pattern in (tvwjax.TW(tile=128), tvwjax.TVW(tile=128), tvwjax.NM(2, 4)):
    s = 0.5 if isinstance(pattern, tvwjax.NM) else 0.75
    mask = pattern.mask(jnp.abs(w), s)
    cw = tvwjax.compress(w, mask, pattern)
    err = float(jnp.max(jnp.abs(tvwjax.matmul(x, cw) - x @ jnp.where(mask, w, 0))))
    assert bool(jnp.all(tvwjax.decompress(cw) == jnp.where(mask, w, 0)))
    print(f"{type(cw).__name__:15} values {tuple(cw.values.shape)}, stored "
          f"{cw.storage_bytes() / cw.dense_bytes():.3f} of dense, max |error| {err:.1e}")'''),
    ("md", """\
## The digits CNN, compressed

A wider digits CNN (`digits.WIDE`: conv2 288x256, fc1 4096x1024) so that the weights are
large enough for sparsity to matter on a CPU. Its layers multiply through `tvwjax.matmul`,
so the same module runs dense params or compressed ones. Train dense briefly, prune to 75%
with TW and TVW (one-shot, then fine-tune with fixed masks), compress."""),
    ("code", '''\
xtr, ytr, xte, yte = digits.load_data()
model = digits.WIDE
pre, fine = (30, 20) if SMALL else (300, 200)
tx = optax.adam(1e-3)
dense = digits.init_params(0, model)
dense, _, _ = digits.make_train_fn(tx, model)(dense, tx.init(dense),
                                              *digits.batches(xtr, ytr, pre, 64, 0))
where = lambda path, leaf: path in ("conv2/kernel", "fc1/kernel")
models = {"dense": dense}
for name, pattern in (("TW", tvwjax.TW(tile=128)), ("TVW", tvwjax.TVW(tile=128))):
    ptx = optax.chain(optax.adam(5e-4), tvwjax.prune(pattern, tvwjax.OneShot(0.75), where=where))
    p, state, _ = digits.make_train_fn(ptx, model)(dense, ptx.init(dense),
                                                   *digits.batches(xtr, ytr, fine, 64, 1))
    compressed = tvwjax.nn.compress_params(p, tvwjax.get_masks(state), pattern)
    a, b = (digits.logits_fn(model)(q, jnp.asarray(xte)) for q in (p, compressed))
    print(f"{name}: compressed vs masked dense logits, max |diff| "
          f"{float(jnp.max(jnp.abs(a - b))):.1e}")
    models[name] = compressed
print(jax.tree.map(lambda v: type(v).__name__ if isinstance(v, tvwjax.CompressedWeight)
                   else v.shape, models["TVW"],
                   is_leaf=lambda v: isinstance(v, tvwjax.CompressedWeight)))'''),
    ("md", """\
## Accuracy, memory and speed against dense

Stored bytes count values plus index tables (no padding) for compressed weights. Times are
medians of interleaved rounds (`benchmarks._timing.interleaved_medians`), so load changes
on a shared machine hit every model alike; the ratios come from this run only. A CPU has no
2:4 hardware: TVW's 2:4 half is decoded at each call, so TW is the fast format here."""),
    ("code", '''\
from benchmarks._timing import interleaved_medians
from examples.demo import param_bytes

logits = digits.logits_fn(model)
batch_sizes = (16,) if SMALL else (1, 16, 128)
rows = []
for bsz in batch_sizes:
    xb = jnp.asarray(np.resize(xte, (bsz, 8, 8, 1)))
    t = interleaved_medians({k: (lambda p=p, xb=xb: logits(p, xb)) for k, p in models.items()},
                            repeats=3 if SMALL else 15, budget_s=20)
    rows += [(k, bsz, t[k], t["dense"] / t[k]) for k in models]
print(f"{'model':6} {'accuracy':>8} {'MB':>6} {'vs dense':>8}")
for k, p in models.items():
    print(f"{k:6} {digits.evaluate(p, xte, yte, model):8.4f} {param_bytes(p) / 1e6:6.2f} "
          f"{param_bytes(p) / param_bytes(dense):8.3f}")
print(f"\\n{'model':6} {'batch':>5} {'ms':>8} {'speed':>6}")
for k, bsz, sec, ratio in rows:
    print(f"{k:6} {bsz:5d} {1e3 * sec:8.2f} {ratio:5.2f}x")'''),
    ("md", """\
## Flax Linen: `SparseDense`

A drop-in for `nn.Dense`: train with a dense kernel (the prune transform keeps it sparse),
then swap the kernels for compressed ones with `compress_params` and apply under `jit`."""),
    ("code", '''\
import flax.linen as nn
from tvwjax.nn import SparseDense, SparseLinear, compress_model, compress_params


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(SparseDense(512, name="hidden")(x))
        return SparseDense(10, name="out")(h)


mlp = MLP()
xb = jnp.asarray(rng.standard_normal((8, 1024)), jnp.float32)
p = mlp.init(jax.random.key(0), xb)["params"]
pattern = tvwjax.TW(tile=64)
masks = tvwjax.masks(p, pattern, 0.75, where=lambda path, leaf: path == "hidden/kernel")
ref = mlp.apply({"params": tvwjax.apply_masks(p, masks)}, xb)
cp = compress_params(p, masks, pattern)
y = jax.jit(mlp.apply)({"params": cp}, xb)
print(type(cp["hidden"]["kernel"]).__name__, "max |diff|",
      float(jnp.max(jnp.abs(y - ref))))'''),
    ("md", """\
## Flax NNX: `SparseLinear`

A drop-in for `nnx.Linear`. Masks are computed on `nnx.state(model, nnx.Param)`;
`compress_model` replaces the kernels in place, and the model runs under `nnx.jit`."""),
    ("code", '''\
from flax import nnx


class Net(nnx.Module):
    def __init__(self, rngs):
        self.a = SparseLinear(1024, 512, rngs=rngs)
        self.b = SparseLinear(512, 10, rngs=rngs)

    def __call__(self, x):
        return self.b(jax.nn.relu(self.a(x)))


net = Net(nnx.Rngs(0))
pattern = tvwjax.TVW(tile=64)
state = nnx.state(net, nnx.Param)
masks = tvwjax.masks(state, pattern, 0.75, where=lambda path, leaf: path == "a/kernel")
nnx.update(net, tvwjax.apply_masks(state, masks))
ref = net(xb)
compress_model(net, masks, pattern)
y = nnx.jit(lambda m, x: m(x))(net, xb)
print(type(net.a.kernel.get_value()).__name__, "max |diff|", float(jnp.max(jnp.abs(y - ref))))'''),
]

OWN_MODEL = [
    ("md", """\
# 4. Your own model: stock Flax, pruned and compressed without a rewrite

A model written with plain `flax.linen` layers (a patch `Conv`, `MultiHeadDotProductAttention`,
`Dense` layers with biases, `LayerNorm`, a 10-class head) goes through the whole path:
masks in each kernel's real GEMM view, training with the Optax transform, and compressed
inference of the *unchanged* model class under `jit`. Then the same for an NNX transformer
block built from `nnx.MultiHeadAttention` and `nnx.Linear`."""),
    ("code", SETUP),
    ("code", """\
from flax import nnx

from examples.own_model import TinyViT, accuracy, load_digits, train"""),
    ("md", """\
## GEMM views and the selection report

An attention query kernel is `(in, heads, head_dim)` and the output projection
`(heads, head_dim, out)`: the shape alone cannot tell which axes are contracted.
`gemm_views` asks the modules; `selection` shows what will be pruned, in which view, before
any training. The defaults are the 1-D tile patterns: no output feature (class) is pruned
whole."""),
    ("code", '''\
xtr, xte, ytr, yte = load_digits()
model = TinyViT()
x0 = jnp.asarray(xtr[:2])
params = model.init(jax.random.key(0), x0)["params"]
views = tvwjax.gemm_views(model, x0)
pattern, sparsity = tvwjax.TVW(tile=16), 0.75
print(views)
print(tvwjax.selection(params, pattern, sparsity, views=views))'''),
    ("md", """\
## Dense training, then gradual pruning with the wrapper form

`tvwjax.pruned(inner, pattern, schedule)` is `optax.chain(inner, prune(...))`: the order
cannot be wrong, and pruned weights are exactly zero after every step."""),
    ("code", '''\
dense_steps, prune_steps, finetune_steps = (60, 40, 20) if SMALL else (300, 200, 100)
dense, _ = train(model, params, optax.adam(3e-3), xtr, ytr, dense_steps)
tx = tvwjax.pruned(optax.adam(1e-3), pattern,
                   tvwjax.Polynomial(sparsity, 0, prune_steps, frequency=prune_steps // 10),
                   views=views)
pruned, state = train(model, dense, tx, xtr, ytr, prune_steps + finetune_steps, seed=1)
masks = tvwjax.get_masks(state)
tvwjax.check_tree(masks, pattern, sparsity, views=views)   # independent check, real views
print(f"dense {accuracy(model, dense, xte, yte):.3f}   "
      f"TVW {sparsity:.0%} {accuracy(model, pruned, xte, yte):.3f}")
print(tvwjax.format_summary(tvwjax.summary(masks)))'''),
    ("md", """\
## Compressed inference of the unchanged model class

`compress_params(..., views=views)` compresses every pruned kernel in its GEMM view,
attention and conv included. Inside `tvwjax.nn.compressed_kernels()` the model's own
`Dense`, `DenseGeneral` and `Conv` layers run them through `tvwjax.matmul`."""),
    ("code", '''\
small = tvwjax.nn.compress_params(pruned, masks, pattern, views=views)
print({k: type(v["kernel"]).__name__ for k, v in small.items()
       if isinstance(v, dict) and "kernel" in v})
print("attention query:", type(small["attn"]["query"]["kernel"]).__name__)
xb = jnp.asarray(xte[:64])
with tvwjax.nn.compressed_kernels():
    y = jax.jit(model.apply)({"params": small}, xb)
ref = model.apply({"params": pruned}, xb)
print("max |compressed - masked dense|", float(jnp.max(jnp.abs(y - ref))))'''),
    ("md", """\
## An NNX transformer block, compressed in place

NNX models need no inputs to read their views. `compress_model` compresses the kernels in
place; the stock `nnx.Linear` / `nnx.LinearGeneral` layers (so `nnx.MultiHeadAttention`)
then run them, under `nnx.jit`."""),
    ("code", '''\
class Block(nnx.Module):
    def __init__(self, d, rngs):
        self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=d, decode=False,
                                           rngs=rngs)
        self.ln1, self.ln2 = nnx.LayerNorm(d, rngs=rngs), nnx.LayerNorm(d, rngs=rngs)
        self.fc1, self.fc2 = nnx.Linear(d, 4 * d, rngs=rngs), nnx.Linear(4 * d, d, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


block = Block(64, nnx.Rngs(0))
nviews = tvwjax.gemm_views(block)
opt = nnx.Optimizer(block, tvwjax.pruned(optax.adam(1e-3), pattern,
                                         tvwjax.OneShot(sparsity), views=nviews), wrt=nnx.Param)
xs = jax.random.normal(jax.random.key(1), (8, 16, 64))


@nnx.jit
def step(block, opt, x):
    opt.update(block, nnx.grad(lambda b: jnp.mean((b(x) - x) ** 2))(block))


for _ in range(3):
    step(block, opt, xs)
nmasks = tvwjax.get_masks(opt.opt_state)
ref = block(xs)
tvwjax.nn.compress_model(block, nmasks, pattern, views=nviews)
out = nnx.jit(lambda b, x: b(x))(block, xs)
print(type(block.attn.query.kernel.get_value()).__name__,
      "max |diff|", float(jnp.max(jnp.abs(out - ref))))'''),
]

NOTEBOOKS = {"01_masks.ipynb": MASKS, "02_training.ipynb": TRAINING,
             "03_inference.ipynb": INFERENCE, "04_own_model.ipynb": OWN_MODEL}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A v4 notebook of ``(kind, source)`` cells ("md" or "code"), without outputs."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src)
                for kind, src in cells]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def main() -> None:
    """Write every notebook of :data:`NOTEBOOKS` next to this file."""
    for name, cells in NOTEBOOKS.items():
        nb = build(cells)
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
