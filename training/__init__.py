"""PyTorch side of imagegen: data readers (data), models, losses, distribution (dist), checkpoints, the training
loop (loop.train with a frozen config.TrainConfig) and sampling. Never imports `pipelines` or pyspark."""
