"""The `tiny` preset: a randomly initialised Qwen2.5-VL built offline, saved as a normal model dir.

Nothing can be downloaded here, yet every stage must load its model by path exactly as it
would load Qwen2.5-VL-7B. So the preset builds the real architecture
(`Qwen2_5_VLForConditionalGeneration`) at toy size, a byte-level BPE tokenizer with Qwen's
special tokens and a ChatML chat template, and the Qwen2-VL image processor, and writes them
with `save_pretrained`. Building is seeded: the same config gives the same weights and vocab.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from coldstart.common.config import PAPER_SYSTEM_PROMPT, TinyModelConfig
from coldstart.common.processor import build_image_processor, make_processor

log = logging.getLogger(__name__)

# Qwen's special tokens, in Qwen's order, so ids keep their meaning relative to each other.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2's pre-tokenisation: single digits, words with one leading space, punctuation runs.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE_PATH = Path(__file__).with_name("chatml_vl.jinja")


def _training_corpus() -> list[str]:
    """Text the BPE merges are learned from: the prompts and reasoning the stages will produce.

    Imported lazily so that the tokenizer's vocabulary follows the synthetic generator's wording.
    """
    from coldstart.common.corpus import corpus_lines

    return [*corpus_lines(), PAPER_SYSTEM_PROMPT]


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_training_corpus(), trainer=trainer)
    bpe.add_special_tokens(SPECIAL_TOKENS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=32768,
        padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE_PATH.read_text()
    return tok


def _model_config(cfg: TinyModelConfig, tok: PreTrainedTokenizerFast) -> Qwen2_5_VLConfig:
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    # M-RoPE splits the rotary half-dim into (temporal, height, width) sections.
    half = head_dim // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    ids = tok.convert_tokens_to_ids
    text = dict(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": section,
        },
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        tie_word_embeddings=False,
    )
    vision = dict(
        depth=cfg.vision_depth,
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=cfg.vision_hidden_size * 2,
        num_heads=cfg.vision_num_heads,
        out_hidden_size=cfg.hidden_size,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[cfg.vision_depth - 1],
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        tie_word_embeddings=False,
    )


def build_tiny_model(
    out_dir: str | Path, cfg: TinyModelConfig, min_pixels: int, max_pixels: int
) -> Path:
    """Write a seeded tiny Qwen2.5-VL (weights, config, tokenizer, processor) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(cfg.vocab_size)
    torch.manual_seed(cfg.seed)
    model = Qwen2_5_VLForConditionalGeneration(_model_config(cfg, tok))
    save_model_dir(model, tok, out, min_pixels, max_pixels)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built tiny Qwen2.5-VL (%d params, vocab %d) at %s", n_params, len(tok), out)
    return out


def save_model_dir(
    model: Qwen2_5_VLForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    out: Path,
    min_pixels: int,
    max_pixels: int,
) -> Path:
    """Weights, tokenizer and image processor side by side: the layout every stage loads by path.

    Also used by bench/gpu_check.py for its randomly initialised Qwen2.5-VL-3B-shaped model.
    """
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|im_end|>")]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    make_processor(build_image_processor(min_pixels, max_pixels), tok).save_pretrained(out)
    return out
