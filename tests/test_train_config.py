"""ddpm.train_config: TrainConfig's checks name every bad setting."""

from __future__ import annotations

import pytest

from ddpm.train_config import TrainConfig


@pytest.mark.parametrize("kw", [dict(steps=0), dict(batch_size=-1), dict(precision="fp16"), dict(lr_schedule="step"),
                                dict(label_dropout=1.0), dict(ema_decay=1.0), dict(lr=0.0), dict(grad_accum=0),
                                dict(decay_steps=-1), dict(steps=10, decay_steps=11), dict(decay_steps=2.5)])
def test_bad_train_config(kw):
    with pytest.raises(ValueError):
        TrainConfig(**kw).validate()
