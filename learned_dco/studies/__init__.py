"""Studies: one module per seed paper, each a command that reproduces its claims.

``STUDIES`` maps a name to a :class:`~learned_dco.studies.common.Study` whose
``run(out_dir, *, quick, seed)`` writes ``report.md`` (opening with the claims table),
``results.json`` (schema in :mod:`learned_dco.studies.common`) and figures, and returns the
results dict. ``learned-dco reproduce STUDY`` calls exactly this.
"""

from __future__ import annotations

from learned_dco.studies.common import SANITY_VERDICTS, VERDICTS, Claim, Study, validate_results, write_study

STUDIES: dict[str, Study] = {
    "dco": Study("dco", "Gautam, Pfrommer & Sojoudi: Meta-Learning Parameterized First-Order Optimizers using Differentiable Convex Optimization",
                 "DCO paper: Figures 1-3 under both readings of Algorithm 1 (reset/carry), Theorem 1, QP backend",
                 "learned_dco.studies.dco"),
    "star": Study("star", "Harrison, Metz & Sohl-Dickstein: A Closer Look at Learned Optimization: Stability, Robustness, and Inductive Biases (NeurIPS 2022)",
                  "STAR vs Blackbox vs Hyperparam stability past the horizon (to 40x H), NQM Fig. 2a, nominal-term ablation",
                  "learned_dco.studies.star"),
    "metamd": Study("metamd", "MetaMD: Principled Optimiser Meta-Learning for Deep Learning",
                    "MetaMD Kronecker mirror maps vs tuned SGD/Adam/DCOG; regret-bound objective; cost vs dense DCOGD",
                    "learned_dco.studies.metamd"),
    "l2l": Study("l2l", "Wang et al.: Guarantees for Tuning the Step Size using a Learning-to-Learn Approach (ICML 2021)",
                 "step-size L2L: meta-gradient explosion, stable (1/t) log f, train-by-train vs train-by-validation",
                 "learned_dco.studies.l2l"),
    "ml2o": Study("ml2o", "Yang et al.: M-L2O: Towards Generalizable Learning-to-Optimize by Test-Time Fast Self-Adaptation (ICLR 2023)",
                  "M-L2O vs vanilla L2O vs transfer fine-tuning on shifted LASSO/Quadratic/Rosenbrock",
                  "learned_dco.studies.ml2o"),
}
STUDIES["constrained"] = Study(
    "constrained", "Gautam, Pfrommer & Sojoudi, eq. (5): DCO steps with constraints (the paper's stated future work)",
    "learned constrained DCO vs tuned projected GD/Adam/EG on NNLS, simplex LS, box LQR: feasibility of every iterate, suboptimality",
    "learned_dco.studies.constrained")

__all__ = ["Claim", "SANITY_VERDICTS", "STUDIES", "Study", "VERDICTS", "validate_results", "write_study"]
