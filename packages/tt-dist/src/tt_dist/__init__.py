"""tt_dist: distributed training on top of torch.distributed.

Process-group setup from the torchrun environment, FSDP2 sharding per transformer block,
CPU offload, activation checkpointing and activation offloading. Depends on torch only.
"""

from tt_dist.memory import (
    ActivationOffloader,
    OptimizerInBackward,
    activation_offloading,
    apply_activation_checkpointing,
    optimizer_in_backward,
)
from tt_dist.process_group import (
    DistInfo,
    barrier,
    destroy_distributed,
    full_value,
    get_device,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_rank_zero,
    max_over_ranks,
    rank_zero_log,
    rank_zero_print,
    sum_over_ranks,
)
from tt_dist.sharding import block_predicate, find_blocks, shard_model, unsharded
from tt_dist.state import (
    TrainedModel,
    UnsafeCheckpointError,
    gather_full_state_dict,
    load_distributed_state,
    load_full_state_dict,
    save_distributed_state,
)

__all__ = [
    "ActivationOffloader",
    "DistInfo",
    "TrainedModel",
    "barrier",
    "full_value",
    "is_distributed",
    "max_over_ranks",
    "sum_over_ranks",
    "OptimizerInBackward",
    "activation_offloading",
    "apply_activation_checkpointing",
    "block_predicate",
    "destroy_distributed",
    "find_blocks",
    "gather_full_state_dict",
    "get_device",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_rank_zero",
    "load_distributed_state",
    "load_full_state_dict",
    "optimizer_in_backward",
    "rank_zero_log",
    "rank_zero_print",
    "save_distributed_state",
    "shard_model",
    "unsharded",
    "UnsafeCheckpointError",
]
