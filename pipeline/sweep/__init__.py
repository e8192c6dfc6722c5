"""Ray Tune sweeps over the paper's axes: ``space`` (the search space as flat config overrides), ``run`` (the Tune
driver: each trial a ``pipeline.training.fit`` run, ASHA, nested MLflow runs, resume) and ``report`` (the trial
table, the comparison plot and what the parent MLflow run gets). May import everything below it.
"""
