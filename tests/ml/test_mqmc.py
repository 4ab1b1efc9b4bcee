import math

import pytest
import torch
import torch.nn.functional as F

from ml.serving.towers import InstanceConfig
from ml.training.data import PairBatch
from ml.training.losses import InBatchContrast, LossConfig, same_product_mask
from ml.training.mqmc import MQMCConfig, MultiQueueMoCo, ontology_middle_to_upper
from ml.serving.pooling import MeanPooling, create_pooling

TINY = InstanceConfig(visual_dim=12, text_dim=6, visual_hidden_dim=16, embed_dim=16, proj_dim=8)
MIDDLE_TO_UPPER = (0, 0, 1, 1, 1)  # 5 middle categories under 2 upper ones


def make_model(**mqmc) -> MultiQueueMoCo:
    torch.manual_seed(0)
    cfg = MQMCConfig(**{"queue_size": 4, "middle_to_upper": MIDDLE_TO_UPPER} | mqmc)
    return MultiQueueMoCo(TINY, LossConfig(), cfg)


def random_batch(middle, product=None, seed=0) -> PairBatch:
    g = torch.Generator().manual_seed(seed)
    middle = torch.as_tensor(middle)
    b = len(middle)
    mask = torch.ones(b, 3, dtype=torch.bool)
    mask[:, -1] = False
    return PairBatch(
        video_frames=torch.randn(b, 3, 12, generator=g),
        video_frame_mask=mask,
        video_caption=torch.randn(b, 6, generator=g),
        product_images=torch.randn(b, 2, 12, generator=g),
        product_image_mask=torch.ones(b, 2, dtype=torch.bool),
        product_text=torch.randn(b, 6, generator=g),
        middle=middle,
        product_index=torch.arange(b) if product is None else torch.as_tensor(product),
    )


