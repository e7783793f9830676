"""The rollout: what happens between a prompt and a scored completion, for every backbone.

Evaluation, probe labelling and stage-3 training all roll out the same way; read top to bottom:

1. Prompt (`answering.py`): `answer_batch` renders the chat prompts, encodes them with the
   degraded images (left-padded) and prepares the VAE's view of the images.
2. Decode (`interleaved.py`): `generate_interleaved` writes each row token by token under the
   restore policy (`InterleavedGenerationConfig`), KV-cached. The loop is the same for every
   backbone; the model calls are its decoder's (`model.decoder_class`, models/backbone.py), and
   how a row asks for a restoration (one `<image_restore>` token, or the release's text turns) is
   `models/turns.py`'s.
3. Restore (`restoration.py`): a row that asks gets a latent denoised by the restoration head,
   conditioned on its context so far (`restore_latents`: the ODE, or Flow-GRPO's SDE keeping
   per-step log-probs; the flow steps themselves are `clear_rl/flow.py`'s). `RestorationSampling`
   is the one description of how, shared with stage 2.
4. Read back: the decoder appends the restored latent to the row's context; what fills the slot
   (the bridge's embeddings, or the VLM's own vision tokens of the decoded latent) is the
   `readback` setting (models/readback.py).
5. Completion: the row writes text again until `</answer>`, EOS or its budget; `InterleavedOutput`
   holds the ids, the masks (placeholders are not model-written), the restorations and their
   trajectories, and `answer_batch` decodes the texts.
6. Rewards: stage 3 (trainers/grpo.py) hands the completions, `restored` and the latents to the
   recipe's reward functions (`clear_rl/rewards/`); evaluation scores the answers (eval/).
"""
