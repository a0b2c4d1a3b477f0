"""Test-only: lets accelerate run FSDP on a CPU, so the lab's FSDP path runs in `make test` (tests/test_train.py).

accelerate 1.15 turns FSDP on only for GPU-like distributed types (`AcceleratorState.__init__`); a 2-process CPU run
(gloo, `use_cpu: true`) becomes MULTI_CPU and would train unsharded. torch's FSDP2 (`fully_shard`) itself runs on a CPU
with gloo, so after accelerate's own set-up this switches such a run to FSDP with the plugin accelerate built from the
config's FSDP_* variables. Everything after that (accelerate's FSDP2 preparation, TRL, the lab's training, its
all-rank save with FULL_STATE_DICT, resuming from a sharded checkpoint) is the code a multi-GPU run executes. Active
only with LAB_FSDP_ON_CPU=1 and this folder on PYTHONPATH: no user run imports it.
"""

import os

if os.environ.get("LAB_FSDP_ON_CPU") == "1":
    import accelerate.state
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    _init = accelerate.state.AcceleratorState.__init__
    _said: list[bool] = []

    def _init_with_fsdp_on_cpu(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        _init(self, *args, **kwargs)
        wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if wants_fsdp and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()
            if not _said:  # accelerate may set its state up more than once per process
                _said.append(True)
                print("tests/fsdp_cpu: FSDP on a 2-process CPU run (gloo)", flush=True)

    accelerate.state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu
