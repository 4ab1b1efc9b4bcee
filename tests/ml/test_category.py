import torch

from ml.serving.category import (CategoryConfig, CategoryHead, category_accuracy, category_boost, category_filter,
                                 category_labels, ontology_maps)
from ml.training.heads import fit_category_head
from ml.serving.ontology import load_ontology


def test_levels_are_consistent_sums_over_the_ontology():
    torch.manual_seed(0)
    head = CategoryHead(8, 8).eval()
    log_probs = head.level_log_probs(torch.randn(3, 4, 8), torch.ones(3, 4, dtype=torch.bool), torch.randn(3, 8))
    lower_to_middle, middle_to_upper = ontology_maps()
    assert log_probs["lower"].shape == (3, 312) and log_probs["middle"].shape == (3, 30)
    for level in ("upper", "middle", "lower"):
        torch.testing.assert_close(log_probs[level].exp().sum(1), torch.ones(3))
    m = 7
    expected = log_probs["lower"][:, lower_to_middle == m].logsumexp(1)
    torch.testing.assert_close(log_probs["middle"][:, m], expected)


def test_labels_from_paths():
    onto = load_ontology()
    lower = onto.lower[40]
    assert category_labels([lower.path]).tolist() == [[lower.ancestor(0).level_index, lower.ancestor(1).level_index,
                                                       lower.level_index]]


def test_head_learns_separable_categories():
    onto = load_ontology()
    g = torch.Generator().manual_seed(0)
    classes = torch.tensor([0, 1, 15, 100, 200, 311])
    centres = torch.randn(len(classes), 16, generator=g)
    y = torch.arange(240) % len(classes)
    frames = centres[y][:, None] + 0.3 * torch.randn(240, 3, 16, generator=g)
    caption = torch.randn(240, 8, generator=g)
    head, seconds = fit_category_head(frames, torch.ones(240, 3, dtype=torch.bool), caption, classes[y],
                                      CategoryConfig(epochs=30, hidden_dim=64, batch_size=64))
    labels = category_labels([onto.lower[int(c)].path for c in classes[y]])
    acc = category_accuracy(head, frames, torch.ones(240, 3, dtype=torch.bool), caption, labels)
    assert seconds > 0 and acc["lower"] > 95 and acc["middle"] >= acc["lower"] and acc["upper"] >= acc["middle"]


def test_boost_and_filter():
    scores = torch.tensor([[0.5, 0.4, 0.3]])
    level_log_probs = torch.log(torch.tensor([[0.1, 0.2, 0.7]]))  # the video's categories
    product_category = torch.tensor([0, 1, 2])
    boosted = category_boost(scores, level_log_probs, product_category, 1.0)
    assert boosted.argsort(descending=True).tolist() == [[2, 1, 0]]
    filtered = category_filter(scores, level_log_probs, product_category, top_k=2)
    assert filtered.argsort(descending=True).tolist() == [[1, 2, 0]]  # product 0 sinks; 1 and 2 keep their order
