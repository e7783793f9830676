"""CLEAR's released protocol on a tiny official-layout BAGEL folder: tags as plain text, the prompt and
system prompt tokenised as the release does, a restoration after a finished turn holding the text
`<image_restore>`, the turn framing, the re-tokenised turn, the turn limit, the readback and the VAE
posterior, and which folders speak which protocol.

The expected sequences are built by hand from the release's inferencer
(haoxiangzhao12138/CLEAR `inferencer.py`, `interleave_reason_tool_condition`): every text turn is
`<|im_start|>` + `tokenizer.encode(text)` + `<|im_end|>` (`Bagel.prepare_prompts`), the input image a
VAE block then a ViT block, each model turn generated after `<|im_start|>` up to `<|im_end|>`; a turn
holding `<answer>...</answer>` ends the answer, the third turn ends it, a turn holding `<image_restore>`
is cached again from its text and followed by the restoration and the next turn.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from clear_rl.errors import ClearRLError
from clear_rl.models.bagel import build_tiny_bagel, build_tiny_tokenizer, load_bagel_unified
from clear_rl.models.bagel.modeling import LatentSegment, TextSegment
from clear_rl.models.bagel.presets import RELEASE_SYSTEM_PROMPT
from clear_rl.models.chat import chat_settings_of
from clear_rl.models.io import load_unified
from clear_rl.models.readback import latents_to_images
from clear_rl.preflight import check_inputs
from clear_rl.rollout.answering import answer_batch
from clear_rl.rollout.interleaved import InterleavedGenerationConfig
from clear_rl.rollout.restoration import RestorationGuidance, RestorationSampling
from tests.conftest import make_images

QUESTION = "What is shown in the picture?"
THOUGHT_1 = "<think>The image is blurred.</think> <image_restore> "
THOUGHT_2 = "<think>The restored image is clear.</think><answer>A</answer>"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("bagel") / "CLEAR-RL"
    build_tiny_bagel(path, seed=0)
    return path


@pytest.fixture
def release(folder):
    """The tiny folder as a released checkpoint: no clear_rl_recipe.yaml, so the preset's text tags."""
    return load_bagel_unified(folder, device="cpu")


@pytest.fixture(scope="module")
def release_tokenizer():
    """The release's tokenizer: the folder's own, nothing added (BAGEL's add_special_tokens only finds
    the markers Qwen2.5 already has)."""
    return build_tiny_tokenizer()


def _ids(model):
    core = model.bagel.config
    return core.im_start_id, core.im_end_id, model.config.image_token_id


def scripted(model, scripts: list[list[int]]):
    """Make the decoder of `model` write `scripts` (one id list a row, the last for any further row;
    then `<|im_end|>`): each logit vector the decoder hands the loop is replaced by a one-hot of the
    row's next scripted id. The model's own forward passes run as always (framing, cache,
    restorations): only the choice is given."""
    model.decoder_class = scripted_decoder(type(model).decoder_class, scripts, model.bagel.config.im_end_id)
    return model.decoder_class


