"""Tokenizers and Video-XL's prompt template.

Real checkpoints carry their Qwen2 tokenizer files (`tokenizer.json` or `vocab.json` +
`merges.txt`), loaded with transformers. The `tiny` model uses a small byte-level BPE trained here,
deterministically, on text this module writes, with Qwen2's ChatML special tokens at the ids the
tiny config expects (`<|endoftext|>` 512, `<|im_start|>` 513, `<|im_end|>` 514).
"""

from __future__ import annotations

import functools
from pathlib import Path

# Video-XL's `qwen_1_5` conversation template (VIDEO_XL.md section 2). `<image>` expands to the video.
SYSTEM = "You are a helpful assistant."
PROMPT_TEMPLATE = (
    "<|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\n<image>\n{question}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
IMAGE_MARKER = "<image>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def split_prompt(question: str) -> tuple[str, str]:
    """(sink text before `<image>`, suffix text after it) for `question`.

    The original tokenizes the two sides separately (`tokenizer_image_token`), so do we.
    """
    prefix, suffix = PROMPT_TEMPLATE.split(IMAGE_MARKER)
    return prefix, suffix.format(question=question)


_WORDS = (
    "what happens first in the video who where when why how many which color shape circle square "
    "triangle red green blue yellow white black appears moves left right up down changes turns "
    "disappears scene cut background person car street room event order before after then finally "
    "describe summarize answer question option the a an of to and is are was were it this that "
    "you helpful assistant system user image frame second minute clue time"
).split()


def _tiny_corpus() -> list[str]:
    lines = [PROMPT_TEMPLATE.format(question=" ".join(_WORDS[i : i + 7])) for i in range(0, len(_WORDS), 3)]
    lines += [" ".join(_WORDS[i::5]) for i in range(5)]
    lines += ["".join(chr(c) for c in range(32, 127)), "0123456789 ,.?!:;'\"()-\n\t"]
    return lines


def bpe_tokenizer_json(corpus: list[str], vocab_size: int) -> str:
    """A byte-level BPE trained on `corpus` (deterministic), with Qwen2's ChatML special tokens
    appended after the `vocab_size` learned tokens (ids `vocab_size`, `+1`, `+2`), as JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok.to_str()


def fast_tokenizer(tokenizer_json: str):
    """`PreTrainedTokenizerFast` over a `bpe_tokenizer_json` result, ChatML tokens registered."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    return bpe_tokenizer_json(_tiny_corpus(), 512)


def tiny_tokenizer():
    """The `tiny` model's tokenizer (`PreTrainedTokenizerFast`), identical in every process."""
    tok = fast_tokenizer(_tiny_tokenizer_json())
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == [512, 513, 514], ids
    return tok


def load_tokenizer(folder: str | Path):
    """The tokenizer saved in a checkpoint folder (local files only).

    `tokenizer.json` when there is one, exactly as written (`PreTrainedTokenizerFast`): transformers
    5's `AutoTokenizer` maps `model_type` "qwen2" to `Qwen2Tokenizer`, which keeps the file's
    vocabulary and merges but imposes Qwen2's normaliser and pre-tokenizer; for Video-XL's own
    (Qwen2) tokenizer.json that is the same tokenizer, for another one (`tiny`) it would split
    digits and non-NFC text differently from the model that was saved. Otherwise vocab.json +
    merges.txt through `AutoTokenizer`.

    Raises:
        FileNotFoundError: the folder has neither tokenizer.json nor vocab.json + merges.txt.
    """
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise FileNotFoundError(
            f"{folder}: no tokenizer.json or vocab.json + merges.txt; copy the Qwen2 tokenizer files of "
            "the checkpoint into this folder"
        )
    if (folder / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
