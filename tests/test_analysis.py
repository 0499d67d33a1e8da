"""learned_dco.analysis.stability against independent references: numpy eigenvalues,
brute-force powers of A, the T = 1 closed form of the meta-gradient variance, the closed
form expected meta-loss (STAR eq. 8) and Monte Carlo means."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_dco import analysis as an
from learned_dco.tasks import STAR_HESSIAN, NoisyQuadratic

H_STAR = np.asarray(STAR_HESSIAN)


def _random_spd(rng, d, low=0.1, high=3.0):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * rng.uniform(low, high, d)) @ q.T


def _symmetric_with_spectrum(rng, eigenvalues):
    d = len(eigenvalues)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.asarray(eigenvalues)) @ q.T


def test_dynamics_matrix_and_spectral_radius_match_numpy():
    rng = np.random.default_rng(0)
    for d in (2, 3, 5):
        H = _random_spd(rng, d)
        P = rng.normal(size=(d, d))
        alpha = 0.3
        A = np.asarray(an.dynamics_matrix(H, alpha, P))
        np.testing.assert_allclose(A, np.eye(d) - (alpha * np.eye(d) + P) @ H, rtol=1e-5, atol=1e-6)
        rho = float(an.spectral_radius(A))
        np.testing.assert_allclose(rho, np.max(np.abs(np.linalg.eigvals(A))), rtol=1e-5)
        # Gelfand: ||A^k||^(1/k) -> rho(A)
        Ak = np.linalg.matrix_power(A.astype(np.float64), 200)
        np.testing.assert_allclose(np.linalg.norm(Ak, 2) ** (1 / 200), rho, rtol=0.05)
        # Lemma 2 dynamics: I - H^{-1/2} (alpha I + P) H
        Ap = np.asarray(an.dynamics_matrix(H, alpha, P, hessian_preconditioned=True))
        w, V = np.linalg.eigh(H)
        h_isqrt = (V / np.sqrt(w)) @ V.T
        np.testing.assert_allclose(Ap, np.eye(d) - h_isqrt @ (alpha * np.eye(d) + P) @ H, rtol=1e-4, atol=1e-5)
    # P = None is P = 0: I - alpha H
    np.testing.assert_allclose(an.dynamics_matrix(H_STAR, 0.5), np.eye(2) - 0.5 * H_STAR, rtol=1e-6)


def test_theorem1_and_lemma2_bounds_values():
    lam = np.linalg.eigvalsh(H_STAR).max()
    assert an.theorem1_bounds(H_STAR, 0.2) == pytest.approx((-0.2, 2 / lam - 0.2))
    assert an.lemma2_bounds(H_STAR, 0.2) == pytest.approx((-0.2, 2 / np.sqrt(lam) - 0.2))
    with pytest.raises(ValueError):
        an.theorem1_bounds(H_STAR, -0.1)
    with pytest.raises(ValueError):
        an.theorem1_bounds(np.array([[1.0, 0.0], [0.0, -1.0]]), 0.1)
    with pytest.raises(ValueError):
        an.dynamics_matrix(H_STAR, 0.1, np.eye(3))


@pytest.mark.parametrize("preconditioned", [False, True])
def test_bounds_guarantee_stability_for_symmetric_p(preconditioned):
    """Random SPD H, alpha and symmetric P inside the bounds: rho(A) <= 1."""
    rng = np.random.default_rng(1 + preconditioned)
    bounds = an.lemma2_bounds if preconditioned else an.theorem1_bounds
    holds = an.lemma2_holds if preconditioned else an.theorem1_holds
    checked = 0
    for _ in range(300):
        d = int(rng.integers(2, 6))
        H = _random_spd(rng, d, 0.05, 4.0)
        lo, hi = bounds(H, 0.0)
        alpha = rng.uniform(0, hi)
        lo, hi = bounds(H, alpha)
        eig = rng.uniform(lo, hi, d)
        P = _symmetric_with_spectrum(rng, eig)
        assert holds(H, alpha, P)
        eig[rng.integers(d)] = rng.choice([lo, hi])  # and with the boundary itself
        for P in (P, _symmetric_with_spectrum(rng, eig)):
            A = np.asarray(an.dynamics_matrix(H, alpha, P, hessian_preconditioned=preconditioned), np.float64)
            assert np.max(np.abs(np.linalg.eigvals(A))) <= 1 + 1e-4
        checked += 1
    assert checked == 300


@pytest.mark.parametrize("preconditioned", [False, True])
def test_slightly_violating_the_bounds_along_the_top_eigenvector_is_unstable(preconditioned):
    rng = np.random.default_rng(7)
    bounds = an.lemma2_bounds if preconditioned else an.theorem1_bounds
    for _ in range(50):
        d = int(rng.integers(2, 6))
        H = _random_spd(rng, d, 0.05, 4.0)
        w, V = np.linalg.eigh(H)
        alpha = rng.uniform(0, bounds(H, 0.0)[1])
        lo, hi = bounds(H, alpha)
        delta = 0.02 * abs(hi) + 1e-3
        top, bottom = V[:, -1], V[:, 0]
        # Upper bound (10)/(13) broken along H's top eigenvector: an eigenvalue of A below -1.
        P = (hi + delta) * np.outer(top, top)
        A = np.asarray(an.dynamics_matrix(H, alpha, P, hessian_preconditioned=preconditioned), np.float64)
        assert np.max(np.abs(np.linalg.eigvals(A))) > 1 + 1e-4
        # Exactly at the bound: marginally stable.
        A = np.asarray(an.dynamics_matrix(H, alpha, hi * np.outer(top, top), hessian_preconditioned=preconditioned), np.float64)
        assert np.max(np.abs(np.linalg.eigvals(A))) == pytest.approx(1.0, abs=1e-4)
        # Lower bound (9) broken along the bottom eigenvector: an eigenvalue of A above 1.
        P = (lo - delta) * np.outer(bottom, bottom)
        A = np.asarray(an.dynamics_matrix(H, alpha, P, hessian_preconditioned=preconditioned), np.float64)
        assert np.max(np.abs(np.linalg.eigvals(A))) > 1 + 1e-6


def test_theorem1_needs_symmetric_p():
    """The counter-example of the module docstring: diagonalizable P with real eigenvalues
    inside both bounds, yet rho(A) ~ 5.9 (the proof's step A.16 needs symmetric P)."""
    H = np.array([[1.0, 0.5], [0.5, 1.0]])
    P = np.array([[1.0, 10.0], [0.0, 1.01]])
    assert an.theorem1_holds(H, 0.0, P)
    rho = float(an.spectral_radius(an.dynamics_matrix(H, 0.0, P)))
    assert rho == pytest.approx(5.9, abs=0.05)


def test_t1_meta_gradient_matches_hand_formula_and_closed_form_variance(x64):
    """T = 1, P = 0: grad_P L = -r g^T with g = H(phi0 - xi0), r = H(phi1 - xi1); the trace of
    its covariance is tr(S_r) tr(S_g) + ||C||_F^2 (Isserlis), C = E[r g^T] = H(s0 I - (s0 + s)aH)H."""
    H = jnp.asarray(H_STAR)
    alpha, s0, s = 0.4, 10.0, 1.0
    key = jax.random.PRNGKey(3)
    # Per-sample check against the hand formula (same draws as mean_losses).
    k0, kn = jax.random.split(key)
    phi0 = np.sqrt(s0) * jax.random.normal(k0, (2,), jnp.float64)
    xi0 = jax.random.normal(jax.random.fold_in(kn, 0), (2,), jnp.float64)
    xi1 = jax.random.normal(jax.random.fold_in(kn, 1), (2,), jnp.float64)
    g = H @ (phi0 - xi0)
    r = H @ (phi0 - alpha * g - xi1)
    grad = jax.grad(lambda P: an.mean_losses(P, alpha, H, key, (1,), np.sqrt(s0), np.sqrt(s))[0])(jnp.zeros((2, 2)))
    np.testing.assert_allclose(grad, -np.outer(r, g), rtol=1e-10)

    Hn = np.asarray(H_STAR)
    I = np.eye(2)
    S_g = (s0 + s) * Hn @ Hn
    S_r = Hn @ (s0 * (I - alpha * Hn) @ (I - alpha * Hn) + s * alpha**2 * Hn @ Hn + s * I) @ Hn
    C = Hn @ (s0 * I - (s0 + s) * alpha * Hn) @ Hn
    closed = np.trace(S_r) * np.trace(S_g) + np.sum(C**2)
    var = float(an.meta_gradient_variance(H, [alpha], jax.random.PRNGKey(4), 40_000, (1,))[0, 0])
    assert var == pytest.approx(closed, rel=0.05)


def test_mean_meta_gradient_matches_closed_form_expected_loss(x64):
    """E[grad_P L(P; T)] from samples equals grad_P of STAR eq. (8) (Monte Carlo, 4 sigma)."""
    H = jnp.asarray(H_STAR)
    alpha, T, n = 0.5, 10, 20_000
    P = jnp.asarray([[0.05, -0.02], [0.01, 0.1]])
    grads = an.meta_gradients(H, [alpha], jax.random.PRNGKey(5), n, (T,), P=P)[:, 0, 0]
    mean, sem = np.mean(grads, 0), np.std(grads, 0) / np.sqrt(n)
    exact = jax.grad(lambda p: an.expected_meta_loss(H, alpha, p, T))(P)
    assert np.all(np.abs(mean - exact) < 4 * sem + 1e-9)
    # and the expected loss itself against the sample mean of the losses
    losses = jax.vmap(lambda k: an.mean_losses(P, alpha, H, k, (T,))[0])(jax.random.split(jax.random.PRNGKey(6), n))
    assert abs(float(jnp.mean(losses)) - float(an.expected_meta_loss(H, alpha, P, T))) < 4 * float(jnp.std(losses)) / np.sqrt(n)


def test_forward_mode_equals_reverse_mode_for_every_horizon():
    H = jnp.asarray(H_STAR)
    horizons = (1, 3, 20)
    key = jax.random.PRNGKey(8)
    fwd = an.meta_gradients(H, [0.3], key, 2, horizons)
    keys = jax.random.split(key, 2)
    for i, k in enumerate(keys):
        for j, T in enumerate(horizons):
            rev = jax.grad(lambda P: an.mean_losses(P, 0.3, H, k, (T,))[0])(jnp.zeros((2, 2)))
            np.testing.assert_allclose(fwd[i, 0, j], rev, rtol=1e-4, atol=1e-6)


def test_figure2a_lower_variance_within_the_stability_bounds():
    """The paper's Fig. 2a claim on a coarse grid: strictly inside (0, 2/lam_max) the
    meta-gradient variance is far below its value at the marginally stable alpha = 0 and at
    an unstable alpha = 1.05 * 2/lam_max, and the gap widens with the horizon."""
    edge = 2 / np.linalg.eigvalsh(H_STAR).max()
    alphas = np.array([0.0, 0.25, 0.5, 0.75, 1.05]) * edge
    var = np.asarray(an.meta_gradient_variance(jnp.asarray(H_STAR), alphas, jax.random.PRNGKey(9), 200, (1, 10, 100)))
    inside, outside = var[1:4], var[[0, 4]]
    assert np.all(np.isfinite(var))
    assert inside[:, 2].max() * 100 < outside[:, 2].min()  # T = 100: orders of magnitude
    assert inside[:, 1].max() * 3 < outside[:, 1].min()  # T = 10
    # inside, longer horizons average the noise out; outside they amplify it
    assert np.all(inside[:, 2] < inside[:, 1])
    assert np.all(outside[:, 2] > 10 * outside[:, 1])


def test_figure2a_output():
    res = an.figure2a(H_STAR, jax.random.PRNGKey(0), num_alphas=5, num_seeds=20, horizons=(1, 10))
    assert len(res["alphas"]) == 5 and res["horizons"] == [1, 10]
    assert np.asarray(res["trace_variance"]).shape == (2, 5)
    assert 0 < min(res["alphas"]) and max(res["alphas"]) < res["stability_edge"]
    assert all(r < 1 for r in res["spectral_radius"])
    with pytest.raises(ValueError):
        an.meta_gradients(H_STAR, [0.1], jax.random.PRNGKey(0), 4, (0,))
    # NoisyQuadratic.star() is the same H
    np.testing.assert_allclose(np.asarray(NoisyQuadratic.star().hessian), H_STAR)
