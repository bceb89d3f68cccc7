"""A standby's rehearsal reload: zeros in the checkpoint's names, dtypes and shapes, through the
same reload call a pull uses, reading no tensor from the files."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from services.common.model import ensure_default_model
from services.worker.weights import checkpoint
from services.worker.weights.engine_side import warm_reload


class _Runner:
    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[str, torch.Tensor]], bool]] = []

    def reload_weights(self, weights_iterator, is_checkpoint_format):
        self.calls.append(([(name, t.clone()) for name, t in weights_iterator], is_checkpoint_format))


def test_rehearsal_feeds_every_tensor_as_zeros_of_its_shape_and_dtype():
    model_dir = ensure_default_model()
    runner = _Runner()
    report = warm_reload(SimpleNamespace(model_runner=runner), str(model_dir))
    assert report["seconds"] >= 0 and report["minor_faults"] >= 0
    [(tensors, is_checkpoint_format)] = runner.calls
    assert is_checkpoint_format is True
    index = checkpoint.read_index(model_dir)
    assert [name for name, _ in tensors] == [t.name for t in index]
    dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    for (_, tensor), info in zip(tensors, index):
        assert tuple(tensor.shape) == info.shape and tensor.dtype == dtypes[info.dtype]
        assert not tensor.any()
