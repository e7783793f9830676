"""GRPO's prompts: prepared rows as TRL's conversational prompts, and the image TRL put into one."""

from __future__ import annotations

from clear_rl.data.prompts import format_question, row_options


def prompt_image(prompt: list[dict]):
    """The image TRL inserted into a conversational prompt (`{"type": "image", "image": ...}`)."""
    images = [
        block["image"]
        for message in prompt
        if isinstance(message.get("content"), list)
        for block in message["content"]
        if block.get("type") == "image" and block.get("image") is not None
    ]
    if len(images) != 1:
        raise ValueError(
            f"a GRPO prompt carries one image (the dataset's `image`), this one has {len(images)}"
        )
    return images[0]


def to_grpo_dataset(prepared, system_prompt: str | None):
    """Prepared rows -> TRL's conversational prompts (the image is inserted by TRL from `image`).

    The prompts are added as an in-memory column: `Dataset.map` would write `cache-*.arrow` files
    into the prepared dataset's own folder.
    """
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    options = [c for c in prepared.column_names if c == "options" or (len(c) == 1 and c.isupper())]
    text = prepared.select_columns(["question", *options])
    prompts = [
        [*system, {"role": "user", "content": format_question(row["question"], row_options(row))}]
        for row in text
    ]
    return prepared.add_column("prompt", prompts)