def unit(n, dim=8, seed=0):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_mean_pooling_ignores_padding():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert torch.equal(MeanPooling(2)(x, mask), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(MeanPooling(2)(x, torch.zeros(1, 3, dtype=torch.bool)), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="unknown pooling"):
        create_pooling("nope", 2)


def test_ontology_mapping_covers_all_middle_categories():
    mapping = ontology_middle_to_upper()
    assert len(mapping) == 30 and set(mapping) == set(range(6))
    assert list(mapping) == sorted(mapping)  # pre-order: middles grouped under their upper


def test_queues_and_centroids_are_state_dict_buffers():
    model = make_model()
    model.train()
    model(random_batch([0, 1, 1, 3, 4, 4]))
    state = model.state_dict()
    for side in ("video", "product"):
        assert state[f"{side}_queue.keys"].shape == (5, 4, 8)
        for name in ("ptr", "middle", "product", "middle_centroids", "upper_centroids"):
            assert f"{side}_queue.{name}" in state
    assert state["product_queue.ptr"].tolist() == [1, 2, 0, 1, 2]

    fresh = make_model()
    fresh.load_state_dict(state)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_enqueue_routes_keys_to_their_category_queue_and_wraps():
    queue = make_model().product_queue
    keys = unit(5)
    queue.enqueue(keys, torch.tensor([0, 1, 0, 2, 0]), torch.tensor([10, 11, 12, 13, 14]))
    assert torch.equal(queue.keys[0, :3], keys[[0, 2, 4]])
    assert torch.equal(queue.keys[1, 0], keys[1]) and torch.equal(queue.keys[2, 0], keys[3])
    assert queue.ptr.tolist() == [3, 1, 1, 0, 0]
    assert queue.middle[0].tolist() == [0, 0, 0, -1] and queue.product[0].tolist() == [10, 12, 14, -1]

    more = unit(3, seed=1)
    queue.enqueue(more, torch.tensor([0, 0, 0]), torch.tensor([20, 21, 22]))
    # slot 3 then wrap to slots 0, 1: the two oldest keys of queue 0 are replaced
    assert torch.equal(queue.keys[0], torch.stack([more[1], more[2], keys[4], more[0]]))
    assert queue.product[0].tolist() == [21, 22, 14, 20]
    assert queue.ptr[0] == 2


def test_enqueue_more_keys_than_the_queue_holds_keeps_the_last_ones():
    queue = make_model().video_queue
    queue.enqueue(unit(1), torch.tensor([1]), torch.tensor([0]))  # ptr of queue 1 -> 1
    keys = unit(10, seed=2)
    queue.enqueue(keys, torch.full((10,), 1), torch.arange(100, 110))
    # 11 keys written in order from slot 0: key j of this batch went to slot (1 + j) % 4; the last 4 survive
    assert queue.product[1].tolist() == [107, 108, 109, 106]
    assert torch.equal(queue.keys[1], keys[[7, 8, 9, 6]])
    assert queue.ptr[1] == 11 % 4
    assert (queue.middle[[0, 2, 3, 4]] == -1).all()


def test_single_queue_is_one_fifo_in_batch_order():
    queue = make_model(multi_queue=False).product_queue
    assert queue.keys.shape == (1, 4, 8)
    keys = unit(6)
    queue.enqueue(keys, torch.tensor([3, 0, 4, 4, 1, 2]), torch.arange(6))
    assert queue.middle[0].tolist() == [1, 2, 4, 4]  # slots 0, 1 overwritten by the 5th and 6th key
    assert torch.equal(queue.keys[0], keys[[4, 5, 2, 3]])
    assert queue.ptr.tolist() == [2]


def test_centroids_are_normalised_category_means():
    queue = make_model().video_queue
    keys = unit(6)
    middle = torch.tensor([0, 0, 1, 2, 3, 3])
    queue.enqueue(keys, middle, torch.arange(6))
    assert torch.allclose(queue.middle_centroids[0], F.normalize(keys[0] + keys[1], dim=0))
    assert torch.equal(queue.middle_centroids[4], torch.zeros(8))  # no key yet
    assert torch.allclose(queue.upper_centroids[0], F.normalize(keys[:3].sum(0), dim=0))
    assert torch.allclose(queue.upper_centroids[1], F.normalize(keys[3:].sum(0), dim=0))


def test_category_weights_follow_the_documented_formula():
    queue = make_model().product_queue
    queue.enqueue(unit(12, seed=3), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 2]), torch.arange(12))
    w = queue.category_weights()
    assert torch.equal(w.diagonal(), torch.ones(5))
    off = ~torch.eye(5, dtype=torch.bool)
    assert (w[off] < 1).all() and (w[off] >= 0.5).all()
    c_mid, c_up = queue.middle_centroids, queue.upper_centroids
    d01 = (c_mid[0] - c_mid[1]).norm()
    assert torch.allclose(w[0, 1], 1 - 0.25 * torch.exp(d01 - 2), atol=1e-5)  # same upper category
    d03, d_up = (c_mid[0] - c_mid[3]).norm(), (c_up[0] - c_up[1]).norm()
    assert torch.allclose(w[0, 3], 1 - 0.25 * torch.exp(d03 - 2) - 0.25 * torch.exp(d_up - 2), atol=1e-5)
    # the farther a category's centroid, the lower its weight (same upper penalty for 2, 3, 4 seen from 0)
    d = torch.cdist(c_mid, c_mid)[0, 2:]
    assert torch.equal(torch.argsort(d), torch.argsort(-w[0, 2:]))


def test_negative_bias_weights_masks_empty_slots_and_own_product():
    queue = make_model().product_queue
    queue.enqueue(unit(4), torch.tensor([0, 2, 2, 4]), torch.tensor([7, 8, 9, 10]))
    bias = queue.negative_bias(torch.tensor([2, 0]), torch.tensor([9, 99]))  # [2 queries, 5 * 4 slots]
    labels = queue.middle.view(-1)
    filled = labels >= 0
    assert torch.isinf(bias[:, ~filled]).all()
    slot_of_product = {int(p): i for i, p in enumerate(queue.product.view(-1)) if p >= 0}
    assert bias[0, slot_of_product[9]] == float("-inf")  # query 0's own product
    assert bias[0, slot_of_product[8]] == 0.0  # same middle category: weight 1
    expected = queue.category_weights().log()
    assert torch.allclose(bias[1, slot_of_product[8]], expected[0, 2])
    assert bias[1, slot_of_product[8]] < 0

    flat = make_model(reweight_negatives=False, mask_same_product=False).product_queue
    flat.load_state_dict(queue.state_dict())
    bias = flat.negative_bias(torch.tensor([2, 0]), torch.tensor([9, 99]))
    assert (bias[:, filled] == 0).all() and torch.isinf(bias[:, ~filled]).all()


