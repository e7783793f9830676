"""The same-work rule of sharded training (models/same_work.py), checked in one process.

Under FSDP2 and ZeRO-3 the ranks must run the same modules in the same order, and the same module
outputs must receive gradients (DeepSpeed compares this trace across ranks and stops when it
differs). `module_trace` records exactly that, so a batch whose rows restore and one whose rows do
not must leave the same trace once `same_work` is on, while computing what they compute without it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from clear_rl.data.collate import ClearCollator
from clear_rl.models import build_tiny_model
from clear_rl.models.same_work import SameWork
from clear_rl.trainers.losses import loss_terms
from clear_rl.trainers.sharding import _DropIdleGradients
from tests.prepared import SMALL, prepared_rows

RESTORING, DIRECT = [0, 2], [1, 3]  # prepared rows alternate restore / direct


@pytest.fixture(scope="module")
def setup():
    model, processor = build_tiny_model(SMALL, seed=0)
    rows = prepared_rows(4)
    collate = ClearCollator.for_model(model, processor, system_prompt=None)
    return model, {
        name: collate([rows[i] for i in which])
        for name, which in (("restoring", RESTORING), ("direct", DIRECT))
    }


def _outputs(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _outputs(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _outputs(item)


def module_trace(model, step) -> list[str]:
    """Every module call ("F name") and every gradient reaching one of its outputs ("B name"), in
    order: what DeepSpeed ZeRO-3 requires to be the same on every rank."""
    trace, handles = [], []

    def called(module, args, name):
        trace.append(f"F {name}")

    def returned(module, args, output, name):
        for tensor in _outputs(output):
            if tensor.requires_grad:
                tensor.register_hook(lambda grad, name=name: trace.append(f"B {name}"))

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: called(m, a, name)))
        handles.append(module.register_forward_hook(lambda m, a, o, name=name: returned(m, a, o, name)))
    try:
        step()
    finally:
        for handle in handles:
            handle.remove()
    return trace


def _sft_step(model, batch):
    """Stage 1's loss (CE + flow MSE + distill) on `batch`, backward included; returns the terms."""
    model.zero_grad(set_to_none=True)
    generator = torch.Generator().manual_seed(0)

    def step(m, forward, b):
        return vars(loss_terms(m, forward, b, generator, with_mse=True, with_distill=True))

    terms = model(clear_step=step, **batch)
    loss = terms["ce_sum"] + sum(terms[k] for k in ("mse", "distill") if terms[k] is not None)
    loss.backward()
    return terms


def test_a_rank_without_restoring_rows_runs_and_trains_what_a_restoring_rank_does(setup):
    model, batches = setup
    model.same_work = SameWork()
    try:
        restoring = module_trace(model, lambda: _sft_step(model, batches["restoring"]))
        direct = module_trace(model, lambda: _sft_step(model, batches["direct"]))
        assert direct == restoring
        # Every parameter of the idle parts has a gradient (zero) for FSDP2's reduce-scatter.
        for part in (model.latent_bridge, model.restoration_head):
            for name, parameter in part.named_parameters():
                assert parameter.grad is not None and not parameter.grad.any(), name
        assert model.same_work.ran == {"bridge", "head"}  # from the restoring batch only
    finally:
        model.same_work = None


def test_idle_work_changes_no_value_and_unsharded_runs_skip_it(setup):
    model, batches = setup
    plain = _sft_step(model, batches["direct"])
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    idle_parts = ("latent_bridge.", "restoration_head.")
    assert not any(n.startswith(idle_parts) for n in plain_grads)  # no same_work: the parts stay out
    model.same_work = SameWork()
    try:
        idle = _sft_step(model, batches["direct"])
    finally:
        model.same_work = None
    assert torch.equal(idle["ce_sum"], plain["ce_sum"]) and idle["restore_rows"] == 0
    assert float(idle["mse"].detach()) == 0.0 and float(idle["distill"].detach()) == 0.0  # weight zero
    for name, grad in plain_grads.items():
        assert torch.equal(model.get_parameter(name).grad, grad), name


