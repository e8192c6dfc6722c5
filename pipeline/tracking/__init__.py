"""MLflow: where runs go and how they are resumed (``runs``, with the rank-zero ``RankZeroRun`` logger), what a run
logs (``artifacts``: plots, heat maps, the submission file, the model), the model registry and its champion rule
(``registry``), and the registered model itself, an MLflow pyfunc from videos to class scores (``serving``).
May import everything below it: storage, schema, video, data, clips, config, evaluation, ``stpa_model``.
"""