def scripted_decoder(base: type, scripts: list[list[int]], end: int) -> type:
    """`base` (a decoder class) writing `scripts`, as `scripted` describes."""

    class Scripted(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.position = [0] * self.batch
            self.real: list[torch.Tensor] = []  # the model's own logits after each step
            Scripted.last = self

        def _next(self, logits):
            out = torch.full_like(logits, -1e4)
            for row in range(self.batch):
                script = scripts[min(row, len(scripts) - 1)]
                out[row, script[self.position[row]] if self.position[row] < len(script) else end] = 1e4
            return out

        def prefill(self, input_ids, attention_mask):
            return self._next(super().prefill(input_ids, attention_mask))

        def step(self, tokens, active):
            logits = super().step(tokens, active)
            self.real.append(logits)
            for row in active.nonzero().squeeze(1).tolist():
                self.position[row] += 1
            return self._next(logits)

        def append_restored(self, rows, restored_latents):
            slot, logits = super().append_restored(rows, restored_latents)
            return slot, self._next(logits)

    return Scripted


def _answer(model, processor, n=1, restore="model", guidance=None, max_new_tokens=200, system=None, **config):
    """Answer `n` images with `model`'s own system prompt (or `system`), greedy, 2-step restorations."""
    cfg = InterleavedGenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, restore=restore,
        restoration=RestorationSampling(steps=2, guidance=guidance), **config,
    )  # fmt: skip
    return answer_batch(
        model, processor, make_images(n, size=36), [QUESTION] * n, cfg,
        system_prompt=system or chat_settings_of(model).system_prompt, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


def _texts(segments) -> list:
    return [s.input_ids.tolist() if isinstance(s, TextSegment) else type(s).__name__ for s in segments]


# -- the prompt -----------------------------------------------------------------------------------------
def test_a_released_folder_is_asked_with_the_releases_system_prompt_tokenised_as_the_release_does(
    release, release_tokenizer
):
    model, processor = release
    chat = chat_settings_of(model)
    assert chat.system_prompt == RELEASE_SYSTEM_PROMPT and "clear-release" in chat.source
    assert model.tags == "text" and model.turn_rules.max_turns == 3 and model.turn_rules.turn_tokens == 4095
    answered = _answer(model, processor, max_new_tokens=1)
    prompt = answered.prompt_ids[0][answered.prompt_mask[0].bool()].tolist()
    im_start, im_end, image = _ids(model)
    encode = release_tokenizer.encode
    expected = [
        im_start, *encode(RELEASE_SYSTEM_PROMPT), im_end,  # update_context_text(system_prompt)
        image,  # update_context_image: the VAE block, then the ViT block
        im_start, *encode(QUESTION), im_end,  # update_context_text(question)
        im_start,  # gen_text: prepare_start_tokens
    ]  # fmt: skip
    assert prompt == expected
    # The tags inside the prompt are several ordinary tokens each, as the release's tokenizer splits them.
    assert len(encode("<image_restore>")) > 1 and len(encode("<think>")) > 1


def test_the_system_prompt_is_the_releases_only_where_the_folder_records_none(folder, tmp_path):
    saved = tmp_path / "trained"
    saved.mkdir()
    for item in folder.iterdir():
        (saved / item.name).symlink_to(item)
    (saved / "clear_rl_recipe.yaml").write_text(
        "data:\n  system_prompt: Look first.\nmodel:\n  tags: tokens\n"
    )
    model, _ = load_unified(saved)
    assert chat_settings_of(model).system_prompt == "Look first." and model.tags == "tokens"
    upstream, _ = load_unified(folder, preset="bagel-upstream")
    assert chat_settings_of(upstream).system_prompt != RELEASE_SYSTEM_PROMPT  # ByteDance's has none


# -- restorations -----------------------------------------------------------------------------------------
def test_a_finished_turn_holding_the_text_tag_restores_and_the_next_turn_follows(release):
    model, processor = release
    im_start, im_end, _ = _ids(model)
    encode = model.tokenizer.encode
    turn_1, turn_2 = encode(THOUGHT_1), encode(THOUGHT_2)
    decoder = scripted(model, [[*turn_1, im_end, *turn_2, im_end]])
    answered = _answer(model, processor)
    out = answered.output
    assert out.restored.tolist() == [True]
    slot = model.num_restored_tokens
    pad = model.token_ids.restored_pad
    written = out.completion_ids[0][out.completion_mask[0].bool()].tolist()
    assert written == [*turn_1, im_end, *[pad] * slot, *turn_2, im_end]
    assert answered.texts[0] == THOUGHT_1 + THOUGHT_2  # the markers are special tokens, the tags text
    # The row's context, as the release caches it: the turn closed by <|im_end|>, the restoration as a
    # latent block (clear-release reads it back through 8-bit pixels and the VAE), the next turn opened.
    prompt = answered.prompt_ids[0][answered.prompt_mask[0].bool()].tolist()
    cut = prompt.index(model.config.image_token_id)
    assert _texts(decoder.last.main[0]) == [
        prompt[:cut], "LatentSegment", "VitSegment", [*prompt[cut + 1 :], *turn_1, im_end],
        "LatentSegment", [im_start, *turn_2, im_end],
    ]  # fmt: skip


def test_an_answer_ends_the_row_even_beside_the_tag(release):
    model, processor = release
    _, im_end, _ = _ids(model)
    turn = model.tokenizer.encode("<think>Blurred.</think><image_restore><answer>B</answer>")
    scripted(model, [[*turn, im_end, *model.tokenizer.encode("more"), im_end]])
    out = _answer(model, processor).output
    assert out.restored.tolist() == [False]
    assert out.completion_ids[0][out.completion_mask[0].bool()].tolist() == [*turn, im_end]


def test_three_turns_at_most_with_a_restoration_after_each_but_the_last(release):
    model, processor = release
    _, im_end, _ = _ids(model)
    turn = model.tokenizer.encode(THOUGHT_1)
    scripted(model, [[*turn, im_end] * 4])
    out = _answer(model, processor).output
    pad = model.token_ids.restored_pad
    written = out.completion_ids[0][out.completion_mask[0].bool()].tolist()
    slot = [pad] * model.num_restored_tokens
    # inter_num 1 and 2 restore; the third turn meets max_inter_num and the loop breaks.
    assert written == [*turn, im_end, *slot, *turn, im_end, *slot, *turn, im_end]


def test_a_turn_without_tag_or_answer_ends_the_row_and_a_long_turn_is_closed(release):
    model, processor = release
    _, im_end, _ = _ids(model)
    model.preset = replace(model.preset, turn_tokens=4)
    scripted(model, [model.tokenizer.encode("<image_restore> and on and on and on")])
    out = _answer(model, processor).output
    written = out.completion_ids[0][out.completion_mask[0].bool()].tolist()
    tag = model.tokenizer.encode("<image_restore>")
    # 4 written tokens, then the turn is closed; it holds no whole tag: the row ends.
    assert written == [*tag[:4], im_end] and not out.restored.any()


def test_a_turn_written_in_other_tokens_is_cached_re_tokenised(release, folder):
    """The release caches a restoring turn from its decoded text: written one character a token, the
    turn must condition the restoration and the next turn exactly as its canonical tokens do."""
    model, processor = release
    _, im_end, _ = _ids(model)
    tokenizer = model.tokenizer
    canonical = tokenizer.encode(THOUGHT_1)
    characters = [
        tokenizer.convert_tokens_to_ids(c) for c in "".join(tokenizer.convert_ids_to_tokens(canonical))
    ]
    assert tokenizer.decode(characters) == THOUGHT_1 and characters != canonical  # one byte-level token each
    after = tokenizer.encode("<think>ok")
    results = {}
    for name, turn in (("canonical", canonical), ("characters", characters)):
        model, processor = load_bagel_unified(folder, device="cpu")
        model.preset = replace(model.preset, readback="bridge", vae_posterior="mode")
        decoder = scripted(model, [[*turn, im_end, *after]])
        out = _answer(model, processor, max_new_tokens=len(turn) + 1 + len(after)).output
        steps = torch.stack(decoder.last.real[-len(after) :])  # the next turn, token by token
        results[name] = (out.restored_latents, steps, decoder.last.main[0])
    torch.testing.assert_close(results["characters"][0], results["canonical"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results["characters"][1], results["canonical"][1], atol=1e-4, rtol=0)
    assert _texts(results["characters"][2]) == _texts(results["canonical"][2])


def test_kv_cached_text_turns_equal_full_forwards(folder):
    outputs = []
    for use_cache in (True, False):
        model, processor = load_bagel_unified(folder, device="cpu")
        model.preset = replace(model.preset, vae_posterior="mode")
        _, im_end, _ = _ids(model)
        encode = model.tokenizer.encode
        characters = [model.tokenizer.convert_tokens_to_ids(c) for c in "<image_restore>"]  # re-tokenised
        answer = encode("<answer>A</answer>")
        scripted(model, [[*characters, im_end, *answer, im_end], [*encode("Blur.<image_restore>"), im_end]])
        # A short system prompt: full forwards recompute the whole sequence at every step.
        outputs.append(_answer(model, processor, n=2, use_cache=use_cache, system="Look.").output)
    cached, full = outputs
    assert torch.equal(cached.completion_ids, full.completion_ids) and cached.restored.all()
    torch.testing.assert_close(cached.restored_latents, full.restored_latents, atol=1e-5, rtol=0)


# -- the restoration's CFG contexts, turn by turn ---------------------------------------------------------
@pytest.mark.parametrize("contexts", ["drop-thought", "drop-tag"])
def test_guidance_contexts_follow_the_release_through_two_restorations(release, contexts):
    model, processor = release
    im_start, im_end, _ = _ids(model)
    encode = model.tokenizer.encode
    turn = encode(THOUGHT_1)
    scripted(model, [[*turn, im_end, *turn, im_end]])
    seen, prefill = [], model.bagel.prefill
    model.bagel.prefill = lambda samples, *a, **k: (seen.append(samples[0]), prefill(samples, *a, **k))[1]
    answered = _answer(model, processor, guidance=RestorationGuidance(contexts=contexts))
    prompt = answered.prompt_ids[0][answered.prompt_mask[0].bool()].tolist()
    cut = prompt.index(model.config.image_token_id)
    system, question = prompt[:cut], prompt[cut + 1 : -1]  # the question turn, without the next opener
    # consider_think=False: the turn's text with "<image_restore>" replaced by "", tokenised again.
    kept = encode(THOUGHT_1.replace("<image_restore>", ""))
    first_text = [system, "LatentSegment", "VitSegment", question]
    if contexts == "drop-tag":
        first_text[-1] = [*question, im_start, *kept, im_end]
    first_image = [[*system, *question, im_start, *turn, im_end]]
    # The second restoration: its text-unconditional context is everything before the second turn
    # (the first turn and the first read-back image included); the image-unconditional one every text
    # turn and the first read-back image, the input image left out (edit_cfg_img_context).
    second_text = [
        system,
        "LatentSegment",
        "VitSegment",
        [*question, im_start, *turn, im_end],
        "LatentSegment",
    ]
    if contexts == "drop-tag":
        second_text.append([im_start, *kept, im_end])
    second_image = [[*system, *question, im_start, *turn, im_end], "LatentSegment", [im_start, *turn, im_end]]
    assert [_texts(s) for s in seen] == [first_text, first_image, second_text, second_image]


# -- the restore policies ---------------------------------------------------------------------------------
def test_never_always_and_oracle_read_the_text_protocol(release, folder):
    model, processor = release
    im_start, im_end, _ = _ids(model)
    encode = model.tokenizer.encode
    tag, pad = encode("<image_restore>"), model.token_ids.restored_pad
    slot = [pad] * model.num_restored_tokens
    turn, answer = encode(THOUGHT_1), encode(THOUGHT_2)

    scripted(model, [[*turn, im_end, im_start, *answer, im_end]])  # the opener is forced, not chosen
    never = _answer(model, processor, restore="never").output
    # No restoration runs: the next turn opens with nothing read back.
    assert never.completion_ids[0].tolist() == [*turn, im_end, im_start, *answer, im_end]
    assert not never.restored.any()

    thought = encode("<think>Fine.</think>")
    scripted(model, [[*thought, *answer, im_end]])
    always = _answer(model, processor, restore="always").output
    # The tag goes in right after the first </think>, the turn closes, the restoration follows.
    assert always.completion_ids[0].tolist()[: len(thought) + len(tag) + 1 + len(slot)] == [
        *thought,
        *tag,
        im_end,
        *slot,
    ]
    assert always.restored.all()

    model, processor = load_bagel_unified(folder, device="cpu")
    scripted(model, [answer])
    image = make_images(1, size=36)
    with model.vae_view(processor.vae_size(image[0])):
        clean = torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(3))
    cfg = InterleavedGenerationConfig(max_new_tokens=60, do_sample=False, restore="oracle",
                                      restoration=RestorationSampling(steps=1))  # fmt: skip
    oracle = answer_batch(model, processor, image, [QUESTION], cfg, oracle_latents=clean).output
    # The first turn is the tag alone; the slot holds the given latent.
    assert oracle.completion_ids[0].tolist()[: len(tag) + 1 + len(slot)] == [*tag, im_end, *slot]
    torch.testing.assert_close(oracle.restored_latents, clean)


# -- readback and VAE posterior ---------------------------------------------------------------------------
def test_reencode_vae_reads_the_restoration_back_through_8_bit_pixels_and_the_vae(release):
    model, processor = release
    model.preset = replace(model.preset, vae_posterior="mode")
    _, im_end, _ = _ids(model)
    decoder = scripted(model, [[*model.tokenizer.encode(THOUGHT_1), im_end, im_end]])
    out = _answer(model, processor, readback="reencode-vae").output  # the preset's: eval's default
    block = next(s for s in decoder.last.main[0][3:] if isinstance(s, LatentSegment))
    # inferencer.decode_image (truncating to uint8), vae_transform.resize_transform, the VAE encode
    image = latents_to_images(model, out.restored_latents, truncate=True)[0]
    pixels = model.preset.vae(image)[None]
    expected = model.bagel.encode_latents(pixels)[0].float()  # BagelConfig.vae_encode: the mode
    torch.testing.assert_close(block.latents, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(block.latents, out.restored_latents[0], atol=1e-3)  # not the bridge's latent


def test_the_vae_posterior_is_sampled_with_the_rollouts_generator(release):
    model, _ = release
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    first = model.encode_view(pixels, torch.Generator().manual_seed(1))
    again = model.encode_view(pixels, torch.Generator().manual_seed(1))
    other = model.encode_view(pixels, torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.allclose(first, other)
    model.preset = replace(model.preset, vae_posterior="mode")
    torch.testing.assert_close(model.encode_view(pixels), model.bagel.encode_latents(pixels))


# -- which folders speak which protocol -------------------------------------------------------------------
def test_folders_say_which_protocol_they_speak(folder, tmp_path):
    from clear_rl.models.chat import saved_tags

    assert saved_tags(folder)[0] is None  # BAGEL-7B-MoT, CLEAR's checkpoints: the preset's (text)
    model, _ = load_bagel_unified(folder, device="cpu", tags="tokens")
    assert model.token_ids.tags_are_tokens and model.turn_rules is None
    saved = tmp_path / "clear-rl-trained"
    model.save_pretrained(saved)  # a model clear-rl trained: its tokenizer holds the tags
    assert saved_tags(saved)[0] == "tokens"
    assert load_bagel_unified(saved, device="cpu")[0].tags == "tokens"
    with pytest.raises(ClearRLError, match="tags='tokens'"):
        load_bagel_unified(saved, device="cpu", tags="text")


# -- training -----------------------------------------------------------------------------------------------
def test_training_a_model_whose_tags_are_text_is_refused_before_anything_is_written(folder, tmp_path, capsys):
    """clear-rl trains its single-token protocol only: a released checkpoint (no record, the preset's text
    tags) is refused by the preflight, naming why and what to set; tags: tokens (SFT from the base) or a
    folder clear-rl trained passes."""
    import datasets

    from clear_rl.cli import main
    from clear_rl.recipe import load_recipe
    from tests.prepared import prepared_dataset

    data = tmp_path / "prepared"
    datasets.DatasetDict({"train": prepared_dataset(2)}).save_to_disk(str(data))
    recipes = Path(__file__).resolve().parents[1] / "recipes" / "bagel_7b_mot"
    out = tmp_path / "grpo"
    args = [f"model.path={folder}", f"data.path={data}", f"training.output_dir={out}"]
    assert main(["train", str(recipes / "grpo-release.yaml"), *args]) == 2
    error = capsys.readouterr().err
    assert "reads the protocol tags as plain text" in error and "preset clear-release" in error
    assert "set model.tags: tokens" in error and not out.exists()  # refused before anything is written
    load_recipe(recipes / "grpo-release.yaml", [*args, "model.tags=tokens"], check_inputs=check_inputs)
    load_recipe(recipes / "sft-release.yaml", args, check_inputs=check_inputs)  # its own tags: tokens
    trained = tmp_path / "trained"
    trained.mkdir()
    for item in folder.iterdir():
        (trained / item.name).symlink_to(item)
    (trained / "clear_rl_recipe.yaml").write_text("stage: sft\nmodel:\n  tags: tokens\n")
    load_recipe(
        recipes / "grpo-release.yaml", [f"model.path={trained}", *args[1:]], check_inputs=check_inputs
    )
    with pytest.raises(ClearRLError, match="model.tags"):
        load_recipe(recipes / "sft-release.yaml", [*args, "model.tags=text"], check_inputs=check_inputs)
