"""Train a flax nnx model with the shipped pretrained learned optimizer.

`ldco.pretrained.load("learned_prodigy", num_steps=T)` is an ordinary
`optax.GradientTransformation` (T: the number of steps you will take; the learned rule
uses the fraction of training done), so `nnx.Optimizer` takes it like any optax optimizer.

    python examples/pretrained_nnx.py
"""

import jax
import jax.numpy as jnp
from flax import nnx

import learned_dco as ldco

# data: y = sin(x · w) + noise
kx, kn = jax.random.split(jax.random.PRNGKey(0))
x = jax.random.normal(kx, (512, 8))
y = jnp.sin(x @ jnp.linspace(-1.0, 1.0, 8))[:, None] + 0.05 * jax.random.normal(kn, (512, 1))

# --- the user code: a model, the pretrained optimizer, a training loop ---------------------
model = nnx.Sequential(nnx.Linear(8, 64, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(64, 1, rngs=nnx.Rngs(1)))
num_steps = 300
optimizer = nnx.Optimizer(model, ldco.pretrained.load("learned_prodigy", num_steps=num_steps), wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss


losses = [float(train_step(model, optimizer, x, y)) for _ in range(num_steps)]
# -------------------------------------------------------------------------------------------

print(f"loss: first {losses[0]:.4f}  last {losses[-1]:.4f}")
print("loss decreased" if losses[-1] < 0.25 * losses[0] else "loss did not decrease")
