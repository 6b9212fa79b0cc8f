"""Training: the :class:`~.distiller.Distiller` estimator, its settings, the loop, the learning-rate schedule,
checkpoints, the teacher cache, intermediate-layer distillation and distributed runs. Training imports models,
losses and data; nothing below it imports training.
"""
