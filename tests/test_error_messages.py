"""Error messages name the owner (the optimizer, estimator or solver) and the argument at
fault: each case's full message is pinned, so an error that loses either is caught."""

import jax.numpy as jnp
import pytest

import learned_dco as ldco
from learned_dco import meta, qp
from learned_dco.optimizers.general import LearnedDCO, StepQP, general_dco
from learned_dco.validation import ValidationError

PARAMS = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(2)}
OTHER = {"w": jnp.zeros((3, 3)), "b": jnp.zeros(2)}  # the same structure, another shape


def _dcom_step_on_other_params():
    """A DCOM whose per-weight ``m`` fits the params it was initialised on, updated with
    params of another shape: the step names ``m``."""
    m = {"w": jnp.full((2, 3), 0.5), "b": jnp.full(2, 0.5)}
    tx = ldco.dcom_transform(2.0, m)
    state = tx.init(PARAMS)
    tx.update({"w": jnp.ones((3, 3)), "b": jnp.ones(2)}, state, OTHER)


def _general_dco_step_returning_a_tuple():
    tx = general_dco({}, lambda meta, g, params, state: ((), state))
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2))


CASES = {
    "estimator horizon": (lambda: meta.FullUnroll(horizon=0), r"^FullUnroll\.horizon must be an integer >= 1, got 0$"),
    "estimator truncation": (lambda: meta.TruncatedBPTT(truncation=0),
                             r"^TruncatedBPTT\.truncation must be an integer >= 1, got 0$"),
    "estimator num_tasks": (lambda: meta.TruncatedBPTT(num_tasks=1.5),
                            r"^TruncatedBPTT\.num_tasks must be an integer >= 1, got 1\.5$"),
    "dcog lam": (lambda: ldco.dcog_transform({"w": jnp.array([1.0, 0.0])}),
                 r"^dcog_transform: lam\['w'\] must be nonzero \(the QP is unbounded where lam = 0\)$"),
    "dcom m at init": (lambda: ldco.dcom_transform(2.0, {"w": jnp.full((3, 2), 0.5), "b": 0.5}).init(PARAMS),
                       r"^dcom_transform: m\['w'\] has shape \(3, 2\) but params\['w'\] has shape \(2, 3\)"),
    "dcom m in the step": (_dcom_step_on_other_params,
                           r"^dcom_transform: m\['w'\] has shape \(2, 3\) but params\['w'\] has shape \(3, 3\)"),
    "dcogd radius": (lambda: ldco.dcogd_transform(jnp.eye(8), radius={"w": jnp.ones((3, 2)), "b": 0.1}).init(PARAMS),
                     r"^dcogd_transform: radius\['w'\] has shape \(3, 2\) but params\['w'\] has shape \(2, 3\)"),
    "general_dco default owner": (_general_dco_step_returning_a_tuple,
                                  r"^general_dco: step must return \(StepQP, state\), got tuple$"),
    "LearnedDCO solver": (lambda: LearnedDCO(lambda k, p: {}, lambda m, g, p, s: (StepQP(None, g), s), solver="eqqp",
                                             constraints=("box",)),
                          r"^LearnedDCO: constraints=\('box',\) needs box constraints, which solver='eqqp' \(qp\.EqQP\)"),
    "solver options": (lambda: qp.OSQP().with_options(rho=1.0, alpha=1.6),
                       r"^qp\.OSQP has no option alpha, rho \(options: \['maxiter', 'tol'\]\)$"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_error_names_the_owner_and_the_argument(case):
    make, message = CASES[case]
    with pytest.raises((ValueError, TypeError), match=message):
        make()


@pytest.mark.parametrize("make,field", [
    (lambda: meta.TruncatedBPTT(truncation=0), "truncation"),
    (lambda: meta.TruncatedBPTT(horizon=4, truncation=8), "truncation"),
    (lambda: meta.ES(num_tasks=0), "num_tasks"),
    (lambda: ldco.DCOM(momentum=1.0), "momentum"),
    (lambda: ldco.DCOG(learning_rate=0.0), "learning_rate"),
], ids=["truncation", "truncation>horizon", "num_tasks", "dcom momentum", "learning_rate"])
def test_validation_errors_carry_the_field_at_fault(make, field):
    """``ValidationError.field`` (public: lets a caller point at the setting without parsing the
    message) names the setting at fault."""
    with pytest.raises(ValidationError) as info:
        make()
    assert info.value.field == field
