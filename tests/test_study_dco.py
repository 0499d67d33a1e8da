"""The DCO study at a reduced size: outputs, Theorem 1, both protocols and the measured claims.

The least-squares experiment runs at the sizes documented in docs/studies/dco.md for tests
(100 x 100 tasks, 30 training / 30 new tasks, 11-point grid, M = 20, T = 1, extension T = 30,
both protocols); the claims checked are those this size is documented to show. The ``eqqp``
backend check and the direct-Lambda run are exercised at a tiny size in tests/test_studies.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_dco as ldco
from learned_dco import tasks
from learned_dco.studies import dco
from learned_dco.studies.dco.experiments import BASELINE_NAMES, DCO_NAMES, GRID, DirectDCOG, Experiment, algorithm1
from learned_dco.studies.dco.theorem1 import fit_rate


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dco")
    exp = Experiment("least_squares", tasks.LeastSquares(), num_train=30, num_test=30, grid=GRID[::2],
                     extension_horizon=30)
    results = dco.run(out, quick=True, seed=0, experiments=[exp], log=lambda *_: None)
    return out, results


@pytest.mark.integration
def test_outputs_on_disk(outputs):
    out, results = outputs
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["experiments"].keys() == {"least_squares"}
    ls = on_disk["experiments"]["least_squares"]
    assert ls["steps"] == list(range(31))
    assert set(ls["curves"]) == set(DCO_NAMES) | {f"{n}_carry" for n in DCO_NAMES} | set(BASELINE_NAMES)
    for curve in ls["curves"].values():
        assert len(curve["mean"]) == len(curve["std"]) == 31
    th = on_disk["theorem1"]
    assert (th["p"], th["n_tasks"]) == (20, 40)
    for name in ["figure1_least_squares.png", "theorem1.png", "report.md"]:
        assert (out / name).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert report.startswith("# DCO paper reproduction") and "| claim | kind | paper | measured | verdict |" in report
    for choice in ["Protocol (Algorithm 1, step 2)", "Parameterisation of Lambda and M", "Validation targets",
                   "Activation and input ranges", "theta_0 = 0", "Number of training tasks"]:
        assert choice in report


@pytest.mark.integration
def test_theorem1_linear_convergence_to_the_one_step_optimum(outputs):
    th = outputs[1]["theorem1"]
    gap = np.asarray(th["gap"])
    assert gap[-1] < 1e-6 * gap[0]
    assert th["rel_error_B"] < 1e-3
    assert 0 < th["rate"] < 1 and th["rate"] <= th["rate_bound"] * (1 + 1e-3)
    live = gap[gap > 1e-10 * gap[0]]
    assert all(c[-1] < c[0] for c in np.array_split(live, 10) if c.size > 1)
    assert {c["id"]: c["verdict"] for c in outputs[1]["claims"]}["theorem1"] == "reproduced"


def test_fit_rate_recovers_a_known_geometric_sequence():
    k = np.arange(200)
    assert abs(fit_rate(3.0 * 0.97**k) - 0.97) < 1e-12
    assert abs(fit_rate(np.r_[5.0 * 0.9 ** k[:150], np.full(50, 1e-300)]) - 0.9) < 1e-9


@pytest.mark.integration
def test_least_squares_claims(outputs):
    ls = outputs[1]["experiments"]["least_squares"]
    finals = ls["final"]
    best = min(finals[n] for n in BASELINE_NAMES)
    assert finals[ls["best_baseline"]] == best
    for name in DCO_NAMES:
        for key in (name, f"{name}_carry"):
            assert ls["meta_loss"][key][-1] < ls["meta_loss"][key][0]  # meta-training lowers what it optimises
        assert ls["wins"]["reset"][name] == (finals[name] <= best)
    # reset protocol: DCOG/DCOM take a better first step than every tuned baseline, but lose at step 30
    for name in ("dcog", "dcom"):
        assert ls["curves"][name]["mean"][1] < min(ls["curves"][b]["mean"][1] for b in BASELINE_NAMES)
        assert not ls["wins"]["reset"][name]
    # carry protocol: DCOM beats the best tuned baseline at step 30 (on the means)
    assert ls["wins"]["carry"]["dcom"]
    # Meta-trained on the evaluation horizon, DCOM beats the best tuned baseline at step 30.
    assert ls["extension"]["optimizers"]["dcom"]["final"] <= best
    claims = {c["id"]: c for c in outputs[1]["claims"]}
    assert claims["least_squares_reset"]["verdict"] == "not reproduced"
    carry = claims["least_squares_carry"]["test"]["parts"]
    dcom = next(p for name, p in carry.items() if name.startswith("DCOM "))
    assert dcom["estimate"] < 0 and dcom["units"] == 30  # paired over the 30 new tasks, DCOM lower on average


def test_carry_protocol_matches_an_explicit_loop():
    """Algorithm 1 read literally, written out by hand: DCOM's closed form
    (s+ = m g + (1 - m) s, theta+ = theta - s+/lam^2), RMSProp with PyTorch's defaults, every
    task's parameters *and* momentum carried to the next epoch."""
    family = tasks.LeastSquares(num_samples=8, dim=4)
    train = tasks.sample_tasks(family, jax.random.PRNGKey(3), 5)
    lopt = ldco.DCOM(learning_rate=0.05, momentum=0.5)
    phi0 = lopt.init(None, jnp.zeros(4))
    epochs = 4
    phi, losses, history = algorithm1(lopt, family, train, phi0, jax.random.PRNGKey(0), epochs=epochs,
                                      protocol="carry")

    def epoch_loss(meta_params, theta, s):
        lam, m = jnp.exp(meta_params["log_lam"]), jax.nn.sigmoid(meta_params["logit_m"])

        def one(th, sk, task):
            sk = m * jax.grad(family.loss)(th, task) + (1 - m) * sk
            new = th - sk / lam**2
            return family.val_loss(new, task), (new, sk)

        loss, carried = jax.vmap(one)(theta, s, train)
        return jnp.mean(loss), carried

    meta_params = dict(phi0)
    v = jax.tree.map(jnp.zeros_like, meta_params)
    theta, s = jnp.zeros((5, 4)), jnp.zeros((5, 4))  # theta_0 = 0 for least squares; s_0 = 0
    ref_losses = []
    for k in range(epochs):
        np.testing.assert_allclose(history[k], theta, rtol=1e-5, atol=1e-6)  # epoch k starts where k-1 ended
        (loss, (theta, s)), g = jax.value_and_grad(epoch_loss, has_aux=True)(meta_params, theta, s)
        v = jax.tree.map(lambda vi, gi: 0.99 * vi + 0.01 * gi**2, v, g)
        meta_params = jax.tree.map(lambda p, gi, vi: p - 0.01 * gi / (jnp.sqrt(vi) + 1e-8), meta_params, g, v)
        ref_losses.append(float(loss))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for name in ("log_lam", "logit_m"):
        np.testing.assert_allclose(phi[name], meta_params[name], rtol=1e-5, atol=1e-6)
    assert not np.allclose(history[-1], 0.0)  # the state really moved


