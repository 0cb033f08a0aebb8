"""Generate text from a checkpoint: plain prompt or chat messages, streamed, with tokens/s.

tt run generate --config tiny/generate
tt run generate --config tiny/generate prompt="What is 3 + 4?" temperature=0.8 top_k=50
"""

from __future__ import annotations

import logging
import sys
import time

import torch
import tt_dist
from omegaconf import DictConfig, OmegaConf
from tt_data import Message
from tt_models import generate_stream

from tt_recipes import console, training, vision
from tt_recipes.config import DEVICE_KEY, DTYPES, LOG_LEVEL_KEY, ConfigKey, RecipeSpec, instantiate
from tt_recipes.pretrained import from_pretrained

log = logging.getLogger("tt")

SPEC = RecipeSpec(
    name="generate",
    description="Sample text from a checkpoint (plain prompt or chat messages), streamed.",
    keys={
        "checkpoint_dir": ConfigKey(str, required=True, doc="HF model dir or a tt run's output"),
        "tokenizer": ConfigKey(component=True, required=True),
        "prompt": ConfigKey(
            str | list, required=True, doc="text, or a list of {role, content} chat messages"
        ),
        "image": ConfigKey(
            str | list | None,
            default=None,
            doc="image file(s) put before a text prompt in its user turn (a vision model)",
        ),
        "chat": ConfigKey(
            bool, default=True, doc="format a text prompt as a user turn with the chat template"
        ),
        "max_new_tokens": ConfigKey(int, default=128, min=1),
        "temperature": ConfigKey(float, default=0.0, min=0, doc="0 = greedy"),
        "top_k": ConfigKey(int | None, default=None, min=1),
        "top_p": ConfigKey(float | None, default=None, min=0),
        "seed": ConfigKey(int | None, default=0),
        "dtype": ConfigKey(str, default="fp32", choices=DTYPES),
        "device": DEVICE_KEY,
        "log_level": LOG_LEVEL_KEY,
    },
)


def recipe_main(cfg: DictConfig) -> None:
    console.setup_logging(cfg.log_level)
    device = tt_dist.get_device(cfg.device)
    model = from_pretrained(
        training.resolve_checkpoint_dir(cfg.checkpoint_dir), dtype=cfg.dtype, device=device
    )
    tokenizer = instantiate(cfg.tokenizer)
    values = OmegaConf.to_container(cfg, resolve=True)
    messages = prompt_messages(values["prompt"], values["image"])
    prompt = prompt_tokens(tokenizer, messages, cfg.chat)
    images = (
        None
        if isinstance(messages, str)
        else vision.prompt_images(model, tokenizer, prompt, messages)
    )
    log.info(f"Prompt ({len(prompt)} tokens): {tokenizer.decode(prompt)!r}")

    start = time.perf_counter()
    generated: list[int] = []
    printed = ""
    with torch.no_grad():
        for token in generate_stream(
            model,
            prompt,
            cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            stop_tokens=tokenizer.stop_tokens,
            seed=cfg.seed,
            images=images,
        ):
            generated.append(token)
            if token in tokenizer.stop_tokens:
                break
            # Decode the whole continuation each time: a character may span several tokens.
            text = tokenizer.decode(generated)
            sys.stdout.write(text[len(printed) :])
            sys.stdout.flush()
            printed = text
    elapsed = time.perf_counter() - start
    sys.stdout.write("\n")
    log.info(
        f"{len(generated)} tokens in {elapsed:.2f} s ({len(generated) / elapsed:.1f} tokens/s)"
    )


def prompt_messages(prompt: str | list, image: str | list | None) -> str | list[Message]:
    """Chat messages of a text prompt (the images first in its user turn) or of a list of
    ``{role, content}`` dicts (content: text, or text and image parts)."""
    images = [image] if isinstance(image, str) else list(image or [])
    if isinstance(prompt, str):
        if not images:
            return prompt
        parts = [
            *({"type": "image", "image": path} for path in images),
            {"type": "text", "text": prompt},
        ]
        return [Message(role="user", content=parts)]
    if images:
        raise ValueError(
            "image is for a text prompt; with chat messages put {type: image, image: PATH} "
            "parts in a message's content instead"
        )
    messages = []
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(
                f"prompt[{i}] = {message!r}: each chat message needs exactly the keys "
                "'role' and 'content'"
            )
        messages.append(Message(role=message["role"], content=message["content"]))
    return messages


def prompt_tokens(tokenizer, prompt: str | list[Message], chat: bool) -> list[int]:
    """Token ids for a text prompt (chat-formatted when ``chat``) or a list of messages."""
    if isinstance(prompt, str) and not chat:
        return tokenizer.encode(prompt, add_bos=True, add_eos=False)
    if isinstance(prompt, str):
        prompt = [Message(role="user", content=prompt)]
    tokens, _ = tokenizer.tokenize_messages(prompt, add_generation_prompt=True)
    return tokens
