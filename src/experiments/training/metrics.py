"""The names of the per-epoch metrics, defined once: the trainer writes them, checks, tables,
plots and loggers read them."""

TRAIN_LOSS, TRAIN_ACC, TRAIN_LR, TRAIN_BATCH_SIZE = "train/loss", "train/acc", "train/lr", "train/batch_size"
EPOCH_S, IMAGES_PER_S = "time/epoch_s", "time/images_per_s"
VAL_LOSS, VAL_ACC = "val/loss", "val/acc"

# the validation metrics that select a model, stop early or drive ReduceLROnPlateau, and the
# direction in which each gets better
METRIC_MODES = {VAL_ACC: "max", VAL_LOSS: "min"}
VAL_METRICS = tuple(METRIC_MODES)

EPOCH_METRICS = (TRAIN_LOSS, TRAIN_ACC, TRAIN_LR, TRAIN_BATCH_SIZE, EPOCH_S, IMAGES_PER_S,
                 VAL_LOSS, VAL_ACC)
