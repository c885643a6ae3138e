"""The metrics the trainer records every epoch, named once: the trainer writes them (metrics.csv
columns, TensorBoard tags, W&B keys), the config checks and the sweep report read them.

tests/test_names.py fails when the trainer logs a name that is not here, or in another order.
"""

EPOCH = "epoch"  # metrics.csv's first column and every logger's step (1, 2, ...)

TRAIN_LOSS = "train/loss"  # the epoch's mean loss per image (steps with a NaN/inf loss left out)
TRAIN_ACC = "train/acc"  # under MixUp/CutMix: against each mixed target's dominant label
LR = "train/lr"  # the largest group learning rate at the epoch's start (optim.lr, scheduled)
BATCH_SIZE = "train/batch_size"  # changes with trainer.batch_schedule
EPOCH_S = "time/epoch_s"  # the epoch's training time (validation excluded), GPU synchronized
IMAGES_PER_S = "time/images_per_s"  # training images per second over that time
VAL_LOSS = "val/loss"  # only with a validation split (data.val_size > 0)
VAL_ACC = "val/acc"  # (both with the EMA weights when trainer.ema_decay is set)

VAL_PREFIX = "val/"  # a validation metric is VAL_PREFIX + the name `Trainer.evaluate` returns

# in metrics.csv's column order (after EPOCH)
EPOCH_METRICS = (TRAIN_LOSS, TRAIN_ACC, LR, BATCH_SIZE, EPOCH_S, IMAGES_PER_S, VAL_LOSS, VAL_ACC)
ACCURACIES = (TRAIN_ACC, VAL_ACC)  # fractions (0-1), as every accuracy of the project

# what model selection, early stopping and ReduceLROnPlateau may watch, and which way is better
METRIC_MODES = {VAL_ACC: "max", VAL_LOSS: "min"}
VAL_METRICS = tuple(METRIC_MODES)