def test_reset_protocol_restarts_every_epoch_and_matches_the_trainer():
    from learned_dco import meta

    family = tasks.LeastSquares(num_samples=8, dim=4)
    train = tasks.sample_tasks(family, jax.random.PRNGKey(3), 5)
    lopt = ldco.DCOM(learning_rate=0.05, normalize=True)
    phi0 = lopt.init(None, jnp.zeros(4))
    phi, losses, history = algorithm1(lopt, family, train, phi0, jax.random.PRNGKey(0), epochs=3, protocol="reset")
    assert all(np.array_equal(h, history[0]) for h in history)
    trainer = meta.MetaTrainer(lopt, family, meta.FullUnroll(horizon=1, num_tasks=5, meta_loss="final_val"),
                               meta.rmsprop_pytorch(0.01), pool=train)
    state, metrics = trainer.train(jax.random.PRNGKey(0), 3)
    np.testing.assert_allclose(losses, np.asarray(metrics.meta_loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(phi), jax.tree.leaves(state.meta)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_direct_parameterisation_stays_well_posed():
    lopt = DirectDCOG(learning_rate=0.1, lam_min=1e-3)
    projected = lopt.project({"lam": jnp.array([-1.0, 0.0, 2.0])})
    np.testing.assert_allclose(projected["lam"], [1e-3, 1e-3, 2.0], rtol=1e-6)
    with pytest.raises(ValueError, match="protocol"):
        algorithm1(lopt, tasks.LeastSquares(num_samples=4, dim=2), None, None, None, epochs=1, protocol="literal")


@pytest.mark.integration
def test_same_seed_same_numbers():
    exp = Experiment("least_squares", tasks.LeastSquares(num_samples=12, dim=6), num_train=6, num_test=4,
                     meta_epochs=2, eval_steps=3, grid=GRID[::10])
    a = dco.run_experiment(exp, jax.random.PRNGKey(7), log=lambda *_: None)
    b = dco.run_experiment(exp, jax.random.PRNGKey(7), log=lambda *_: None)
    assert a["curves"] == b["curves"] and a["tuned_lr"] == b["tuned_lr"] and a["meta_loss"] == b["meta_loss"]
