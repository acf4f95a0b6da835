"""One training loop (DDP, checkpoints, resume, early stopping) for pretraining and
fine-tuning, and the streaming of training batches from HDF5 shards."""