def test_the_rollout_scoring_forward_runs_the_head_in_a_chunk_that_does_not_restore(setup):
    model, batches = setup
    batch = batches["direct"]
    ids = batch["input_ids"]
    latents = torch.zeros(ids.shape[0], 1, *model.latent_shape)
    flow = {
        "flow_latents": latents, "flow_timesteps": torch.full((ids.shape[0], 1), 0.5),
        "degraded_latents": latents[:, 0], "restored_latents": latents[:, 0],
    }  # fmt: skip

    def score(rows):
        def step():
            out = model(input_ids=ids, attention_mask=batch["attention_mask"],
                        pixel_values=batch["pixel_values"], flow_rows=rows, **flow)  # fmt: skip
            (out.logits.sum() + out["flow_velocity"].sum()).backward()
            assert not out["flow_velocity"][~rows].any()

        return module_trace(model, step)

    model.same_work = SameWork()
    try:
        assert score(torch.tensor([False, False])) == score(torch.tensor([True, False]))
    finally:
        model.same_work = None


def test_parts_no_rank_ran_lose_their_zero_gradients_before_the_optimizer_step(setup):
    model, batches = setup
    model.same_work = SameWork()
    try:
        _sft_step(model, batches["direct"])
        trainer = SimpleNamespace(
            model=model, is_deepspeed_enabled=False,
            accelerator=SimpleNamespace(device=torch.device("cpu"), num_processes=1),
        )  # fmt: skip
        model.same_work.ran.add("head")  # as if a real head pass had run before this step
        _DropIdleGradients(trainer).on_pre_optimizer_step(None, None, None)
        assert all(p.grad is None for p in model.latent_bridge.parameters())  # idle everywhere: dropped
        assert all(p.grad is not None for p in model.restoration_head.parameters())  # ran: kept
        assert not model.same_work.ran  # counted afresh for the next step
    finally:
        model.same_work = None


def test_the_bridge_mixer_starts_as_torch_s_encoder_copies_and_computes_the_same():
    from clear_rl.models.bridge import Mixer

    torch.manual_seed(0)
    mixer = Mixer(32, 4, 3)
    after_mixer = torch.rand(1)
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(
        32, 4, dim_feedforward=128, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    encoder = torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    assert torch.equal(torch.rand(1), after_mixer)  # the same random draws after it
    assert list(mixer.state_dict()) == list(encoder.state_dict())  # checkpoints keep their keys
    for name, value in encoder.state_dict().items():
        assert torch.equal(mixer.state_dict()[name], value), name
    tokens = torch.randn(2, 9, 32)
    for mode in (True, False):
        assert torch.equal(mixer.train(mode)(tokens), encoder.train(mode)(tokens))


def test_bridge_stage_on_rows_that_never_restore_runs_and_leaves_the_bridge_alone(tmp_path):
    # Without restore_rows_only a batch may hold no restoring row; the bridge-only stage 2 then has
    # no gradient at all (a crash before the rule). Now the idle bridge keeps it in the loss and,
    # no row having restored, the optimizer leaves it as it was.
    import datasets
    import yaml

    from clear_rl.models.io import load_unified, save_unified
    from clear_rl.recipe import load_recipe, stage_module
    from tests.prepared import prepared_dataset

    model, processor = build_tiny_model(SMALL, seed=0)
    save_unified(model, processor, tmp_path / "model")
    direct = prepared_dataset(4).select(DIRECT)
    datasets.DatasetDict({"train": direct}).save_to_disk(str(tmp_path / "data"))
    recipe = {
        "stage": "bridge",
        "model": {"path": str(tmp_path / "model"), "trainable_parts": ["bridge"]},
        "data": {"path": str(tmp_path / "data")},
        "training": {
            "output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 2,
            "restore_rows_only": False, "restoration_steps": 2, "learning_rate": 1e-2,
            "report_to": "none", "save_strategy": "no", "use_cpu": True, "disable_tqdm": True,
        },
    }  # fmt: skip
    (tmp_path / "bridge.yaml").write_text(yaml.safe_dump(recipe))
    stage_module("bridge").train(load_recipe(str(tmp_path / "bridge.yaml")))
    after, _ = load_unified(tmp_path / "out")
    for name, value in model.latent_bridge.state_dict().items():
        assert torch.equal(after.latent_bridge.state_dict()[name], value), name


def test_when_no_rank_restores_nothing_idle_runs(setup):
    # `active` is decided by all ranks per batch: with no restoring row anywhere, no rank runs the
    # bridge or the head for real, so none runs them idle either (the rule then costs nothing).
    model, batches = setup
    plain = module_trace(model, lambda: _sft_step(model, batches["direct"]))
    model.same_work = SameWork(active=False)
    try:
        quiet = module_trace(model, lambda: _sft_step(model, batches["direct"]))
        assert quiet == plain
        assert all(p.grad is None for p in model.latent_bridge.parameters())
    finally:
        model.same_work = None
