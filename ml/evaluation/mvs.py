"""Import the MQMC paper's MVS feature pickles as `FeatureSet`s (2048-d visual, 768-d text: preset "mqmc-paper").

    python -m ml.evaluation.mvs mvs_train.pkl [mvs_test.pkl] --out var/mvs --trust-pickle
    python -m ml.training.train_instance --train var/mvs/train.pt --val var/mvs/val.pt --out runs/mvs --preset mqmc-paper
    python -m ml.evaluation.benchmark --mvs-pickle mvs_train.pkl [mvs_test.pkl] --trust-pickle --out runs/mvs-report

A pickle holds a list of dicts, one per (micro-video, product) pair:

    video         ResNet-50 frame features [T, 2048], or one pooled vector [2048]
    img           product image features [2048], or [P, 2048] for several photos
    videotext     caption feature [768] (BERT)
    imgtext       product text feature [768]
    queue_index   middle category index (0..29): the pair's queue
    first_cluster, second_cluster, third_cluster   category labels (upper, middle, lower)

Arrays may be numpy arrays, torch tensors or nested lists. The middle category comes from
``queue_index``; the upper category from the bundled ontology (the queues' weights need the
two to agree); the cluster labels are only checked for presence. Pairs showing the same product
(identical ``img`` and ``imgtext``) share one gallery entry.

Unpickling runs whatever code the file names, so loading refuses unless the caller passes
``trust=True`` (``--trust-pickle``): only do that for files from a source you trust.
"""
from __future__ import annotations

import argparse
import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch

from ml.serving.padding import pad_groups
from ml.training.data import FeatureSet
from ml.training.mqmc import ontology_middle_to_upper

KEYS = ("video", "img", "videotext", "imgtext", "queue_index", "first_cluster", "second_cluster", "third_cluster")
VISUAL_DIM, TEXT_DIM = 2048, 768  # what the paper extracted; other widths are accepted if consistent
PRESET = "mqmc-paper"


class UntrustedPickleError(PermissionError):
    """Loading a pickle was refused because the caller did not say it trusts the file."""


class MVSFormatError(ValueError):
    """A record does not have the keys or array shapes of an MVS feature pickle."""


def load_records(path: str | Path, *, trust: bool = False) -> list[dict]:
    """The list of pair dicts in an MVS pickle; refuses (UntrustedPickleError) unless ``trust`` is True."""
    path = Path(path)
    if not trust:
        raise UntrustedPickleError(
            f"refusing to unpickle {path}: unpickling can run arbitrary code. If you trust where this file "
            f"comes from, pass trust=True (command line: --trust-pickle)")
    with path.open("rb") as f:
        records = pickle.load(f)  # noqa: S301 - the caller vouched for the file
    if isinstance(records, tuple):
        records = list(records)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise MVSFormatError(f"{path}: expected a list of dicts, got {type(records).__name__}")
    if not records:
        raise MVSFormatError(f"{path}: no records")
    for i, record in enumerate(records):
        _check_keys(record, i)
    return records


def _check_keys(record: dict, index: int) -> None:
    missing = [k for k in KEYS if k not in record]
    if missing:
        raise MVSFormatError(f"record {index} lacks {', '.join(map(repr, missing))}; an MVS record has {', '.join(KEYS)}")


def _array(record: dict, key: str, index: int) -> np.ndarray:
    value = record[key]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise MVSFormatError(f"record {index}: {key!r} is not numeric ({e})") from None
    if not np.isfinite(array).all():
        raise MVSFormatError(f"record {index}: {key!r} holds NaN or infinite values")
    return array


def _vector_set(record: dict, key: str, index: int, dim: int | None) -> np.ndarray:
    """A set of feature vectors [n, D] from [D], [n, D], or [n, 1, D] / [1, n, D]."""
    array = _array(record, key, index)
    if array.ndim == 3 and 1 in array.shape[:2]:
        array = array.reshape(-1, array.shape[-1])
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] == 0:
        raise MVSFormatError(f"record {index}: {key!r} has shape {array.shape}; expected [D] or [n, D]")
    if dim is not None and array.shape[1] != dim:
        raise MVSFormatError(f"record {index}: {key!r} has {array.shape[1]}-d features, record 0 has {dim}-d")
    return array


def _vector(record: dict, key: str, index: int, dim: int | None) -> np.ndarray:
    """One feature vector [D] from [D], [1, D] or [D, 1]."""
    array = _array(record, key, index)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise MVSFormatError(f"record {index}: {key!r} has shape {array.shape}; expected one vector [D]")
    if dim is not None and array.shape[0] != dim:
        raise MVSFormatError(f"record {index}: {key!r} has {array.shape[0]}-d features, record 0 has {dim}-d")
    return array


def _label(record: dict, key: str, index: int) -> int:
    value = record[key]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise MVSFormatError(f"record {index}: {key!r} must be one integer, got an array of shape {value.shape}")
        value = value.reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or int(value) != value:
        raise MVSFormatError(f"record {index}: {key!r} must be an integer category index, got {value!r}")
    return int(value)


def _product_key(img: np.ndarray, imgtext: np.ndarray) -> str:
    """Identity of a pair's product: its features (MVS records carry no product id)."""
    return hashlib.sha1(img.tobytes() + imgtext.tobytes()).hexdigest()


