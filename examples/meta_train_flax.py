"""Meta-train a learned optimizer on your own flax model, loss and data; save and reload it.

`tasks.from_flax` turns (model, loss, data) into a task family: each task is a random
train/validation split of the data and a fresh initialisation of the model. A learned
optimizer (here DCOG: a DCO step with a learned per-parameter curvature Λ, i.e.
θ+ = argmin g·θ + ½‖Λ⊙(θ−θt)‖²) is meta-trained on that family, saved as msgpack, loaded back, and compared with its untrained self on
held-out tasks.

    python examples/meta_train_flax.py
"""

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import learned_dco as ldco
from learned_dco import meta, tasks


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(4, 16, rngs=rngs)
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def mse(pred, y):
    return jnp.mean((pred - y) ** 2)


# the user's data set: a smooth regression target with noise
kx, kn = jax.random.split(jax.random.PRNGKey(0))
x = jax.random.normal(kx, (256, 4))
y = jnp.sin(x @ jnp.array([[1.0], [-0.5], [0.3], [0.8]])) + 0.05 * jax.random.normal(kn, (256, 1))

family = tasks.from_flax(lambda rngs: MLP(rngs), mse, (x, y), n_val=64, batch_size=32, name="my_regression")
lopt = ldco.DCOG(learning_rate=0.05)  # starts as gradient descent with step 0.05
trainer = meta.MetaTrainer(lopt, family, meta.FullUnroll(horizon=20, num_tasks=8), meta.rmsprop_pytorch(3e-2))
state, metrics = trainer.train(jax.random.PRNGKey(1), 40)  # 40 meta-steps in one jitted scan
print(f"meta-loss: first {float(metrics.meta_loss[0]):.4f}  last {float(metrics.meta_loss[-1]):.4f}")

# save the meta-parameters (flax msgpack) and load them back into the optimizer's structure
with tempfile.TemporaryDirectory() as tmp:
    path = meta.save_meta(Path(tmp) / "my_optimizer.msgpack", state.meta, info={"optimizer": "DCOG"})
    template = lopt.init(jax.random.PRNGKey(0), trainer.example_params(jax.random.PRNGKey(0)))
    loaded = meta.load_meta(path, template=template)
assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(state.meta)))

# held-out tasks: the loaded optimizer against its untrained initialisation
held_out = tasks.sample_tasks(family, jax.random.PRNGKey(2), 32)
untrained = lopt.init(jax.random.PRNGKey(0), trainer.example_params(jax.random.PRNGKey(0)))
before = meta.evaluate(lopt.opt_fn, untrained, family, held_out, jax.random.PRNGKey(3), 20)
after = meta.evaluate(lopt.opt_fn, loaded, family, held_out, jax.random.PRNGKey(3), 20)
v0, v1 = float(before.val[:, -1].mean()), float(after.val[:, -1].mean())
print(f"held-out validation loss after 20 steps: untrained {v0:.4f}  meta-trained (reloaded) {v1:.4f}")
print("improved" if v1 < v0 else "not improved")
