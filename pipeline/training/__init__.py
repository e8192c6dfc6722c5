"""Training with Ray Train: ``loop`` is the one visible loop run by each worker (``train_loop_per_worker``), ``fit``
the driver that starts a ``TorchTrainer``, ``ray_hooks`` the parts that subclass Ray types (batch collate, the
MLflow epoch logger), ``optim`` optimiser and schedule, ``checkpoint`` saving and resuming, ``weights`` pretrained
backbone weights from any URI. May import everything below it (up to ``pipeline.tracking``); never ``sweep``.
"""