def records_to_features(records: list[dict], prefix: str = "mvs") -> FeatureSet:
    """One `FeatureSet` from MVS pair records (validated; see the module doc for the accepted shapes)."""
    middle_to_upper = ontology_middle_to_upper()
    dims: dict[str, int | None] = {"video": None, "img": None, "videotext": None, "imgtext": None}
    frames, captions, product_row, product_keys = [], [], [], {}
    images, texts, middles = [], [], []
    for i, record in enumerate(records):
        _check_keys(record, i)
        video = _vector_set(record, "video", i, dims["video"])
        img = _vector_set(record, "img", i, dims["img"])
        videotext = _vector(record, "videotext", i, dims["videotext"])
        imgtext = _vector(record, "imgtext", i, dims["imgtext"])
        dims.update(video=video.shape[1], img=img.shape[1], videotext=len(videotext), imgtext=len(imgtext))
        middle = _label(record, "queue_index", i)
        if not 0 <= middle < len(middle_to_upper):
            raise MVSFormatError(f"record {i}: queue_index {middle} is not a middle category (0..{len(middle_to_upper) - 1})")
        frames.append(video)
        captions.append(videotext)
        key = _product_key(img, imgtext)
        if key not in product_keys:
            product_keys[key] = len(images)
            images.append(img)
            texts.append(imgtext)
            middles.append(middle)
        elif middles[product_keys[key]] != middle:
            raise MVSFormatError(f"record {i}: same product as an earlier record but another queue_index")
        product_row.append(product_keys[key])
    if dims["video"] != dims["img"] or dims["videotext"] != dims["imgtext"]:
        raise MVSFormatError(f"video and product features must have the same widths: visual {dims['video']} vs "
                             f"{dims['img']}, text {dims['videotext']} vs {dims['imgtext']}")
    video_frames, video_mask = pad_groups(frames, dtype=torch.float32)
    product_images, product_mask = pad_groups(images, dtype=torch.float32)
    middle = torch.tensor(middles, dtype=torch.long)
    return FeatureSet(
        video_frames=video_frames, video_frame_mask=video_mask, video_caption=torch.from_numpy(np.stack(captions)),
        product_images=product_images, product_image_mask=product_mask, product_text=torch.from_numpy(np.stack(texts)),
        product_middle=middle, product_upper=torch.tensor(middle_to_upper)[middle],
        video_product=torch.tensor(product_row, dtype=torch.long),
        video_ids=[f"{prefix}-v{i}" for i in range(len(records))],
        product_ids=[f"{prefix}-p{i}" for i in range(len(images))],
    )


def split_records(records: list[dict], fractions: dict[str, float], seed: int = 0) -> dict[str, list[dict]]:
    """Split pairs by product (a product's pairs stay together) into the named fractions of the products."""
    keys = [_product_key(_array(r, "img", i), _array(r, "imgtext", i)) for i, r in enumerate(records)]
    products = list(dict.fromkeys(keys))
    order = np.random.default_rng(seed).permutation(len(products))
    out, start = {}, 0
    names = list(fractions)
    for n, name in enumerate(names):
        stop = len(products) if n == len(names) - 1 else start + round(fractions[name] * len(products))
        chosen = {products[j] for j in order[start:stop]}
        out[name] = [r for r, k in zip(records, keys) if k in chosen]
        start = stop
    return out


def load_mvs_splits(paths: list[str | Path], *, trust: bool = False, val_fraction: float = 0.1,
                    test_fraction: float = 0.1, seed: int = 0) -> dict[str, FeatureSet]:
    """train/val/test `FeatureSet`s from one pickle (split by product), two (train, test: val carved from
    train) or three (train, val, test)."""
    if not 1 <= len(paths) <= 3:
        raise ValueError("give one pickle (split by product), two (train, test) or three (train, val, test)")
    loaded = [load_records(p, trust=trust) for p in paths]
    if len(loaded) == 1:
        parts = split_records(loaded[0], {"test": test_fraction, "val": val_fraction,
                                          "train": 1 - val_fraction - test_fraction}, seed)
    elif len(loaded) == 2:
        parts = split_records(loaded[0], {"val": val_fraction, "train": 1 - val_fraction}, seed) | {"test": loaded[1]}
    else:
        parts = dict(zip(("train", "val", "test"), loaded))
    empty = [s for s, r in parts.items() if not r]
    if empty:
        raise MVSFormatError(f"no pairs left for {', '.join(empty)}: too few products for the split fractions")
    return {s: records_to_features(parts[s], prefix=f"mvs-{s}") for s in ("train", "val", "test")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pickles", nargs="+", help="one pickle (split by product), or train + test, or train + val + test")
    parser.add_argument("--out", required=True, help="folder for train.pt, val.pt, test.pt (FeatureSet files)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow unpickling (runs code from the file)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        splits = load_mvs_splits(args.pickles, trust=args.trust_pickle, val_fraction=args.val_fraction,
                                 test_fraction=args.test_fraction, seed=args.seed)
    except (UntrustedPickleError, MVSFormatError) as e:
        parser.exit(2, f"error: {e}\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, data in splits.items():
        data.save(out / f"{split}.pt")
        print(f"{split}: {data.num_videos} pairs, {data.num_products} products -> {out / f'{split}.pt'}")


if __name__ == "__main__":
    main()
