import torch
import torch.nn.functional as F

from ssl_zoo.eval.knn import knn_accuracy, knn_scores


def loop_knn_scores(train, train_labels, test, num_classes, k, t):
    train, test = F.normalize(train.double(), dim=1), F.normalize(test.double(), dim=1)
    out = torch.zeros(len(test), num_classes, dtype=torch.float64)
    for i, q in enumerate(test):
        sims = sorted(((float(q @ x), int(y)) for x, y in zip(train, train_labels)), reverse=True)[:k]
        for s, y in sims:
            out[i, y] += torch.exp(torch.tensor(s / t, dtype=torch.float64))
    return out


def test_weighted_knn_matches_loop_reference():
    torch.manual_seed(0)
    train, labels, test = torch.randn(30, 5), torch.randint(0, 4, (30,)), torch.randn(7, 5)
    got = knn_scores(train, labels, test, num_classes=4, k=6, temperature=0.2, chunk_size=3)
    torch.testing.assert_close(got.double(), loop_knn_scores(train, labels, test, 4, 6, 0.2), rtol=1e-4, atol=1e-5)


def test_separable_clusters_give_perfect_accuracy():
    torch.manual_seed(0)
    centres = torch.eye(4) * 10
    labels = torch.arange(4).repeat(25)
    train = centres[labels] + torch.randn(100, 4) * 0.1
    test_labels = torch.arange(4).repeat(5)
    test = centres[test_labels] + torch.randn(20, 4) * 0.1
    acc = knn_accuracy(train, labels, test, test_labels, num_classes=4, k=10)
    assert acc[1] == 100.0


def test_random_labels_give_chance_accuracy():
    torch.manual_seed(0)
    train, test = torch.randn(2000, 16), torch.randn(1000, 16)
    acc = knn_accuracy(train, torch.randint(0, 10, (2000,)), test, torch.randint(0, 10, (1000,)), 10, k=20)
    assert 5.0 < acc[1] < 15.0
    assert 40.0 < acc[5] < 60.0
