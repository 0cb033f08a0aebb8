"""tt_dist: distributed training on top of torch.distributed.

Process-group setup from the torchrun environment, FSDP2 sharding per transformer block,
CPU offload, activation checkpointing and activation offloading. Depends on torch only.
"""
