"""Tiny models run fastest on one thread; on the shared 2-core machine more threads only contend."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- toy CLIP-like features for the video-text parts (ml.serving.salient, ml.serving.rerank, ml.training.prototypes, ...) ----------

MIDDLE_TO_UPPER = (0, 0, 1, 1)


def _clip_like(num_products: int = 48, seed: int = 1, frames: int = 6, dim: int = 16, noise_frames: int = 3):
    """Features of one split in a shared image/text space, like a CLIP encoder's.

    Each product has a latent code; its photos, text, words and the product frames of its video are
    noisy images of the code through one shared map. Each video has ``noise_frames`` noise frames
    (a common "black frame" direction plus random scenes) at random positions; frame kinds are
    returned. One video per product; middle category = product index % 4.
    """
    from ml.training.data import FeatureSet

    maps = torch.Generator().manual_seed(0)  # shared by every split
    a = torch.randn(8, dim, generator=maps)
    black = torch.randn(dim, generator=maps)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num_products, 8, generator=g)
    clean = torch.nn.functional.normalize(z @ a, dim=-1)

    def noisy(x, scale):
        return torch.nn.functional.normalize(x + scale * torch.randn(x.shape, generator=g), dim=-1)

    kinds = []
    video_frames = torch.empty(num_products, frames, dim)
    for i in range(num_products):
        noise_at = set(torch.randperm(frames, generator=g)[:noise_frames].tolist())
        row = []
        for t in range(frames):
            if t in noise_at:
                base = black if torch.rand(1, generator=g) < 0.5 else torch.randn(dim, generator=g)
                video_frames[i, t] = noisy(base[None], 0.3)[0]
                row.append("noise")
            else:
                video_frames[i, t] = noisy(clean[i : i + 1], 0.25)[0]
                row.append("product")
        kinds.append(row)
    frame_mask = torch.ones(num_products, frames, dtype=torch.bool)
    middle = torch.arange(num_products) % 4
    words = noisy(clean[:, None].expand(-1, 5, -1), 0.8)  # five noisy "words" per product text
    data = FeatureSet(
        video_frames=video_frames, video_frame_mask=frame_mask, video_caption=noisy(clean, 0.8),
        product_images=noisy(clean[:, None].expand(-1, 2, -1), 0.3),
        product_image_mask=torch.ones(num_products, 2, dtype=torch.bool),
        product_text=noisy(clean, 0.3), product_middle=middle,
        product_upper=torch.tensor(MIDDLE_TO_UPPER)[middle], video_product=torch.arange(num_products),
        video_ids=[f"v{i}" for i in range(num_products)], product_ids=[f"p{i}" for i in range(num_products)],
    )
    return data, kinds, words


@pytest.fixture
def clip_like():
    """Factory of toy CLIP-like splits: ``clip_like(num_products, seed) -> (FeatureSet, frame kinds, words)``."""
    return _clip_like


# ---- generated data for the benchmark and ablation commands ---------------------------------------------

@pytest.fixture(scope="session")
def benchmark_data(tmp_path_factory):
    """The tiny dataset with 12 test products, one video each: enough test queries that beating chance at
    p < 1 % (tests.chance) says something. Shared by the benchmark and ablation tests (and their feature cache)."""
    from dataclasses import replace

    from ml.datagen import SIZES, generate_dataset

    root = tmp_path_factory.mktemp("bench-data")
    generate_dataset(root, replace(SIZES["tiny"], name="tiny-bench", products_per_lower={"train": 2, "val": 1, "test": 3},
                                   videos={"train": None, "val": None, "test": None}), seed=0, progress=False)
    return root
