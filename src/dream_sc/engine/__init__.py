"""The fit engine: one configuration, the SVI loop, chunking, memory planning, checkpoints, backends.

Three layers make up the package: :mod:`dream_sc.models` holds the maths (Pyro models, guides,
likelihoods; pure torch), this engine runs any step's problem (:mod:`~dream_sc.engine.config`
the frozen :class:`~dream_sc.engine.config.FitConfig` of a fit, :mod:`~dream_sc.engine.svi`
the SVI loop and its checkpoints, :mod:`~dream_sc.engine.chunks` feature chunks and their
checkpoint files, :mod:`~dream_sc.engine.memory` memory probing and planning,
:mod:`~dream_sc.engine.backends` where chunks run), and :mod:`dream_sc.tl` prepares each
step's job, runs it here and hands the result to a store.
"""
