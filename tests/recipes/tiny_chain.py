"""What the tiny chain's test and its spread benchmark (bench/tiny_chain_spread.py) share."""

from __future__ import annotations

from pathlib import Path

# tiny/qat's comparison: the same fine-tuning (data, lr, steps) without fake quantization,
# then quantized to 2 bits afterwards (post-training quantization).
QAT_COMPARISON = {
    "plain": [
        "output_dir=./outputs/tiny_plain",
        "checkpointer.checkpoint_dir=./outputs/tiny_full",
        "~model",
        "epochs=1",
        "dataset.n=4800",
        "dataset.seed=2",
        "optimizer.lr=1e-3",
        "optimizer.weight_decay=0",
    ],
    "ptq": [
        "checkpoint_dir=./outputs/tiny_plain",
        "output_dir=./outputs/tiny_plain_int2",
        "quantizer._component_=tt_recipes.quantization.intx_weight_config",
        "quantizer.bits=2",
    ],
}


def validation_loss(model_dir: Path) -> float:
    """Mean cross-entropy per answer token on tiny/full's 256 validation questions."""
    import torch
    from tt_data import padded_collate_sft, synthetic_arithmetic
    from tt_data.tokenizers import from_pretrained as load_tokenizer
    from tt_recipes import from_pretrained
    from tt_recipes.losses import IGNORE_INDEX, cross_entropy_sum, shift_labels

    tokenizer = load_tokenizer(model_dir)
    rows = synthetic_arithmetic(tokenizer, n=256, split="validation", seed=0)
    batch = padded_collate_sft([rows[i] for i in range(len(rows))], pad_id=tokenizer.pad_id)
    targets = shift_labels(batch["labels"])
    with torch.no_grad():
        logits = from_pretrained(model_dir)(batch["tokens"])
    return (cross_entropy_sum(logits, targets) / (targets != IGNORE_INDEX).sum()).item()


def greedy_answers(model_dir: Path, pairs: list[tuple[int, int]]) -> list[str]:
    """What the model answers to "What is a + b?" (greedy, chat-formatted)."""
    import torch
    from tt_data import Message
    from tt_data.tokenizers import from_pretrained as load_tokenizer
    from tt_models import generate
    from tt_recipes import from_pretrained
    from tt_recipes.training import resolve_checkpoint_dir

    directory = resolve_checkpoint_dir(model_dir)
    tokenizer = load_tokenizer(directory)
    model = from_pretrained(directory)
    prompts = [
        tokenizer.tokenize_messages(
            [Message(role="user", content=f"What is {a} + {b}?")], add_generation_prompt=True
        )[0]
        for a, b in pairs
    ]
    with torch.no_grad():
        out, _ = generate(model, prompts, 6, temperature=0.0, stop_tokens=tokenizer.stop_tokens)
    answers = []
    for row in out.tolist():
        ids = []
        for token in row:
            if token in tokenizer.stop_tokens:
                break
            ids.append(token)
        answers.append(tokenizer.decode(ids).strip())
    return answers


def exact_match(model_dir: Path, low: int, high: int) -> float:
    """Greedy exact match over every a + b with max(a, b) in [low, high] and min(a, b) >= 0."""
    pairs = [(a, b) for a in range(high + 1) for b in range(high + 1) if max(a, b) >= low]
    answers = greedy_answers(model_dir, pairs)
    return sum(ans == str(a + b) for (a, b), ans in zip(pairs, answers)) / len(pairs)
