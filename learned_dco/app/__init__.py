"""The application wing: everything that touches files, the terminal or the clock.

* :mod:`learned_dco.app.coercion` -- YAML -> typed values (the strict coercion engine)
* :mod:`learned_dco.app.config` -- the run-config schema, resolved config, builders, random streams
* :mod:`learned_dco.app.components` -- sections naming a registered class, parsed once into its value
* :mod:`learned_dco.app.overrides` -- ``--set KEY=VALUE`` by dotted key
* :mod:`learned_dco.app.resources` -- memory estimate and the sizes a machine refuses
* :mod:`learned_dco.app.shipped` -- the configs shipped in ``learned_dco/configs/``, by name
* :mod:`learned_dco.app.rundir` -- the file names of a run directory and its error
* :mod:`learned_dco.app.runs` -- run directories, checkpoints, the I/O loop around ``MetaTrainer``
* :mod:`learned_dco.app.cards` -- a finished run shipped as a pretrained optimizer card
* :mod:`learned_dco.app.report` -- ``learned-dco eval``: tuned baselines, curves, report
* :mod:`learned_dco.app.cli` -- the ``learned-dco`` command
* :mod:`learned_dco.app.exits` -- its exit statuses and the exception -> status mapping
* :mod:`learned_dco.app.launch` -- multi-process options, heartbeats and shutdown
* :mod:`learned_dco.app.xla` -- the XLA flags the command line adds before JAX starts

The library below (``learned_dco.meta``, ``optimizers``, ``tasks``, ``qp``) never imports
from here; submodules are imported on use so ``learned-dco --help`` stays fast.
"""