def test_without_weights_the_loss_is_plain_moco_infonce():
    model = make_model(reweight_negatives=False, mask_same_product=False, queue_size=3)
    model.train()
    for seed in range(4):  # fill every slot
        model(random_batch([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4], seed=seed))
    assert (model.product_queue.middle >= 0).all()
    model.eval()
    batch = random_batch([1, 3, 3, 0], seed=9)
    out = model(batch)
    video = model.video_tower(batch.video_frames, batch.video_frame_mask, batch.video_caption)
    product = model.product_tower(batch.product_images, batch.product_image_mask, batch.product_text)
    q = F.normalize(video.embedding, dim=1)
    k = F.normalize(model.product_key_head(product.fused), dim=1)
    queue = model.product_queue.keys.view(-1, 8)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / 0.07
    assert torch.allclose(out.terms["v2p"], F.cross_entropy(logits, torch.zeros(4, dtype=torch.long)), atol=1e-5)


def test_weights_change_the_loss_only_when_enabled():
    plain, weighted = make_model(reweight_negatives=False), make_model()
    weighted.load_state_dict(plain.state_dict())
    for model in (plain, weighted):
        model.train()
        model(random_batch([0, 1, 2, 3, 4, 2], seed=1))
        model.eval()
    batch = random_batch([0, 3], seed=5)
    # down-weighted negatives make the positive relatively more likely
    assert weighted(batch).terms["v2p"] < plain(batch).terms["v2p"]


def test_momentum_update_and_eval_mode_leave_queues_alone():
    model = make_model()
    with torch.no_grad():
        for p in model.video_tower.head.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.video_key_head.parameters()]
    model.train()
    model(random_batch([0, 1, 2]))
    for old, key, query in zip(before, model.video_key_head.parameters(), model.video_tower.head.parameters()):
        assert torch.allclose(key, 0.999 * old + 0.001 * query)
        assert not key.requires_grad
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    model(random_batch([0, 1, 2], seed=1))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_in_batch_baseline_masks_pairs_of_the_same_product():
    assert same_product_mask(torch.tensor([5, 6, 5])).tolist() == [
        [False, False, True], [False, False, False], [True, False, False]]
    torch.manual_seed(0)
    model = InBatchContrast(TINY, LossConfig(beta=0.0, gamma=0.0))
    out = model(random_batch([0, 1, 0], product=[5, 6, 5]))
    assert torch.isfinite(out.loss) and set(out.terms) == {"v2p", "p2v"}


def toy_separable_batches(num_batches=6, batch=24, seed=0):
    """Products with a latent code; video and product features are noisy linear maps of it."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(num_batches * batch, 4, generator=g)
    a_visual, a_text = torch.randn(4, 12, generator=g), torch.randn(4, 6, generator=g)
    batches = []
    for i in range(num_batches):
        z = latent[i * batch : (i + 1) * batch]
        noise = lambda *shape: 0.1 * torch.randn(*shape, generator=g)  # noqa: E731
        batches.append(PairBatch(
            video_frames=(z @ a_visual)[:, None] + noise(batch, 3, 12),
            video_frame_mask=torch.ones(batch, 3, dtype=torch.bool),
            video_caption=z @ a_text + noise(batch, 6),
            product_images=(z @ a_visual)[:, None] + noise(batch, 2, 12),
            product_image_mask=torch.ones(batch, 2, dtype=torch.bool),
            product_text=z @ a_text + noise(batch, 6),
            middle=torch.arange(batch) % 5,
            product_index=torch.arange(i * batch, (i + 1) * batch),
        ))
    return batches


@pytest.mark.parametrize("options", [{}, {"multi_queue": False, "reweight_negatives": False}])
def test_loss_is_finite_and_decreases_on_a_toy_separable_set(options):
    model = make_model(queue_size=8, momentum=0.9, **options)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batches = toy_separable_batches()
    model.train()
    losses = []
    for epoch in range(12):
        for batch in batches:
            out = model(batch)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            assert torch.isfinite(out.loss)
            losses.append(out.terms["v2p"].item() + out.terms["p2v"].item())
    first, last = sum(losses[6:12]) / 6, sum(losses[-6:]) / 6  # after the queues filled
    assert last < 0.5 * first
    assert first > math.log(8)  # the queues really did provide negatives
