"""The shared training loop's gradient accumulation: groups close at every epoch's end, and a
step is the mean gradient of its group's batches."""

import numpy as np
import torch

from distill.pipeline.loop import Loop, make_accelerator, prepare
from distill.pipeline.methods import MethodOutput


class Rows:
    """A batch of the loop's protocol: inputs, targets, sample ids and weights."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, first_id: int):
        self.x, self.y = x, y
        self.sample_ids = np.arange(first_id, first_id + len(x))
        self.weights = torch.ones(len(x))


def _mse(model, batch: Rows, device) -> MethodOutput:
    return MethodOutput(((model(batch.x).squeeze(-1) - batch.y) ** 2).mean())


def _train(batches: list[list[Rows]], accumulation: int, epochs: int = 2):
    """A linear model trained with plain SGD over the same batches every epoch."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    accelerator = make_accelerator("no")
    per_epoch = -(-len(batches) // accumulation)
    model, optimizer, scheduler = prepare(accelerator, model, torch.optim.SGD(model.parameters(), lr=0.1),
                                          lambda step: 1.0)
    loop = Loop(accelerator, model, optimizer, scheduler, epochs, per_epoch * epochs,
                batches=lambda epoch, first: [Rows(torch.cat([r.x for r in group]),
                                                   torch.cat([r.y for r in group]), group[0].sample_ids[0])
                                              for group in batches[first:]],
                loss=_mse, accumulation=accumulation, epoch_batches=lambda epoch: len(batches))
    cursor = loop.run()
    return accelerator.unwrap_model(model), cursor


def test_accumulated_steps_are_the_mean_gradient_of_each_group_and_close_at_the_epoch_end():
    generator = torch.Generator().manual_seed(1)
    parts = [Rows(torch.randn(4, 3, generator=generator), torch.randn(4, generator=generator), 4 * i)
             for i in range(5)]
    accumulated, cursor = _train([[p] for p in parts], accumulation=2)
    assert cursor.step == 2 * 3   # ceil(5 / 2) steps per epoch: the 5th batch closes its own group
    merged, reference = _train([parts[0:2], parts[2:4], parts[4:5]], accumulation=1)
    assert reference.step == cursor.step
    for a, b in zip(accumulated.parameters(), merged.parameters()):
        torch.testing.assert_close(a, b)   # equal-size batches: the mean over a group = one batch


def test_one_process_can_train_again_with_another_mixed_precision():
    """accelerate fixes its state per process; a second run in one Python session (a notebook)
    with another precision gets it instead of "restart your runtime"."""
    assert make_accelerator("no").mixed_precision == "no"
    try:
        assert make_accelerator("bf16").mixed_precision == "bf16"
    finally:
        assert make_accelerator("no").mixed_precision == "no"
